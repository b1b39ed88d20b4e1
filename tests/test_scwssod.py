"""SCWSSOD (scribble salient-object detection): losses on hand tensors, network, data layouts, stages end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from weakseg.backbones import create_backbone
from weakseg.data.saliency import _union_of_objects, open_saliency
from weakseg.errors import ConfigError, DataError
from weakseg.methods import create_method
from weakseg.methods.scwssod import (
    AGGM,
    LossWeights,
    SalientTensors,
    SCWSSODNet,
    downscale,
    local_saliency_coherence,
    scribble_loss,
    scwssod_loss,
    structure_consistency,
    triangle_lr,
)
from weakseg.stages.train_saliency import (
    PredictSaliencyConfig,
    TrainSaliencyConfig,
    predict_saliency_maps,
    train_saliency,
)

# ---------------------------------------------------------------------------- losses on hand tensors


def _two_tone(h: int = 12, w: int = 12, edge: int = 6) -> torch.Tensor:
    """``[1, 3, H, W]``: colour 0 left of column ``edge``, colour 1 from it on (a vertical image edge)."""
    img = torch.zeros(1, 3, h, w)
    img[..., edge:] = 1.0
    return img


def _step(h: int, w: int, col: int) -> torch.Tensor:
    s = torch.zeros(1, 1, h, w)
    s[..., col:] = 1.0
    return s


def test_lsc_hand_value_two_pixels():
    # two pixels of one colour, saliency 0 and 1, radius 1: each is the other's only neighbour at distance 1,
    # so mean_i Σ_j K_ij |s_i - s_j| = K = exp(-½ · 1 / σ_xy²)
    img = torch.full((1, 3, 1, 2), 0.3)
    sal = torch.tensor([[[[0.0, 1.0]]]])
    got = local_saliency_coherence(sal, img, scale=1, radius=1, xy_sigma=2.0, rgb_sigma=0.1)
    assert got.item() == pytest.approx(math.exp(-0.5 / 4.0), rel=1e-6)


@pytest.mark.parametrize("value", [0.0, 0.37, 1.0])
def test_lsc_zero_for_a_constant_prediction(value):
    img = _two_tone() + 0.05 * torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    sal = torch.full((1, 1, 12, 12), value)
    assert local_saliency_coherence(sal, img, scale=1, radius=2, xy_sigma=3.0).item() == 0.0


def test_lsc_cheaper_across_an_image_edge_than_across_a_flat_region():
    img = _two_tone(edge=6)
    on_edge = local_saliency_coherence(_step(12, 12, 6), img, scale=1, radius=2, xy_sigma=3.0)
    off_edge = local_saliency_coherence(_step(12, 12, 3), img, scale=1, radius=2, xy_sigma=3.0)
    assert on_edge.item() < 1e-6  # σ_rgb = 0.1 and a colour jump of 1: the kernel across the edge is ~e^-150
    assert off_edge.item() > 0.5


def test_lsc_default_scale_resizes_both_maps_and_refuses_mismatched_sizes():
    img = _two_tone(16, 16, 8)
    assert local_saliency_coherence(_step(16, 16, 4), img).item() > 0
    with pytest.raises(ValueError, match="differ"):
        local_saliency_coherence(torch.zeros(1, 1, 8, 8), img)


def test_structure_consistency_zero_for_a_scale_equivariant_prediction():
    # an image constant on 2×2 blocks: halving it (bilinear, no corner alignment) averages each block exactly,
    # and a per-pixel prediction commutes with that, so s(x↓) = s(x)↓ and the loss vanishes
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 4, 4, generator=g).repeat_interleave(2, -1).repeat_interleave(2, -2)

    def predict(img: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(img.sum(1, keepdim=True) - 1.5)

    assert structure_consistency(predict(downscale(x, 0.5)), predict(x)).item() == pytest.approx(0.0, abs=1e-6)

    def not_equivariant(img: torch.Tensor) -> torch.Tensor:  # a fixed high-frequency pattern at every scale
        h, w = img.shape[-2:]
        checker = ((torch.arange(h)[:, None] + torch.arange(w)[None]) % 2).float()
        return (predict(img) + 0.5 * checker).clamp(0, 1)

    assert structure_consistency(not_equivariant(downscale(x, 0.5)), not_equivariant(x)).item() > 0.05


def test_scribble_loss_hand_value_and_unknown_pixels_ignored():
    logits = torch.tensor([[[[2.0, -1.0, 0.5, 3.0]]]])
    target = torch.tensor([[[1, 0, 255, 255]]])
    expected = F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(-1.0))  # fg mean + bg mean
    assert scribble_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    changed = logits.clone()
    changed[..., 2:] = torch.tensor([-7.0, 9.0])  # only the unknown pixels differ
    assert scribble_loss(changed, target).item() == scribble_loss(logits, target).item()
    # balanced: a background scribble 3 times as long weighs as much as the foreground one
    long_bg = torch.tensor([[[[2.0, -1.0, -1.0, -1.0]]]])
    assert scribble_loss(long_bg, torch.tensor([[[1, 0, 0, 0]]])).item() == pytest.approx(expected.item(), rel=1e-6)


def test_total_loss_never_mutates_its_inputs_and_is_repeatable():
    # the official LSC divides the shared image by σ in place, so a second call (or the next side output) sees a
    # different image; here four side outputs and two calls see the same tensors
    g = torch.Generator().manual_seed(2)
    logits = [torch.randn(2, 1, 16, 16, generator=g, requires_grad=True) for _ in range(4)]
    small = torch.randn(2, 1, 5, 5, generator=g, requires_grad=True)
    target = torch.full((2, 16, 16), 255, dtype=torch.long)
    target[:, 2:4, 2:6], target[:, 10:12, 8:14] = 1, 0
    image = torch.randn(2, 3, 16, 16, generator=g)
    before = [t.detach().clone() for t in (*logits, small, target, image)]
    lsc = {"scale": 0.5, "radius": 2}
    first = scwssod_loss(logits, target, image, LossWeights(), small, lsc)
    second = scwssod_loss(logits, target, image, LossWeights(), small, lsc)
    for a, b in zip(before, (*logits, small, target, image), strict=True):
        assert torch.equal(a, b.detach())
    assert all(torch.equal(first[k], second[k]) for k in first)
    # each side output's LSC is the same function of the same image: equal maps give equal terms
    same = [logits[0]] * 4
    parts = scwssod_loss(same, target, image, LossWeights(ssc=0.0), None, lsc)
    one = local_saliency_coherence(torch.sigmoid(logits[0]), image, **lsc)
    assert parts["lsc"].item() == pytest.approx(one.item() * (1 + 0.8 + 0.6 + 0.4), rel=1e-5)
    first["loss"].backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (*logits, small))


def test_loss_weights_switch_terms_off():
    g = torch.Generator().manual_seed(3)
    logits = [torch.randn(1, 1, 8, 8, generator=g) for _ in range(4)]
    target = torch.full((1, 8, 8), 255, dtype=torch.long)
    target[0, 1, 1], target[0, 6, 6] = 1, 0
    image = torch.randn(1, 3, 8, 8, generator=g)
    pce = scwssod_loss(logits, target, image, LossWeights(lsc=0.0, ssc=0.0))
    assert pce["lsc"].item() == 0 and pce["ssc"].item() == 0 and pce["loss"].item() == pytest.approx(pce["pce"].item())
    with pytest.raises(ValueError, match="logits_of_small"):
        scwssod_loss(logits, target, image, LossWeights())


def test_triangle_schedule():
    f = triangle_lr(100, 1e-3)
    assert f(0) == pytest.approx(1e-3) and f(50) == pytest.approx(1.0) and f(100) == pytest.approx(1e-3)
    assert f(25) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)


# ---------------------------------------------------------------------------- network


def test_aggm_shape_finite_and_gradient_reaches_all_inputs():
    torch.manual_seed(0)
    m = AGGM(c_left=5, width=4)
    left = torch.randn(2, 5, 8, 8, requires_grad=True)
    down = torch.randn(2, 4, 4, 4, requires_grad=True)
    right = torch.randn(2, 4, 4, 4, requires_grad=True)
    out = m(left, down, right)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (left, down, right))


def test_network_gives_four_side_outputs_at_the_input_size():
    torch.manual_seed(0)
    net = SCWSSODNet(create_backbone("tiny", output_stride=16, pretrained=False), width=8)
    outs = net(torch.rand(2, 3, 48, 40))
    assert [tuple(o.shape) for o in outs] == [(2, 1, 48, 40)] * 4
    with pytest.raises(ConfigError, match="multi-level"):
        SCWSSODNet(create_backbone("tiny", output_stride=16, pretrained=False).body, width=8)  # not a Backbone


def test_method_registry_and_modes():
    assert create_method("scwssod", "tiny").loss_weights() == LossWeights(lsc=0.3, ssc=1.0)
    assert create_method("sod-pce", "tiny").loss_weights().lsc == 0
    full = create_method("sod-full", "tiny")
    assert full.reads_masks and full.loss_weights().full
    with pytest.raises(ConfigError, match="optimizer"):
        create_method("scwssod", "tiny", ("optimizer=adam",))


# ---------------------------------------------------------------------------- data layouts


def test_objects_union_fills_the_ignore_band_with_the_nearest_label():
    mask = np.array([[0, 255, 255, 2, 1, 0, 0, 255, 255, 255, 0]], np.uint8)  # band pixels: nearest label wins
    assert _union_of_objects(mask)[0].tolist() == [False, False, True, True, True, False, False, False, False, False,
                                                   False]  # fmt: skip
    assert not _union_of_objects(np.full((2, 2), 255, np.uint8)).any()


def _fake_davis(root: Path, frames: int = 6) -> Path:
    for seq in ("aa", "bb"):
        (root / "JPEGImages" / "480p" / seq).mkdir(parents=True)
        (root / "Annotations" / "480p" / seq).mkdir(parents=True)
        for f in range(frames):
            Image.new("RGB", (20, 16), (10 * f, 0, 0)).save(root / "JPEGImages" / "480p" / seq / f"{f:05d}.jpg")
            m = np.zeros((16, 20), np.uint8)
            m[4:12, 5:15] = 255
            Image.fromarray(m).save(root / "Annotations" / "480p" / seq / f"{f:05d}.png")
    return root


def test_davis_temporal_split_is_disjoint_and_scribbles_are_inside_the_object(tmp_path):
    root = _fake_davis(tmp_path / "davis")
    train, val = open_saliency(root, "train"), open_saliency(root, "val")
    assert train.fmt == "davis"
    assert [it.image_id for it in train.items] == [f"{s}_{f:05d}" for s in ("aa", "bb") for f in range(3)]
    assert {it.image_id for it in train.items}.isdisjoint(it.image_id for it in val.items)
    assert len(open_saliency(root, "val", sequences=("bb",), frame_step=2)) == 2
    with pytest.raises(ConfigError, match="valid names: aa, bb"):
        open_saliency(root, "train", sequences=("cc",))
    gt, scr = train.load_gt(0), train.load_scribbles(0)
    assert gt.sum() == 80 and set(np.unique(scr).tolist()) == {0, 1, 255}
    assert gt[scr == 1].all() and not gt[scr == 0].any()  # salient strokes inside, background strokes outside
    assert np.array_equal(scr, train.load_scribbles(0))  # seeded: the same strokes every time


def test_folder_layout_reads_sduts_scribbles_and_refuses_bad_values(tmp_path):
    root = tmp_path / "sod"
    for d in ("images", "scribbles"):
        (root / d).mkdir(parents=True)
    Image.new("RGB", (6, 4)).save(root / "images" / "a.jpg")
    Image.fromarray(np.array([[0, 1, 1, 0, 2, 2]] * 4, np.uint8)).save(root / "scribbles" / "a.png")
    data = open_saliency(root, "all")
    assert data.fmt == "folder" and not data.has_masks
    assert data.load_scribbles(0)[0].tolist() == [255, 1, 1, 255, 0, 0]
    Image.fromarray(np.full((4, 6), 3, np.uint8)).save(root / "scribbles" / "a.png")
    with pytest.raises(DataError, match="a.png"):
        data.load_scribbles(0)
    with pytest.raises(ConfigError, match="fully supervised baseline needs masks"):
        SalientTensors(data, 8, full=True)


def test_weak_training_tensors_hold_scribbles_not_masks(synth_root):
    data = open_saliency(synth_root, "train", "voc", frame_step=8)
    weak, full = SalientTensors(data, 48), SalientTensors(data, 48, full=True)
    assert (weak.targets == 255).float().mean() > 0.5  # mostly unknown
    known = weak.targets != 255
    assert torch.equal(weak.targets[known], full.targets[known])  # every scribble agrees with the ground truth
    assert set(torch.unique(full.targets).tolist()) == {0, 1}


# ---------------------------------------------------------------------------- stages end to end


def test_train_then_predict_saliency_writes_maps_and_metrics(synth_root, tmp_path):
    common = {"data": synth_root, "fmt": "voc", "frame_step": 4, "device": "cpu"}
    cfg = TrainSaliencyConfig(out=tmp_path / "sal", method="scwssod", preset="tiny", backbone="tiny", **common)
    out = train_saliency(cfg)
    assert (out / "model.safetensors").is_file() and (out / "DONE").is_file()
    done = json.loads((out / "DONE").read_text())
    assert 0 < done["labelled_fraction"] < 0.5
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    train_saliency(cfg)  # complete: skipped
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    pred = PredictSaliencyConfig(out=tmp_path / "maps", model_dir=out, split="val", **common)
    metrics = predict_saliency_maps(pred)
    data = open_saliency(synth_root, "val", "voc", frame_step=4)
    for i in range(len(data)):
        sal = np.asarray(Image.open(tmp_path / "maps" / f"{data[i].image_id}.png"))
        assert sal.dtype == np.uint8 and sal.shape == data.load_gt(i).shape
    assert metrics["images"] == len(data) and 0 <= metrics["mae"] <= 1
    assert {"max_fmeasure", "mean_fmeasure", "adaptive_fmeasure", "smeasure"} <= metrics.keys()
    with pytest.raises(ConfigError, match="not a saliency method"):
        train_saliency(TrainSaliencyConfig(out=tmp_path / "x", method="cam", preset="tiny", **common))


def test_run_task_saliency_trains_and_scores_val(synth_root, tmp_path):
    from weakseg.pipeline import RunConfig, run
    from weakseg.stages.train_saliency import TrainSaliencyOptions

    opts = TrainSaliencyOptions(preset="tiny", backbone="tiny", frame_step=8)
    summary = run(RunConfig(out=tmp_path / "run", data=synth_root, task="saliency", method="sod-pce", saliency=opts,
                            device="cpu"))  # fmt: skip
    assert summary["saliency"]["split"] == "val" and 0 <= summary["saliency"]["mae"] <= 1
    n_val = len(open_saliency(synth_root, "val", "voc", frame_step=8))  # the train options' frame step carries over
    assert summary["saliency"]["images"] == n_val
    assert len(list((tmp_path / "run" / "eval" / "saliency").glob("*.png"))) == n_val
