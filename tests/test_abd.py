"""ABD (semi-supervised medical segmentation): patch math on hand tensors, data layouts, two-stream batches,
the three training modes, metrics against medpy, and the train-semi / eval-volumes stages on a tiny h5 set."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from weakseg.config import apply_overrides
from weakseg.data.acdc import SliceAugment, SliceViews, open_slices, patient_of, split_by_patient, weak_view
from weakseg.data.recipes import two_stream_batches
from weakseg.engine.artifacts import load_json
from weakseg.errors import ConfigError, DataError
from weakseg.losses.dice import dice_loss
from weakseg.methods import create_method
from weakseg.methods.abd import (
    PRESETS,
    bidirectional_displace,
    displace,
    from_patches,
    inverse_displacement,
    patch_profile,
    patch_reliability,
    rampup_weight,
    reliable_displacement,
    to_patches,
)
from weakseg.methods.base import LoaderContext
from weakseg.stages.eval_volumes import EvalVolumesConfig, eval_volumes
from weakseg.stages.train_semi import TrainSemiConfig, train_semi

h5py = pytest.importorskip("h5py")
pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------------------- patch math


def test_patches_round_trip_and_order():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    p = to_patches(x, 2)  # a 2 x 3 grid
    assert p.shape == (2, 6, 3, 2, 2)
    assert torch.equal(p[1, 4], x[1, :, 2:4, 2:4])  # patch 4 = grid row 1, column 1
    assert torch.equal(from_patches(p, 4, 6), x)


def test_patch_reliability_is_the_mean_confidence_per_patch():
    conf = torch.tensor([[[0.9, 0.7, 0.2, 0.4], [0.5, 0.3, 0.6, 0.0], [1.0, 1.0, 0.1, 0.1], [1.0, 0.6, 0.1, 0.3]]])
    r = patch_reliability(conf, 2)
    assert torch.allclose(r, torch.tensor([[0.6, 0.3, 0.9, 0.15]]))


def test_patch_profile_is_the_softmax_of_the_patch_mean_logits():
    logits = torch.zeros(1, 2, 2, 4)
    logits[0, 0, :, :2] = torch.tensor([[1.0, 3.0], [2.0, 2.0]])  # patch 0: class-0 mean 2, class-1 mean 0
    q = patch_profile(logits, 2)
    e2 = math.exp(2)
    assert torch.allclose(q[0, 0], torch.tensor([e2 / (e2 + 1), 1 / (e2 + 1)]))
    assert torch.allclose(q[0, 1], torch.tensor([0.5, 0.5]))


def test_reliable_displacement_indices_by_hand():
    # 4 patches; view 1's worst is 2, view 2's worst is 0; top-2 candidates: view 1 {0, 3}, view 2 {1, 2}
    r1 = torch.tensor([[0.9, 0.5, 0.1, 0.8]])
    r2 = torch.tensor([[0.2, 0.9, 0.7, 0.4]])
    q1 = torch.tensor([[[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.3, 0.7]]])
    q2 = torch.tensor([[[0.6, 0.4], [0.95, 0.05], [0.25, 0.75], [0.5, 0.5]]])
    d = reliable_displacement(r1, r2, q1, q2, top_k=2)
    # view 1's patch 2 (profile 0.2/0.8) takes view 2's candidate closest to it: patch 2 (0.25/0.75), not 1
    assert (int(d.into1), int(d.from2)) == (2, 2)
    # view 2's patch 0 (0.6/0.4) takes view 1's candidate j in {0, 3} minimising KL(q2[0] || q1[j]):
    # KL to q1[0] = 0.6 ln(0.6/0.9) + 0.4 ln(0.4/0.1) = 0.311; KL to q1[3] = 0.6 ln(0.6/0.3) + 0.4 ln(0.4/0.7) = 0.192
    assert (int(d.into2), int(d.from1)) == (0, 3)


def test_reliable_displacement_uses_kl_in_the_stated_direction():
    """KL(p || q) and KL(q || p) pick different candidates here; p is the worst patch's profile."""
    p, qa, qb = [0.39, 0.44, 0.17], [0.01, 0.66, 0.33], [0.22, 0.13, 0.65]
    # KL(p || qa) = 1.14 > KL(p || qb) = 0.53, but KL(qa || p) = 0.45 < KL(qb || p) = 0.59
    r1, r2 = torch.tensor([[0.1, 0.9, 0.8]]), torch.tensor([[0.9, 0.8, 0.1]])  # view 1's worst: 0; view 2's best: 0, 1
    q1 = torch.tensor([[p, [1 / 3] * 3, [1 / 3] * 3]])
    q2 = torch.tensor([[qa, qb, [1 / 3] * 3]])
    d = reliable_displacement(r1, r2, q1, q2, top_k=2)
    assert (int(d.into1), int(d.from2)) == (0, 1)


