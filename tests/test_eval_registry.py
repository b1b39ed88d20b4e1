"""The metric registry and its metrics: hand-computed values on tiny masks, medpy / pysodmetrics as oracles."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from weakseg.errors import ConfigError, MissingExtraError
from weakseg.eval import medical, sod, video
from weakseg.eval.metrics import ConfusionMatrix, fb_confusion, fb_iou, miou
from weakseg.eval.registry import KINDS, METRICS, MetricSpec, get_metric, list_metrics, register_metric


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[top : top + side, left : left + side] = True
    return m


# ---------------------------------------------------------------- registry


REQUIRED = set("miou fb_iou dice jaccard hd95 asd mae fmeasure smeasure emeasure j f jf".split())


def test_registry_holds_the_required_metrics_with_their_direction():
    assert REQUIRED <= set(METRICS)
    lower = {n for n, s in METRICS.items() if not s.higher_is_better}
    assert lower == {"hd95", "asd", "mae"}
    assert {s.kind for s in METRICS.values()} <= set(KINDS)
    assert list_metrics("video") == ["f", "j", "jf"]
    assert all(isinstance(get_metric(n), MetricSpec) and get_metric(n).name == n for n in METRICS)


def test_unknown_metric_error_lists_the_valid_names():
    with pytest.raises(ConfigError) as err:
        get_metric("dcie")
    msg = str(err.value)
    assert "'dcie'" in msg
    for name in REQUIRED:
        assert name in msg
    with pytest.raises(ConfigError, match="semantic"):
        list_metrics("audio")


@pytest.fixture
def restore_registry():
    saved = dict(METRICS)
    yield
    METRICS.clear()
    METRICS.update(saved)


def test_user_registered_metric(restore_registry):
    def pixel_error(gt, pred):
        """Fraction of wrong pixels."""
        return float(np.mean(np.asarray(gt) != np.asarray(pred)))

    spec = register_metric("pixel_error", pixel_error, kind="semantic", higher_is_better=False)
    assert get_metric("pixel_error") is spec and spec.description == "Fraction of wrong pixels."
    assert get_metric("pixel_error").fn(np.array([[0, 1], [1, 1]]), np.array([[0, 0], [1, 1]])) == 0.25

    @register_metric("always_one", kind="video", higher_is_better=True, description="constant")
    def always_one(gt, pred):
        return 1.0

    assert always_one(None, None) == 1.0 and get_metric("always_one").fn is always_one
    with pytest.raises(ConfigError, match="already registered"):
        register_metric("dice", pixel_error, kind="medical", higher_is_better=True)
    with pytest.raises(ConfigError, match="valid names: binary, medical, saliency, semantic, video"):
        register_metric("bad_kind", pixel_error, kind="volumetric", higher_is_better=True)
    register_metric("dice", pixel_error, kind="medical", higher_is_better=False, overwrite=True)
    assert get_metric("dice").fn is pixel_error


def test_restore_registry_fixture_really_restores():
    # runs after test_user_registered_metric: its additions must be gone
    assert "pixel_error" not in METRICS and get_metric("dice").fn is medical.dice


def test_every_registered_metric_scores_a_perfect_prediction_as_best():
    gt = square(16, 4, 5, 6)
    for name in REQUIRED:
        spec = get_metric(name)
        args = (gt.astype(np.uint8), gt.astype(np.uint8), 2) if name == "miou" else (gt, gt)
        value = spec.fn(*args)
        value = value.max if isinstance(value, sod.ThresholdScores) else float(value)
        best = 1.0 if spec.higher_is_better else 0.0
        if name == "emeasure":
            best = gt.size / (gt.size - 1)  # Eξ divides the enhanced sum by H·W − 1
        assert value == pytest.approx(best), name


# ---------------------------------------------------------------- mIoU / FB-IoU


def test_fb_iou_by_hand():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [255, 255, 0, 0]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0]])
    # valid pixels: 14 (two ignored). fg: gt 4, pred 4 of them (ignored pred-1 pixels do not count),
    # TP 3 -> IoU_fg = 3 / 5. bg: gt 10, pred 10, TP 9 -> IoU_bg = 9 / 11.
    np.testing.assert_array_equal(fb_confusion(gt, pred), [[9, 1, 0], [1, 3, 0]])
    assert fb_iou(gt, pred) == pytest.approx((3 / 5 + 9 / 11) / 2)
    assert fb_iou(gt.astype(np.uint8), pred.astype(bool)) == pytest.approx((3 / 5 + 9 / 11) / 2)


def test_fb_iou_accumulates_over_episodes_instead_of_averaging_them():
    g1, p1 = np.array([[1, 0]]), np.array([[1, 0]])  # perfect: bg 1/1, fg 1/1
    g2, p2 = np.array([[1, 1, 0, 0]]), np.array([[0, 0, 0, 0]])  # fg missed: bg 2/4, fg 0/2
    # accumulated: bg TP 3 / union 5, fg TP 1 / union 3; per-episode mean would be (1 + 0.25) / 2
    assert fb_iou([g1, g2], [p1, p2]) == pytest.approx((3 / 5 + 1 / 3) / 2)
    assert fb_iou([g1, g2], [p1, p2]) != pytest.approx((1.0 + 0.25) / 2)
    with pytest.raises(ValueError, match="2 ground-truth masks but 1"):
        fb_iou([g1, g2], [p1])


def test_miou_function_matches_confusion_matrix_and_hand():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 1, 0]])
    assert miou(gt, pred, 3) == pytest.approx((1 / 2 + 2 / 4 + 0) / 3)
    rng = np.random.default_rng(3)
    gts = [rng.integers(0, 4, (5, 7)) for _ in range(3)]
    preds = [rng.integers(0, 4, (5, 7)) for _ in range(3)]
    cm = ConfusionMatrix(["a", "b", "c", "d"])
    for g, p in zip(gts, preds, strict=True):
        cm.update(g, p)
    assert miou(gts, preds, 4) == pytest.approx(cm.metrics().miou)


# ---------------------------------------------------------------- medical


def shifted_blocks() -> tuple[np.ndarray, np.ndarray]:
    """gt: a 2×3×4 block; pred: the same block moved by one voxel along axis 1 (24 voxels each)."""
    gt = np.zeros((4, 6, 6), dtype=bool)
    gt[1:3, 1:4, 1:5] = True
    return gt, np.roll(gt, 1, axis=1)


def test_medical_by_hand_and_against_medpy():
    from medpy.metric import binary

    gt, pred = shifted_blocks()
    s = medical.binary_scores(gt, pred)
    # overlap 16 of 24 + 24 voxels; the blocks are 2 voxels thick so every voxel is a surface voxel:
    # a third of each block lies 1 voxel from the other, the rest 0 -> ASD 1/3, HD95 = 1
    assert (s.dice, s.jaccard, s.hd95, s.asd, s.unit) == pytest.approx((2 / 3, 1 / 2, 1.0, 1 / 3, "voxel"))
    assert s.dice == pytest.approx(binary.dc(pred, gt)) and s.jaccard == pytest.approx(binary.jc(pred, gt))
    assert s.hd95 == pytest.approx(binary.hd95(pred, gt)) and s.asd == pytest.approx(binary.asd(pred, gt))

    rng = np.random.default_rng(0)
    g = rng.random((5, 9, 8)) > 0.6
    p = rng.random((5, 9, 8)) > 0.6
    r = medical.binary_scores(g, p, spacing=(2.0, 0.5, 0.7))
    assert r.unit == "mm"
    assert r.dice == pytest.approx(binary.dc(p, g))
    assert r.jaccard == pytest.approx(binary.jc(p, g))
    assert r.hd95 == pytest.approx(binary.hd95(p, g, voxelspacing=(2.0, 0.5, 0.7)))
    assert r.asd == pytest.approx(binary.asd(p, g, voxelspacing=(2.0, 0.5, 0.7)))


def test_spacing_scales_hd95_and_says_mm():
    gt, pred = shifted_blocks()  # shift along axis 1
    iso = medical.hd95(gt, pred, spacing=2.5)
    assert (iso.value, iso.unit) == (pytest.approx(2.5), "mm")
    assert float(medical.hd95(gt, pred)) == pytest.approx(1.0) and medical.hd95(gt, pred).unit == "voxel"
    assert float(medical.hd95(gt, pred, spacing=(10.0, 3.0, 1.0))) == pytest.approx(3.0)  # only axis 1 matters
    assert float(medical.asd(gt, pred, spacing=(10.0, 3.0, 1.0))) == pytest.approx(1.0)  # a third at 3 mm
    with pytest.raises(ValueError, match="2 values for a 3D mask"):
        medical.hd95(gt, pred, spacing=(1.0, 1.0))


def test_medical_empty_mask_conventions():
    gt, _ = shifted_blocks()
    empty = np.zeros_like(gt)
    both = medical.binary_scores(empty, empty)
    assert (both.dice, both.jaccard, both.hd95, both.asd) == (1.0, 1.0, 0.0, 0.0)
    missed = medical.binary_scores(gt, empty)
    assert (missed.dice, missed.jaccard) == (0.0, 0.0) and np.isnan(missed.hd95) and np.isnan(missed.asd)
    spurious = medical.binary_scores(empty, gt)
    assert spurious.dice == 0.0 and np.isnan(spurious.hd95)
    # ABD / SSL4MIS test code: an empty prediction scores 0 on all four, whatever the gt
    for g in (gt, empty):
        s = medical.binary_scores(g, empty, empty="ssl4mis")
        assert (s.dice, s.jaccard, s.hd95, s.asd) == (0.0, 0.0, 0.0, 0.0)
    assert medical.dice(empty, empty, empty="ssl4mis") == 0.0 and medical.dice(empty, empty) == 1.0
    with pytest.raises(ConfigError, match="strict, ssl4mis"):
        medical.dice(gt, gt, empty="nan")


def test_per_class_scores_on_a_label_volume():
    gt_block, pred_block = shifted_blocks()
    gt = gt_block.astype(np.uint8)  # class 1
    pred = pred_block.astype(np.uint8)
    gt[3, 4:6, 4:6] = 2  # class 2: a 2×2 patch, predicted exactly
    pred[3, 4:6, 4:6] = 2
    pred[0, 0, 0] = 3  # class 3 only in the prediction
    scores = medical.per_class_scores(gt, pred, spacing=(1.0, 2.0, 1.0))
    assert sorted(scores) == [1, 2, 3]
    assert scores[1].dice == pytest.approx(2 / 3) and scores[1].hd95 == pytest.approx(2.0)
    assert (scores[2].dice, scores[2].hd95, scores[2].unit) == (1.0, 0.0, "mm")
    assert scores[3].dice == 0.0 and np.isnan(scores[3].hd95)
    mean = medical.mean_scores(scores.values())
    assert mean.dice == pytest.approx((2 / 3 + 1 + 0) / 3) and mean.hd95 == pytest.approx(1.0)  # NaN left out
    assert list(medical.per_class_scores(gt, pred, classes=[2])) == [2]
    with pytest.raises(ValueError, match="different units"):
        medical.mean_scores([scores[1], medical.binary_scores(gt_block, pred_block)])


def test_missing_medpy_names_the_extra(monkeypatch):
    gt, pred = shifted_blocks()
    monkeypatch.setitem(sys.modules, "medpy", None)  # makes `import medpy...` raise ImportError
    monkeypatch.setitem(sys.modules, "medpy.metric", None)
    with pytest.raises(MissingExtraError, match=r"weakseg\[medical\]"):
        medical.hd95(gt, pred)
    assert medical.dice(gt, pred) == pytest.approx(2 / 3)  # overlap metrics need no medpy


# ---------------------------------------------------------------- saliency


def test_sod_hand_computed():
    gt = np.array([[0, 0, 1, 1]] * 4, dtype=bool)
    pred = np.array([[0.0, 0.25, 0.5, 1.0]] * 4)
    assert sod.mae(gt, pred) == pytest.approx((0 + 0.25 + 0.5 + 0) / 4)
    # adaptive threshold 2 × 0.4375 = 0.875: only the last column -> P = 1, R = 1/2
    f = sod.fmeasure(gt, pred)
    assert f.adaptive == pytest.approx(1.3 * 0.5 / (0.3 + 0.5))
    # floor(255 pred) = 0, 63, 127, 255. t = 0: every pixel (P 1/2, R 1); 1 <= t <= 63: columns 2-4
    # (P 2/3, R 1); 64 <= t <= 127: columns 3-4 (perfect); t >= 128: column 4 only (as adaptive)
    assert f.curve[0] == pytest.approx(1.3 * 0.5 / (0.3 * 0.5 + 1))
    assert f.curve[1] == pytest.approx(f.curve[63]) == pytest.approx(1.3 * (2 / 3) / (0.3 * 2 / 3 + 1))
    assert f.curve[64] == pytest.approx(1.0) and f.max == pytest.approx(1.0)
    assert f.curve[200] == pytest.approx(f.adaptive)
    perfect = sod.fmeasure(gt, gt.astype(np.float64))
    assert perfect.adaptive == pytest.approx(1.0) and perfect.max == pytest.approx(1.0)
    assert sod.smeasure(gt, gt.astype(np.float64)) == pytest.approx(1.0)
    e = sod.emeasure(gt, gt.astype(np.float64))
    assert e.adaptive == pytest.approx(16 / 15)  # Σ φ = 16 aligned pixels, divided by H·W − 1
    # all-background gt: S = 1 − mean(pred), Eξ = # predicted background / (N − 1)
    bg = np.zeros((4, 4), dtype=bool)
    assert sod.smeasure(bg, pred) == pytest.approx(1 - 0.4375)
    assert sod.emeasure(bg, pred).adaptive == pytest.approx(12 / 15)


def test_sod_input_conventions():
    gt = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    pred = np.array([[10, 20], [30, 40]], dtype=np.uint8)  # min-max stretched to 0, 1/3, 2/3, 1
    g, p = sod.prepare(gt, pred)
    np.testing.assert_array_equal(g, [[False, True], [True, False]])
    np.testing.assert_allclose(p, [[0, 1 / 3], [2 / 3, 1]])
    g01, _ = sod.prepare(gt // 255, pred)
    np.testing.assert_array_equal(g01, g)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sod.prepare(gt, pred / 10.0)


def random_sod_cases(rng: np.random.Generator):
    for k in range(5):
        h, w = (int(v) for v in rng.integers(9, 25, 2))
        gt = np.zeros((h, w), np.uint8)
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        gt[y : y + h // 2, x : x + w // 3] = 255
        noise = rng.integers(0, 256, (h, w))
        pred = np.clip(noise * 0.5 + gt * 0.5 * (k % 3), 0, 255).astype(np.uint8)
        yield gt, pred
    yield np.zeros((7, 9), np.uint8), rng.integers(0, 256, (7, 9)).astype(np.uint8)
    yield np.full((7, 9), 255, np.uint8), rng.integers(0, 256, (7, 9)).astype(np.uint8)


def test_sod_matches_pysodmetrics_per_image_and_per_dataset():
    psm = pytest.importorskip("py_sod_metrics")
    warnings.filterwarnings("ignore", message="This class will be removed")
    meter = sod.SaliencyMeter()
    oracle = [psm.MAE(), psm.Smeasure(), psm.Fmeasure(), psm.Emeasure()]
    for gt, pred in random_sod_cases(np.random.default_rng(0)):
        one = [psm.MAE(), psm.Smeasure(), psm.Fmeasure(), psm.Emeasure()]
        for m in one + oracle:
            m.step(pred, gt)
        meter.update(gt, pred)
        mae_, sm_, fm_, em_ = (m.get_results() for m in one)
        assert sod.mae(gt, pred) == pytest.approx(mae_["mae"], abs=1e-12)
        assert sod.smeasure(gt, pred) == pytest.approx(sm_["sm"], abs=1e-12)
        f, e = sod.fmeasure(gt, pred), sod.emeasure(gt, pred)
        np.testing.assert_allclose(f.curve, fm_["fm"]["curve"][::-1], atol=1e-12)  # upstream: descending t
        np.testing.assert_allclose(e.curve, em_["em"]["curve"][::-1], atol=1e-12)
        assert f.adaptive == pytest.approx(fm_["fm"]["adp"], abs=1e-12)
        assert e.adaptive == pytest.approx(em_["em"]["adp"], abs=1e-12)
    mae_, sm_, fm_, em_ = (m.get_results() for m in oracle)
    got = meter.results()
    want = {
        "mae": mae_["mae"],
        "smeasure": sm_["sm"],
        "max_fmeasure": fm_["fm"]["curve"].max(),
        "mean_fmeasure": fm_["fm"]["curve"].mean(),
        "adaptive_fmeasure": fm_["fm"]["adp"],
        "max_emeasure": em_["em"]["curve"].max(),
        "mean_emeasure": em_["em"]["curve"].mean(),
        "adaptive_emeasure": em_["em"]["adp"],
    }
    assert got == pytest.approx(want, abs=1e-12)


def test_sod_float_input_matches_pysodmetrics_without_normalisation():
    psm = pytest.importorskip("py_sod_metrics")
    rng = np.random.default_rng(5)
    gt = square(12, 2, 3, 6)
    pred = np.clip(gt * 0.6 + rng.random((12, 12)) * 0.4, 0, 1)
    m, s, e = psm.MAE(), psm.Smeasure(), psm.Emeasure()
    for x in (m, s, e):
        x.step(pred, gt, normalize=False)
    assert sod.mae(gt, pred) == pytest.approx(m.get_results()["mae"], abs=1e-12)
    assert sod.smeasure(gt, pred) == pytest.approx(s.get_results()["sm"], abs=1e-12)
    np.testing.assert_allclose(sod.emeasure(gt, pred).curve, e.get_results()["em"]["curve"][::-1], atol=1e-12)


# ---------------------------------------------------------------- video (DAVIS)


def test_j_by_hand():
    gt = square(20, 5, 5, 5)
    assert video.region_similarity(gt, np.roll(gt, 1, axis=1)) == pytest.approx(20 / 30)
    empty = np.zeros_like(gt)
    assert video.region_similarity(empty, empty) == 1.0
    assert video.region_similarity(gt, empty) == 0.0
    void = np.zeros_like(gt)
    void[:, 10] = True  # hides the one predicted column outside gt
    assert video.region_similarity(gt, np.roll(gt, 1, axis=1), void) == pytest.approx(20 / 25)


def test_seg2bmap_of_a_square_is_the_ring_half_a_pixel_up_left():
    gt = square(20, 5, 5, 5)  # rows / cols 5..9
    ring = np.zeros_like(gt)
    ring[4:10, 4:10] = True
    ring[5:9, 5:9] = False  # the 6×6 ring of rows / cols 4..9: 20 pixels
    np.testing.assert_array_equal(video.seg2bmap(gt), ring)


def test_f_by_hand_square_shifted_by_two_pixels():
    gt = square(20, 5, 5, 5)
    assert video.boundary_tolerance(gt.shape) == 1  # ceil(0.008 × 28.3)
    p, r, f = video.boundary_prf(gt, np.roll(gt, 2, axis=1))
    # predicted ring: rows 4..9 × cols 6..11. Within the radius-1 disk (a plus) of the gt ring: top and
    # bottom rows cols 6..10 (5 + 5), left column rows 5 and 8 only (touch gt rows 4 / 9), right column
    # none -> 12 of 20. The gt ring matches 12 of 20 the same way (mirror image).
    assert (p, r, f) == pytest.approx((0.6, 0.6, 0.6))
    assert video.contour_accuracy(gt, np.roll(gt, 1, axis=1)) == 1.0  # 1 px off: within tolerance
    assert video.contour_accuracy(gt, np.roll(gt, 2, axis=1), bound_th=2) == 1.0  # 2 px tolerance
    assert video.j_and_f(gt, np.roll(gt, 2, axis=1)) == pytest.approx((15 / 35 + 0.6) / 2)


def test_f_tolerance_grows_with_the_image_and_empty_cases():
    assert video.boundary_tolerance((480, 854)) == 8  # DAVIS 480p: ceil(0.008 × 979.7)
    big = square(200, 50, 50, 60)
    assert video.boundary_tolerance(big.shape) == 3
    assert video.contour_accuracy(big, np.roll(big, 3, axis=0)) == 1.0
    assert video.contour_accuracy(big, np.roll(big, 5, axis=0)) < 1.0
    empty = np.zeros_like(big)
    assert video.boundary_prf(big, empty) == (1.0, 0.0, 0.0)
    assert video.boundary_prf(empty, big) == (0.0, 1.0, 0.0)
    assert video.boundary_prf(empty, empty) == (1.0, 1.0, 1.0)


def test_sequence_scores_skip_the_first_and_last_frame_like_davis():
    gt = square(20, 5, 5, 5)
    wrong = np.zeros_like(gt)
    gts = [gt] * 5
    preds = [wrong, gt, np.roll(gt, 1, axis=1), gt, wrong]  # first and last frames are wrong
    s = video.sequence_scores(gts, preds)
    assert s.frames == (1, 2, 3)
    assert s.j_mean == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert s.f_mean == pytest.approx(1.0)
    assert s.jf == pytest.approx((s.j_mean + 1.0) / 2)
    assert s.j_recall == 1.0
    all_but_first = video.sequence_scores(gts, preds, skip_last=False)
    assert all_but_first.frames == (1, 2, 3, 4) and all_but_first.j_mean == pytest.approx((1 + 2 / 3 + 1 + 0) / 4)
    assert all_but_first.j_recall == pytest.approx(3 / 4)
    assert video.sequence_scores(gts[:2], preds[:2]).frames == ()
