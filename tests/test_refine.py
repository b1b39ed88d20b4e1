"""Pseudo labels: background rules, refiners (PAR, dense CRF), the pseudo stage (metrics, resume)."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weakseg.errors import ConfigError, MissingExtraError
from weakseg.refine.background import (
    low_margin,
    mcis_background,
    normalise_scores,
    power_background,
    scores_to_label,
    threshold_background,
    with_background,
)
from weakseg.refine.par import par_affinity, par_refine

OLD_DEFAULTS = {"background": "power", "ignore_margin": 0.1, "par_iters": 10, "par_scale": 1.0, "par_w1": 0.3}
"""the pseudo options these tests were written for (the stage's defaults before the pipeline's became its own)"""

# --- background rules on tiny arrays --------------------------------------------------------------


def test_power_background_hand_computed():
    cams = torch.tensor([[[0.0, 0.5], [1.0, 0.2]], [[0.3, 0.1], [0.0, 0.6]]])
    bg = power_background(cams, power=2.0)
    expected = torch.tensor([[(1 - 0.3) ** 2, (1 - 0.5) ** 2], [0.0, (1 - 0.6) ** 2]])
    torch.testing.assert_close(bg, expected)
    label = scores_to_label(with_background(cams, bg), classes=[4, 7])
    # pixel (0,0): bg 0.49 > 0.3 -> 0; (0,1): 0.5 > 0.25 -> class 4 -> 5; (1,0): 1.0 -> 5; (1,1): 0.6 -> 7+1
    np.testing.assert_array_equal(label, [[0, 5], [5, 8]])


def test_threshold_background_and_no_classes():
    cams = torch.tensor([[[0.1, 0.9]]])
    bg = threshold_background(cams, 0.4)
    torch.testing.assert_close(bg, torch.tensor([[0.4, 0.4]]))
    np.testing.assert_array_equal(scores_to_label(with_background(cams, bg), [2]), [[0, 3]])
    empty = np.zeros((0, 2, 3), np.float32)  # an image without foreground classes: all background
    assert torch.equal(power_background(empty, 3.0), torch.ones(2, 3))
    assert torch.equal(threshold_background(empty, 0.3), torch.ones(2, 3))


def test_mcis_rule_conflicts_become_ignore():
    # pixels:              A      B      C      D      E (two classes), F
    sal = torch.tensor([[1.00, 0.00, 1.00, 0.00, 1.00, 0.70]])
    cam0 = torch.tensor([[0.10, 0.97, 0.80, 0.00, 0.995, 0.40]])
    cam1 = torch.tensor([[0.00, 0.00, 0.00, 0.00, 0.996, 0.00]])
    r = mcis_background(torch.stack([cam0, cam1]), sal, normalise=False, min_foreground=0.0)
    label = scores_to_label(r.scores, classes=[2, 5], ignore=r.ignore)
    # A: salient, no CAM above the threshold      -> 255
    # B: confident CAM (> 0.95) but not salient   -> 255
    # C: salient and CAM above the threshold      -> class 2 (value 3)
    # D: neither                                  -> background
    # E: two scores above the conflict threshold  -> 255
    # F: CAM 0.4 beats background 1 - 0.7         -> class 2
    np.testing.assert_array_equal(label, [[255, 255, 3, 0, 255, 3]])


def test_mcis_rule_ignores_images_with_tiny_foreground():
    sal = torch.zeros(10, 10)
    sal[0, 0] = 1.0
    cams = torch.zeros(1, 10, 10)
    cams[0, 0, 0] = 1.0
    r = mcis_background(cams, sal, normalise=False)  # 1 % foreground is not below 1 %...
    assert not r.ignore.all()
    r = mcis_background(cams, sal, normalise=False, min_foreground=0.02)  # ...but is below 2 %
    assert r.ignore.all()


def test_mcis_rule_normalises_each_class_map():
    sal = torch.ones(1, 3)
    cams = torch.tensor([[[0.1, 0.2, 0.3]]])  # min-max -> 0, 0.5, 1
    r = mcis_background(cams, sal, min_foreground=0.0)
    torch.testing.assert_close(r.scores[1], torch.tensor([[0.0, 0.5, 1.0]]))


def test_low_margin_confidence_rule():
    probs = torch.tensor([[[0.50, 0.90]], [[0.45, 0.05]], [[0.05, 0.05]]])
    np.testing.assert_array_equal(low_margin(probs, 0.1).numpy(), [[True, False]])
    assert not low_margin(probs, 0.0).any()
    label = scores_to_label(probs, [0, 1], ignore=low_margin(probs, 0.1))
    np.testing.assert_array_equal(label, [[255, 0]])


def test_normalise_scores_sums_to_one():
    s = normalise_scores(torch.tensor([[[0.0, 2.0]], [[0.0, 6.0]]]))
    torch.testing.assert_close(s.sum(0), torch.ones(1, 2))
    torch.testing.assert_close(s[:, 0, 1], torch.tensor([0.25, 0.75]), atol=1e-4, rtol=0)


# --- refiners -------------------------------------------------------------------------------------


def _toy(seed: int = 0, size: int = 64):
    """A red square on a blue background, and a blurred, shifted foreground probability."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.zeros(size, size, dtype=torch.bool)
    gt[16:48, 20:52] = True
    img = torch.empty(3, size, size)
    img[:] = torch.tensor([0.2, 0.3, 0.6])[:, None, None]
    img[:, gt] = torch.tensor([0.9, 0.2, 0.1])[:, None]
    img = (img + 0.03 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    fg = F.avg_pool2d(F.pad(gt.float()[None, None], [6] * 4, mode="replicate"), 13, stride=1)
    fg = torch.roll(fg, shifts=(4, 4), dims=(2, 3))[0, 0]
    probs = torch.stack([1 - fg, fg])
    return img, probs, gt


def _iou(probs: torch.Tensor, gt: torch.Tensor) -> float:
    m = probs.argmax(0).bool()
    return float((m & gt).sum() / (m | gt).sum())


def test_par_improves_a_blurred_mask():
    img, probs, gt = _toy()
    before = _iou(probs, gt)
    refined = par_refine(img[None], probs[None])[0]
    assert refined.shape == probs.shape
    torch.testing.assert_close(refined.sum(0), torch.ones(64, 64))  # a convex combination: still probabilities
    after = _iou(refined, gt)
    assert before < 0.8
    assert after > before + 0.15 and after > 0.95


def test_pseudo_config_passes_par_settings_to_the_refiner(tmp_path, monkeypatch):
    import numpy as np

    from weakseg.refine import pseudo
    from weakseg.stages.pseudo import PseudoConfig

    seen = {}

    def spy(image, probs, iters, w1, max_side, scale):
        seen.update(iters=iters, w1=w1, max_side=max_side, scale=scale)
        return probs

    monkeypatch.setattr(pseudo, "par_refine", spy)
    cfg = PseudoConfig(
        cams=tmp_path, data=tmp_path, out=tmp_path, bg_threshold=0.3, par_iters=50, par_w1=0.1, par_max_side=99,
        par_scale=0.5,
    )  # fmt: skip
    img, probs, _ = _toy()
    image = (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    torch.testing.assert_close(pseudo._refine_par(image, probs, cfg, None), probs)
    assert seen == {"iters": 50, "w1": 0.1, "max_side": 99, "scale": 0.5}
    seen.clear()  # make_label reaches the refiner with the same options
    pseudo.make_label(probs[1:].numpy(), [0], image, cfg.resolved())
    assert seen == {"iters": 50, "w1": 0.1, "max_side": 99, "scale": 0.5}
    # and no propagation step leaves the scores as they were (what refiner "none" gives)
    torch.testing.assert_close(par_refine(img[None], probs[None], iters=0)[0], probs)
    with pytest.raises(ConfigError, match="par_iters"):
        replace(cfg, par_iters=-1).resolved()
    with pytest.raises(ConfigError, match="par_w1"):
        replace(cfg, par_w1=0.0).resolved()
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="par_scale"):
            replace(cfg, par_scale=bad).resolved()


def test_par_is_batched_and_runs_at_reduced_resolution():
    img, probs, gt = _toy()
    img2, probs2, _ = _toy(seed=1)
    batch = par_refine(torch.stack([img, img2]), torch.stack([probs, probs2]))
    single = par_refine(img[None], probs[None])
    torch.testing.assert_close(batch[:1], single)
    small = par_refine(img[None], probs[None], max_side=32)
    assert small.shape == (1, 2, 64, 64)
    assert _iou(small[0], gt) > _iou(probs, gt)
    # a relative working size: half of 64 px is the same as max_side 32; max_side caps the scale
    torch.testing.assert_close(par_refine(img[None], probs[None], scale=0.5), small)
    torch.testing.assert_close(par_refine(img[None], probs[None], scale=0.9, max_side=32), small)
    with pytest.raises(ValueError, match="scale"):
        par_refine(img[None], probs[None], scale=0.0)


def test_par_affinity_prefers_same_colour():
    img = torch.zeros(1, 3, 9, 9)
    img[..., 5:] = 1.0  # right part white
    aff = par_affinity(img, dilations=(1,))
    torch.testing.assert_close(aff.sum(1), torch.ones(1, 9, 9))
    # pixel (4, 4) is black: its right neighbours (offsets (-1,1), (0,1), (1,1) = indices 2, 4, 7) are white
    assert aff[0, [2, 4, 7], 4, 4].max() < aff[0, [0, 1, 3, 5, 6], 4, 4].min()


def test_crf_missing_extra_message(monkeypatch):
    from weakseg.refine import crf

    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # "import pydensecrf..." now raises ImportError
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(MissingExtraError, match=r"pydensecrf2.*weakseg\[crf\]"):
        crf.crf_refine(np.zeros((4, 4, 3), np.uint8), np.full((2, 4, 4), 0.5, np.float32))


def test_crf_improves_a_blurred_mask():
    pytest.importorskip("pydensecrf.densecrf")
    from weakseg.refine.crf import crf_refine

    img, probs, gt = _toy()
    image = (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    refined = torch.from_numpy(crf_refine(image, probs.numpy()))
    assert refined.shape == probs.shape
    assert _iou(refined, gt) > _iou(probs, gt) + 0.15


# --- the pseudo stage -----------------------------------------------------------------------------


def _write_gt_cams(ds, folder: Path) -> Path:
    """CAMs equal to the ground-truth class masks (so perfect pseudo labels are known)."""
    from weakseg.engine.artifacts import mark_done, save_npz

    for i, rec in enumerate(ds.records):
        gt = ds.load_mask(i)
        cams = np.stack([(gt == c + 1) for c in rec.labels]).astype(np.float16)
        save_npz(folder / f"{rec.image_id}.npz", cams=cams, classes=np.array(rec.labels, np.int16))
    mark_done(folder)
    return folder


@pytest.fixture(scope="module")
def gt_cams(synth_root, tmp_path_factory) -> Path:
    from weakseg.data.registry import open_dataset

    return _write_gt_cams(open_dataset(synth_root, "train"), tmp_path_factory.mktemp("cams"))


def test_registries_list_valid_names(tmp_path):
    from weakseg.engine.artifacts import save_json
    from weakseg.refine.pseudo import BG_OFFSET, MASK_FREE_BG_THRESHOLD
    from weakseg.stages.pseudo import PseudoConfig

    cfg = PseudoConfig(cams=tmp_path, data=tmp_path, out=tmp_path)
    with pytest.raises(ConfigError, match="mcis, power, threshold"):
        replace(cfg, background="otsu").resolved()
    with pytest.raises(ConfigError, match="crf, none, par, rw"):
        replace(cfg, refiner="grabcut").resolved()
    with pytest.raises(ConfigError, match="saliency"):
        replace(cfg, background="mcis").resolved()
    assert replace(cfg, background="power", saliency=tmp_path).resolved().background == "mcis"
    with pytest.raises(ConfigError, match="only used by the 'mcis' background rule"):
        replace(cfg, saliency=tmp_path).resolved()
    # the default threshold rule: a given number, else an eval-cams sweep's best - BG_OFFSET, else the mask-free value
    assert replace(cfg, bg_threshold=0.3).resolved().bg_threshold == 0.3
    save_json(tmp_path / "seeds.json", {"best_threshold": 0.4, "best_miou": 0.5})
    assert replace(cfg, seeds=tmp_path / "seeds.json").resolved().bg_threshold == pytest.approx(0.4 - BG_OFFSET)
    assert replace(cfg, seeds=tmp_path / "seeds.json", bg_threshold=0.3).resolved().bg_threshold == 0.3
    assert cfg.resolved().bg_threshold == MASK_FREE_BG_THRESHOLD
    save_json(tmp_path / "no_masks.json", {"best_threshold": None, "best_miou": None})  # a sweep without masks
    assert replace(cfg, seeds=tmp_path / "no_masks.json").resolved().bg_threshold == MASK_FREE_BG_THRESHOLD
    with pytest.raises(ConfigError, match="does not exist"):
        replace(cfg, seeds=tmp_path / "nothing.json").resolved()


def test_pseudo_labels_metrics_exclude_ignored_pixels(synth_root, gt_cams, tmp_path):
    from weakseg.data.palette import read_mask_png, save_mask_png
    from weakseg.data.registry import open_dataset
    from weakseg.stages.pseudo import PseudoConfig, make_pseudo

    ds = open_dataset(synth_root, "train")
    out = tmp_path / "pseudo"
    cfg = PseudoConfig(
        cams=gt_cams,
        data=synth_root,
        out=out,
        background="threshold",
        bg_threshold=0.5,
        refiner="none",
        ignore_margin=0.0,
    )
    assert make_pseudo(cfg)["miou"] == pytest.approx(1.0)
    # an interrupted run of this configuration: no DONE, no metrics, only image 0's label written...
    for p in [out / "DONE", out / "metrics.json", *out.glob("*.png")]:
        p.unlink()
    # ...and planted: wrong everywhere except where it says "ignore"
    gt0 = ds.load_mask(0)
    planted = np.full_like(gt0, 255)
    planted[:, :10] = np.where(gt0[:, :10] == 255, 0, gt0[:, :10])
    save_mask_png(out / f"{ds[0].image_id}.png", planted)
    m = make_pseudo(cfg)
    # CAMs = ground truth -> perfect labels; the planted one is right wherever it is not 255
    assert m["scored"]["miou"] == pytest.approx(1.0)
    # ...but its ignored object pixels count as background in the headline mIoU (IRN's convention)
    assert m["miou"] < 0.999
    assert m["kept"] == 1 and m["written"] == len(ds) - 1
    total = sum(ds.load_mask(i).size for i in range(len(ds)))
    assert m["ignored_fraction"] == pytest.approx((planted == 255).sum() / total, abs=1e-6)
    np.testing.assert_array_equal(read_mask_png(out / f"{ds[0].image_id}.png"), planted)
    label1 = read_mask_png(out / f"{ds[1].image_id}.png")
    gt1 = ds.load_mask(1)
    np.testing.assert_array_equal(label1[gt1 != 255], gt1[gt1 != 255])


def test_pseudo_stage_resumes_and_writes_done_last(synth_root, gt_cams, tmp_path):
    from weakseg.engine.artifacts import is_done, load_json
    from weakseg.stages.pseudo import PseudoConfig, make_pseudo

    out = tmp_path / "pseudo"
    cfg = PseudoConfig(cams=gt_cams, data=synth_root, out=out, refiner="par", **OLD_DEFAULTS)
    first = make_pseudo(cfg)
    assert is_done(out) and first["written"] == first["num_images"]
    assert first["miou"] > 0.8  # PAR on perfect CAMs keeps them (nearly) perfect
    pngs = sorted(out.glob("*.png"))
    # simulate an interruption: DONE, metrics and one label gone
    (out / "DONE").unlink()
    (out / "metrics.json").unlink()
    pngs[0].unlink()
    kept_mtime = pngs[1].stat().st_mtime_ns
    second = make_pseudo(cfg)
    assert second["written"] == 1 and second["kept"] == len(pngs) - 1
    assert pngs[0].is_file() and pngs[1].stat().st_mtime_ns == kept_mtime
    assert second["miou"] == pytest.approx(first["miou"])
    done = (out / "DONE").stat().st_mtime_ns
    assert all(done >= p.stat().st_mtime_ns for p in [*out.glob("*.png"), out / "metrics.json", out / "config.json"])
    assert load_json(out / "config.json")["record"]["refiner"] == "par"
    # a complete folder is skipped; another configuration is refused
    assert make_pseudo(cfg)["miou"] == pytest.approx(first["miou"])
    with pytest.raises(ConfigError, match="another configuration"):
        make_pseudo(replace(cfg, refiner="none"))


def test_pseudo_refuses_incomplete_cams(synth_root, tmp_path):
    from weakseg.errors import DataError
    from weakseg.stages.pseudo import PseudoConfig, make_pseudo

    (tmp_path / "cams").mkdir()
    with pytest.raises(DataError, match="DONE"):
        make_pseudo(PseudoConfig(cams=tmp_path / "cams", data=synth_root, out=tmp_path / "out", **OLD_DEFAULTS))


def test_pseudo_labels_restricted_to_image_classes(synth_root, tmp_path):
    """A CAM channel for a class the image is not labelled with never appears in its pseudo label."""
    from weakseg.data.palette import read_mask_png
    from weakseg.data.registry import open_dataset
    from weakseg.engine.artifacts import mark_done, save_npz
    from weakseg.stages.pseudo import PseudoConfig, make_pseudo

    ds = open_dataset(synth_root, "train")
    cams_dir = tmp_path / "cams"
    for i, rec in enumerate(ds.records):
        h, w = ds.load_mask(i).shape
        absent = next(c for c in range(ds.num_classes) if c not in rec.labels)
        cams = np.zeros((len(rec.labels) + 1, h, w), np.float16)
        cams[-1] = 1.0  # a confident map of a class that is not in the image
        save_npz(cams_dir / f"{rec.image_id}.npz", cams=cams, classes=np.array([*rec.labels, absent], np.int16))
    mark_done(cams_dir)
    out = tmp_path / "pseudo"
    make_pseudo(PseudoConfig(cams=cams_dir, data=synth_root, out=out, refiner="none", workers=0, **OLD_DEFAULTS))
    for rec in ds.records:
        values = set(np.unique(read_mask_png(out / f"{rec.image_id}.png")).tolist())
        assert values <= {0, 255, *(c + 1 for c in rec.labels)}


def test_pseudo_mcis_rule_with_saliency_folder(synth_root, gt_cams, tmp_path):
    from PIL import Image

    from weakseg.data.palette import read_mask_png
    from weakseg.data.registry import open_dataset
    from weakseg.engine.artifacts import save_png
    from weakseg.stages.pseudo import PseudoConfig, make_pseudo

    ds = open_dataset(synth_root, "train")
    sal_dir = tmp_path / "sal"
    for i, rec in enumerate(ds.records):
        gt = ds.load_mask(i)
        sal = ((gt > 0) & (gt != 255)).astype(np.uint8) * 255
        sal[:4] = 255  # a salient strip without any CAM: must be ignored (unless it is an object)
        save_png(sal_dir / f"{rec.image_id}.png", Image.fromarray(sal))
    out = tmp_path / "pseudo"
    cfg = PseudoConfig(cams=gt_cams, data=synth_root, out=out, saliency=sal_dir, refiner="none", **OLD_DEFAULTS)
    m = make_pseudo(cfg)  # background "power" with a saliency folder: the mcis rule
    assert m["scored"]["miou"] == pytest.approx(1.0)
    assert m["ignored_fraction"] > 0
    label = read_mask_png(out / f"{ds[0].image_id}.png")
    gt = ds.load_mask(0)
    strip = label[:4]
    assert np.all((strip == 255) | ((strip == gt[:4]) & (gt[:4] > 0)))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores for a worker process")
def test_pseudo_workers_match_in_process(synth_root, gt_cams, tmp_path):
    from weakseg.stages.pseudo import PseudoConfig, make_pseudo

    cfg = PseudoConfig(cams=gt_cams, data=synth_root, out=tmp_path / "a", refiner="par", **OLD_DEFAULTS)
    a = make_pseudo(cfg)
    b = make_pseudo(replace(cfg, out=tmp_path / "b", workers=1))
    assert a["miou"] == pytest.approx(b["miou"])
    for p in sorted((tmp_path / "a").glob("*.png")):
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()


def test_saved_pseudo_config_keeps_only_options_that_change_the_output(tmp_path):
    from weakseg.stages.pseudo import PseudoConfig

    cfg = PseudoConfig(cams=tmp_path / "c", data=tmp_path / "d", out=tmp_path / "o", bg_threshold=0.3, refiner="par")
    rec = cfg.record()
    assert {k for k in rec if k.startswith("par_")} == {"par_iters", "par_w1", "par_scale", "par_max_side"}
    assert rec["par_scale"] == 0.65 and rec["bg_threshold"] == 0.3 and rec["cams"] == str(tmp_path / "c")
    # not recorded: the refiners and background rules not in use, and what cannot change the labels
    assert not {"rw_beta", "rw_iters", "rw_max_side", "bg_power", "affinity", "saliency"} & rec.keys()
    assert not {"workers", "out", "overwrite", "seeds"} & rec.keys()
    assert replace(cfg, workers=3, seeds=tmp_path / "s.json").record() == rec
    none = replace(cfg, refiner="none", par_scale=0.5).record()
    assert not any(k.startswith(("par_", "rw_")) for k in none) and none == replace(cfg, refiner="none").record()
    power = replace(cfg, background="power", bg_threshold=None).record()
    assert power["bg_power"] == 3.0 and "bg_threshold" not in power
    rw = replace(cfg, refiner="rw", affinity=tmp_path / "aff").record()
    assert rw["affinity"] == str(tmp_path / "aff") and rw["rw_iters"] == 256 and "par_iters" not in rw