def test_inverse_displacement_indices_by_hand():
    r1 = torch.tensor([[0.3, 0.9, 0.1, 0.5], [0.6, 0.2, 0.4, 0.8]])
    r2 = torch.tensor([[0.7, 0.2, 0.8, 0.4], [0.1, 0.9, 0.5, 0.3]])
    d = inverse_displacement(r1, r2)
    assert d.into1.tolist() == [1, 3]  # view 1's most reliable patch ...
    assert d.from2.tolist() == [1, 0]  # ... takes view 2's least reliable one
    assert d.into2.tolist() == [2, 1]
    assert d.from1.tolist() == [2, 1]


def test_displace_changes_exactly_one_patch_per_image_and_respects_the_mask():
    a, b = torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4)
    b[1] *= 2
    out = displace(a, b, torch.tensor([0, 3, 1]), torch.tensor([2, 2, 2]), 2, mask=torch.tensor([True, True, False]))
    changed = (to_patches(out, 2) != to_patches(a, 2)).flatten(2).any(2)  # [B, N]
    assert changed.sum(1).tolist() == [1, 1, 0]
    assert changed[0, 0] and changed[1, 3]
    assert torch.all(out[1, :, 2:, 2:] == 2)
    assert torch.equal(a, torch.zeros(3, 1, 4, 4))  # inputs untouched


def test_labels_move_with_displaced_patches():
    """Images whose intensity encodes the label: after displacing images and labels alike the code still holds."""
    g = torch.Generator().manual_seed(0)
    y1, y2 = torch.randint(0, 4, (2, 8, 8), generator=g), torch.randint(0, 4, (2, 8, 8), generator=g)
    x1, x2 = (y1.float() / 10)[:, None], (y2.float() / 10 + 0.5)[:, None]  # views differ: moved patches show
    d = inverse_displacement(torch.rand(2, 4, generator=g), torch.rand(2, 4, generator=g))
    mask = torch.tensor([True, False])
    nx1, nx2 = bidirectional_displace(x1, x2, d, 4, mask)
    ny1, ny2 = bidirectional_displace(y1, y2, d, 4, mask)
    decode = lambda x: torch.round((x[:, 0] % 0.5) * 10).long()  # noqa: E731
    assert torch.equal(decode(nx1), ny1) and torch.equal(decode(nx2), ny2)
    assert not torch.equal(ny1[0], y1[0]) and torch.equal(ny1[1], y1[1])  # sample 0 moved, sample 1 masked out
    i, j = int(d.into1[0]), int(d.from2[0])
    assert torch.equal(to_patches(ny1[:, None], 4)[0, i], to_patches(y2[:, None], 4)[0, j])


def test_rampup_values_at_the_ends():
    assert rampup_weight(0, 0.1, 30000, 150) == pytest.approx(0.1 * math.exp(-5))
    assert rampup_weight(30000, 0.1, 30000, 150) == pytest.approx(0.1)
    assert rampup_weight(90000, 0.1, 30000, 150) == pytest.approx(0.1)
    assert rampup_weight(149, 0.1, 30000, 150) == rampup_weight(0, 0.1, 30000, 150)  # held per block of 150
    assert rampup_weight(15000, 0.1, 30000, 150) == pytest.approx(0.1 * math.exp(-1.25))
    assert rampup_weight(5, 0.1, 0) == 0.1  # no ramp


def test_dice_loss_by_hand():
    target = torch.tensor([[[0, 1], [1, 1]]])
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float()
    assert float(dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    probs = torch.full((1, 2, 2, 2), 0.5)
    # class 0: 2·0.5 / (4·0.25 + 1); class 1: 2·1.5 / (1 + 3) -> loss = mean(1 - 0.5, 1 - 0.75)
    assert float(dice_loss(probs, target)) == pytest.approx(0.375, abs=1e-5)
    # one labelled pixel (class 0): class 0 gives 1 - 2·0.5 / (0.25 + 1), class 1 gives 1 - s / (0.25 + s) ≈ 1
    assert float(dice_loss(probs, torch.tensor([[[0, 255], [255, 255]]]))) == pytest.approx(0.6, abs=1e-4)


# ---------------------------------------------------------------------------- data


def _disk(n: int, r: float, cy: float, cx: float) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _case(rng: np.random.Generator, depth: int = 3, n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A toy cardiac volume: LV disk (3) in a Myo ring (2), RV disk (1) beside it; intensity by class + noise."""
    label = np.zeros((depth, n, n), np.uint8)
    for d in range(depth):
        cy, cx = n / 2 + rng.uniform(-2, 2), n / 2 + rng.uniform(-2, 2)
        label[d][_disk(n, 9, cy, cx)] = 2
        label[d][_disk(n, 6, cy, cx)] = 3
        label[d][_disk(n, 5, cy, cx - 12) & (label[d] == 0)] = 1
    image = (np.array([0.1, 0.8, 0.4, 0.9], np.float32)[label] + rng.normal(0, 0.05, label.shape)).clip(0, 1)
    return image.astype(np.float32), label


@pytest.fixture(scope="module")
def h5_root(tmp_path_factory) -> Path:
    """ACDC-like h5 layout: 5 training patients (2 frames, 3 slices each) as slice files, 1 val patient as volumes."""
    root = tmp_path_factory.mktemp("acdc")
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    slices = []
    for p in (7, 3, 9, 1, 5):  # list order, not numeric order, decides who is labelled
        for f in (1, 2):
            image, label = _case(rng)
            for k in range(3):
                sid = f"patient{p:03d}_frame{f:02d}_slice_{k + 1}"
                with h5py.File(root / "data" / f"{sid}.h5", "w") as h:
                    h["image"], h["label"] = image[k], label[k]
                slices.append(sid)
    (root / "train_slices.list").write_text("\n".join(slices) + "\n")
    vols = []
    for f in (1, 2):
        image, label = _case(rng, depth=4)
        vid = f"patient100_frame{f:02d}"
        with h5py.File(root / "data" / f"{vid}.h5", "w") as h:
            h["image"], h["label"] = image, label
        vols.append(vid)
    (root / "val.list").write_text("\n".join(vols) + "\n")
    return root


def test_h5_layout_slices_volumes_and_patient_split(h5_root):
    train = open_slices(h5_root, "train")
    assert len(train) == 30 and train.layout == "h5"
    r = train[train.index_of("patient003_frame02_slice_2")]
    assert (r.volume, r.slice_index) == ("patient003_frame02", 1)
    image, label = train.load_slice(0)
    assert image.dtype == np.float32 and label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1, 2, 3}
    split = split_by_patient(train, 2)
    assert split.patients == ("patient007", "patient003")
    assert len(split.labelled) == 12 and len(split.unlabelled) == 18
    assert {patient_of(str(train[i].volume)) for i in split.unlabelled} == {"patient009", "patient001", "patient005"}
    with pytest.raises(ConfigError, match="1..5"):
        split_by_patient(train, 6)
    val = open_slices(h5_root, "val")
    assert val.volumes == ["patient100_frame01", "patient100_frame02"]
    vol, lab = val.load_volume("patient100_frame02")
    assert vol.shape == lab.shape == (4, 32, 32)
    assert np.array_equal(val.load_slice(val.slices_of("patient100_frame02")[2])[1], lab[2])


def test_missing_files_raise_a_clear_data_error(h5_root, tmp_path):
    with pytest.raises(DataError, match="has no test_slices.list or test.list"):
        open_slices(h5_root, "test")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.h5").write_bytes(b"")
    (tmp_path / "val.list").write_text("patient100_frame01\n")
    with pytest.raises(DataError, match=r"1 file\(s\) listed in .*val.list do not exist"):
        open_slices(tmp_path, "val")
    with pytest.raises(DataError, match="cannot tell the layout"):
        open_slices(tmp_path / "data", "val")


def test_png_layout_reads_slices_and_stacks_volumes(tmp_path):
    (tmp_path / "slices").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(1)
    image, label = _case(rng, depth=2)
    for k in range(2):
        sid = f"caseA_slice_{k}"
        Image.fromarray((image[k] * 65535).astype(np.uint16)).save(tmp_path / "slices" / f"{sid}.png")
        Image.fromarray(label[k]).save(tmp_path / "labels" / f"{sid}.png")
    (tmp_path / "test.list").write_text("caseA\n")
    ds = open_slices(tmp_path, "test")
    assert ds.layout == "png" and ds.volumes == ["caseA"]
    vol, lab = ds.load_volume("caseA")
    assert np.allclose(vol, image, atol=1e-4) and np.array_equal(lab, label)


def test_weak_view_moves_image_and_label_together():
    torch.manual_seed(3)
    label = torch.randint(0, 4, (16, 16))
    image = label.float() / 4
    aug = SliceAugment(rot_flip=1.0)  # exact rotations and flips only
    for _ in range(5):
        x, y = weak_view(image, label, 16, aug)
        assert torch.allclose(x[0] * 4, y.float())


def test_two_stream_batches_put_labelled_first_and_hide_unlabelled_masks(h5_root):
    train = open_slices(h5_root, "train")
    split = split_by_patient(train, 1)
    aug = SliceAugment()
    lab = SliceViews(train, split.labelled, 32, aug)
    unl = SliceViews(train, split.unlabelled, 32, aug, labelled=False)
    make, steps = two_stream_batches(lab, unl, labelled_bs=4, unlabelled_bs=2, steps_per_epoch=3, seed=0)
    batches = list(make(1))
    assert steps == 3 and len(batches) == 3
    b = batches[0]
    assert b["image"].shape == (6, 1, 32, 32) and int(b["n_labelled"]) == 4
    assert [int(x["iteration"]) for x in batches] == [3, 4, 5]
    assert torch.all(b["label"][4:] == 255) and torch.all(b["label_strong"][4:] == 255)
    assert set(torch.unique(b["label"][:4]).tolist()) <= {0, 1, 2, 3}
    again = next(iter(make(1)))
    assert torch.equal(again["image"], b["image"])  # seeded by (seed, epoch, stream, position)
    assert not torch.equal(next(iter(make(2)))["image"], b["image"])


# ---------------------------------------------------------------------------- the method


@pytest.mark.parametrize("name", ["abd", "cross-teaching", "supervised-only"])
def test_each_mode_trains_a_step(name, h5_root):
    torch.manual_seed(0)
    method = create_method(name, "tiny")
    split = split_by_patient(open_slices(h5_root, "train"), 2)
    net = method.build(None, 4)
    assert (net.net2 is None) == (name == "supervised-only")
    make, _ = method.loader(split, LoaderContext(seed=0))
    batch = next(iter(make(0)))
    opt = method.optimizer(net)
    before = [p.detach().clone() for p in net.parameters()]
    losses = method.step(net.train(), batch, 0)
    assert torch.isfinite(losses["loss"])
    assert ("abd_i" in losses) == (name == "abd") and ("cps" in losses) == (name != "supervised-only")
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
    vol = np.random.default_rng(0).random((3, 20, 28)).astype(np.float32)
    pred = method.predict_volume(net.eval(), vol)
    assert pred.shape == (3, 20, 28) and pred.dtype == np.uint8 and pred.max() <= 3


def test_config_checks_and_presets():
    assert PRESETS["paper"].iterations == 30000 and PRESETS["paper"].patch_size == 56
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        create_method("abd", "tiny", ("patch_size=12",))
    with pytest.raises(ConfigError, match="multiple of epoch_iters"):
        create_method("abd", "cpu", ("epoch_iters=7",))
    assert apply_overrides(PRESETS["cpu"], ("top_k=2",)).top_k == 2


# ---------------------------------------------------------------------------- stages and metrics


def test_train_semi_and_eval_volumes_match_medpy(h5_root, tmp_path):
    from medpy.metric import binary

    cfg = TrainSemiConfig(data=h5_root, out=tmp_path / "semi", method="abd", preset="tiny", labelled=2, device="cpu")
    out = train_semi(cfg)
    curve = load_json(out / "curve.json")
    assert [e["iteration"] for e in curve["epochs"]] == [1, 2] and "mean" in curve["epochs"][0]["curve"]
    assert (out / "DONE").is_file() and (out / "best.safetensors").is_file()
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    train_semi(cfg)  # complete: skipped
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="another configuration"):
        train_semi(TrainSemiConfig(data=h5_root, out=out, method="abd", preset="tiny", labelled=3, device="cpu"))

    spacing = (5.0, 1.5, 1.25)
    r = eval_volumes(EvalVolumesConfig(model_dir=out, data=h5_root, out=tmp_path / "eval", split="val",
                                       spacing=spacing, device="cpu"))  # fmt: skip
    assert r["unit"] == "mm" and r["volumes"] == 2 and set(r["per_class"]) == {"RV", "Myo", "LV"}
    # the same numbers straight from medpy on the same predictions
    from weakseg.engine.checkpoint import load_model
    from weakseg.methods.base import method_from_record

    rec = load_json(out / "config.json")["record"]
    method = method_from_record(rec["method"], rec["method_config"])
    net = method.build(None, 4)
    load_model(out / "model.safetensors", net)
    val = open_slices(h5_root, "val")
    for v in val.volumes:
        image, label = val.load_volume(v)
        pred = method.predict_volume(net.eval(), image)
        for c, name in enumerate(("RV", "Myo", "LV"), start=1):
            got = r["per_volume"][v][name]
            g, p = label == c, pred == c
            if p.any() and g.any():
                assert got["dice"] == pytest.approx(binary.dc(p, g))
                assert got["jaccard"] == pytest.approx(binary.jc(p, g))
                assert got["hd95"] == pytest.approx(binary.hd95(p, g, voxelspacing=spacing))
                assert got["asd"] == pytest.approx(binary.asd(p, g, voxelspacing=spacing))
            else:
                assert math.isnan(got["hd95"]) and got["dice"] == 0.0
    assert r["mean"]["dice"] == pytest.approx(np.mean([r["per_class"][n]["dice"] for n in ("RV", "Myo", "LV")]))


def test_metrics_equal_medpy_on_tiny_volumes_in_voxels_and_mm():
    """The backend of eval-volumes (weakseg.eval.medical) against medpy itself on two tiny 3D volumes."""
    from medpy.metric import binary

    from weakseg.eval.medical import per_class_scores

    rng = np.random.default_rng(2)
    gt = np.zeros((3, 12, 12), np.uint8)
    gt[:, 3:9, 2:8] = 1
    gt[1:, 5:7, 4:6] = 2
    pred = gt.copy()
    pred[rng.random(gt.shape) < 0.1] = 1
    pred[0, :2, :] = 2
    for spacing, unit in ((None, "voxel"), ((4.0, 1.5, 1.5), "mm")):
        scores = per_class_scores(gt, pred, (1, 2), spacing)
        for c, s in scores.items():
            p, g = pred == c, gt == c
            assert s.unit == unit
            assert s.dice == pytest.approx(binary.dc(p, g)) and s.jaccard == pytest.approx(binary.jc(p, g))
            assert s.hd95 == pytest.approx(binary.hd95(p, g, voxelspacing=spacing))
            assert s.asd == pytest.approx(binary.asd(p, g, voxelspacing=spacing))
