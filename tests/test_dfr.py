"""DFR (issue #15): kernels on hand tensors, the regularized loss on step edges, static vs dynamic deep features,
partial CE on partial labels, the FCH pair loss, the weak-label stage and the scribble task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from weakseg.data.palette import read_mask_png
from weakseg.data.voc import VOCDataset
from weakseg.engine.dense import DenseTrainConfig
from weakseg.errors import ConfigError, DataError
from weakseg.losses.dense import partial_cross_entropy
from weakseg.losses.pairwise import gaussian_kernel, potts_loss
from weakseg.losses.regularized import (
    dfr_kernel,
    downsample_labels,
    pairwise_feature_loss,
    regularized_loss,
    window_kernel,
    window_potts_loss,
)
from weakseg.methods import create_method
from weakseg.methods.dfr import DFRConfig, DFRNet, dfr_losses
from weakseg.pipeline import RunConfig, run
from weakseg.seg.models import create_segmenter
from weakseg.stages.eval_seg import EvalSegOptions
from weakseg.stages.scribble_labels import WeakLabelsConfig, make_weak_labels
from weakseg.stages.train_scribble import ScribbleMethodOptions
from weakseg.stages.train_seg import TrainSegOptions
from weakseg.tasks import PLANNED, TASKS, get_task

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- kernels on hand tensors


def test_window_kernel_by_hand():
    """1x1x1x3 image [0, 0.3, 1], radius 1, σ_xy 2, σ 0.5: K between pixels 0 and 1 is exp(-½(1/4 + 0.09/0.25))."""
    image = torch.tensor([[[[0.0, 0.3, 1.0]]]])
    k = window_kernel([(image, 0.5)], radius=1, xy_sigma=2.0)  # [1, 9, 1, 3], offsets in raster order
    right, left, centre = 5, 3, 4  # (dy, dx) = (0, +1), (0, -1), (0, 0)
    assert k[0, right, 0, 0].item() == pytest.approx(math.exp(-0.5 * (1 / 4 + 0.09 / 0.25)), rel=1e-6)
    assert k[0, left, 0, 1].item() == pytest.approx(k[0, right, 0, 0].item(), rel=1e-6)  # symmetric
    assert k[0, right, 0, 1].item() == pytest.approx(math.exp(-0.5 * (1 / 4 + 0.49 / 0.25)), rel=1e-6)
    assert k[0, left, 0, 0].item() == 0  # outside the image
    assert k[0, centre].abs().sum().item() == 0  # zero centre
    assert k[0, :3].abs().sum().item() == 0 and k[0, 6:].abs().sum().item() == 0  # rows above/below: outside


def test_window_kernel_and_potts_equal_the_unfold_versions():
    g = torch.Generator().manual_seed(0)
    f, d = torch.rand(2, 3, 9, 7, generator=g), torch.rand(2, 5, 9, 7, generator=g)
    ref = gaussian_kernel([(f, 0.3), (d, 0.5)], radius=2, xy_sigma=2.0)
    k = window_kernel([(f, 0.3), (d, 0.5)], radius=2, xy_sigma=2.0)
    assert torch.allclose(k, ref, atol=1e-7)
    probs = torch.rand(2, 4, 9, 7, generator=g).softmax(1)
    valid = (torch.rand(2, 1, 9, 7, generator=g) > 0.3).float()
    assert window_potts_loss(probs, k).item() == pytest.approx(potts_loss(probs, ref).item(), rel=1e-5)
    assert window_potts_loss(probs, k, valid).item() == pytest.approx(potts_loss(probs, ref, valid, valid).item(),
                                                                      rel=1e-5)  # fmt: skip


def test_window_potts_gradcheck():
    g = torch.Generator().manual_seed(1)
    k = window_kernel([(torch.rand(1, 3, 5, 5, generator=g, dtype=torch.float64), 0.4)], radius=1, xy_sigma=1.5)
    probs = torch.rand(1, 2, 5, 5, generator=g, dtype=torch.float64).softmax(1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: window_potts_loss(p, k), (probs,))


def _step(split: int, size: int = 32) -> torch.Tensor:
    fg = torch.zeros(1, 1, size, size)
    fg[..., split:] = 1
    return torch.cat([1 - fg, fg], 1)


def test_regularized_loss_zero_when_aligned_with_the_image_edge_and_grows_with_the_shift():
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 1
    image = image + 0.02 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    k = dfr_kernel(image, None, "shallow", radius=5, xy_sigma=6.0, rgb_sigma=0.1)
    energies = [regularized_loss(_step(s), k).item() for s in (16, 18, 20, 24)]
    assert energies[0] < 1e-6
    # the method notes' independent numpy measurement of this setting: 0 / 3.79 / 5.70 / 6.08
    assert energies[1:] == pytest.approx([3.79, 5.70, 6.08], rel=0.03)
    # an uncertain prediction costs more than a confident one aligned with the edge
    assert regularized_loss(torch.full((1, 2, 32, 32), 0.5), k).item() > energies[-1]


def test_camouflage_deep_features_find_the_boundary_colour_cannot():
    """Object and background of the same colour, deep features = one-hot ground truth (column 16)."""
    image = torch.full((1, 3, 32, 32), 0.5)
    deep = _step(16)
    shallow = dfr_kernel(image, deep, "shallow", radius=5, xy_sigma=6.0, rgb_sigma=0.1)
    e_true, e_shift = regularized_loss(_step(16), shallow).item(), regularized_loss(_step(20), shallow).item()
    assert e_true == pytest.approx(e_shift, rel=1e-5) and e_true > 1  # colour alone cannot prefer the true cut
    for mode in ("deep", "both"):
        k = dfr_kernel(image, deep, mode, radius=5, xy_sigma=6.0, rgb_sigma=0.1, deep_sigma=0.5)
        # across the true cut the deep term leaves exp(-½·2/0.25) = 0.018 of the weight: 0.12 vs > 3
        assert regularized_loss(_step(16), k).item() < 0.05 * regularized_loss(_step(20), k).item()
    summed = dfr_kernel(image, deep, "both", radius=5, xy_sigma=6.0, rgb_sigma=0.1, deep_sigma=0.5, combine="sum")
    assert regularized_loss(_step(16), summed).item() < regularized_loss(_step(20), summed).item()


def test_kernel_modes_validated():
    image = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="valid: shallow, deep, both"):
        dfr_kernel(image, None, "rgb")
    with pytest.raises(ValueError, match="needs deep features"):
        dfr_kernel(image, None, "deep")
    with pytest.raises(ConfigError, match="valid"):
        create_method("dfr", "cpu", ("kernel=colour",))


# ---------------------------------------------------------------------------- partial labels, FCH pair loss


def test_partial_ce_ignores_unknown_pixels():
    target = torch.full((1, 4, 4), 255)
    target[0, 0, :2] = torch.tensor([0, 2])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 4, 4, generator=g)
    other = logits.clone()
    other[..., 1:, :] = torch.randn(1, 3, 3, 4, generator=g) * 10  # only unlabelled pixels change
    assert partial_cross_entropy(other, target).item() == pytest.approx(partial_cross_entropy(logits, target).item())
    perfect = torch.full((1, 3, 4, 4), -20.0)
    perfect[0, 0, 0, 0] = perfect[0, 2, 0, 1] = 20.0
    assert partial_cross_entropy(perfect, target).item() < 1e-6
    # by hand: uniform logits, two labelled pixels -> log 3
    assert partial_cross_entropy(torch.zeros(1, 3, 4, 4), target).item() == pytest.approx(math.log(3))
    assert partial_cross_entropy(logits, torch.full((1, 4, 4), 255)).item() == 0


def test_downsample_labels_keeps_thin_scribbles_and_drops_conflicts():
    target = torch.full((1, 8, 8), 255)
    target[0, 5, :] = 3  # a 1-px stroke: nearest sampling at stride 4 (rows 0, 4) would drop it
    target[0, 0, 0], target[0, 1, 1] = 1, 2  # two labels in one cell -> unknown
    out = downsample_labels(target, (2, 2))
    assert out.tolist() == [[[255, 255], [3, 3]]]


def test_pairwise_feature_loss_by_hand_and_it_decreases():
    labels = torch.tensor([[[0, 0, 1, 1]]])  # [1, 1, 4]
    good = torch.tensor([[1.0, 1.0, -1.0, -1.0]]).view(1, 1, 1, 4)  # 1-D features: same label = same sign
    assert pairwise_feature_loss(good, labels).item() < 1e-4
    bad = torch.tensor([[1.0, -1.0, 1.0, -1.0]]).view(1, 1, 1, 4)
    assert pairwise_feature_loss(bad, labels).item() > 5
    assert pairwise_feature_loss(good, torch.full((1, 1, 4), 255)).item() == 0  # nothing labelled
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 4, 4, 4, generator=g, requires_grad=True)
    lab = torch.randint(0, 3, (1, 4, 4), generator=g)
    opt = torch.optim.Adam([feats], lr=0.1)
    first = None
    for _ in range(40):
        loss = pairwise_feature_loss(feats, lab)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    f = torch.nn.functional.normalize(feats.detach(), dim=1)[0].flatten(1)
    cos, same = f.t() @ f, lab.flatten()[:, None] == lab.flatten()[None, :]
    off = ~torch.eye(16, dtype=torch.bool)
    assert loss.item() < 0.25 * first
    assert cos[same & off].mean() > cos[~same].mean() + 0.5


# ---------------------------------------------------------------------------- the network: static vs dynamic


def _net(static: bool) -> DFRNet:
    torch.manual_seed(0)
    return DFRNet(create_segmenter("tiny", 3), "tiny", fch_dim=4, fch_hidden=4, static=static)


def test_static_and_dynamic_features_really_differ_after_training():
    x = torch.rand(2, 3, 32, 32)
    dyn, sta = _net(False), _net(True)
    dyn.eval(), sta.eval()
    logits, feats0 = sta(x)
    assert logits.shape == (2, 3, 32, 32) and feats0.shape == (2, 4, 4, 4)
    assert torch.allclose(sta.kernel_features(x, feats0), feats0)  # before training: the same network
    with torch.no_grad():  # "training": move every weight
        for net in (dyn, sta):
            for p in net.parameters():
                p.add_(0.3 * torch.randn_like(p))
    _, feats_dyn = dyn(x)
    _, feats_sta = sta(x)
    assert torch.allclose(dyn.kernel_features(x, feats_dyn), feats_dyn)
    static = sta.kernel_features(x, feats_sta)
    assert torch.allclose(static, feats0)  # still the initial network's
    assert not torch.allclose(static, feats_sta, atol=1e-3)
    assert not static.requires_grad and not dyn.kernel_features(x, feats_dyn).requires_grad
    assert len(list(sta.parameters())) == len(list(dyn.parameters()))  # the frozen twin is neither saved nor trained
    assert set(sta.state_dict()) == set(dyn.state_dict())


def test_dfr_losses_deep_features_change_the_loss_but_get_no_gradient():
    g = torch.Generator().manual_seed(0)
    cfg = DFRConfig(radius=2, xy_sigma=2.0, loss_scale=1.0, fch_weight=0.0)
    images = torch.rand(1, 3, 8, 8, generator=g)
    logits = torch.randn(1, 3, 8, 8, generator=g, requires_grad=True)
    target = torch.full((1, 8, 8), 255)
    target[0, 1, 1:4] = 1
    f1 = torch.nn.functional.normalize(torch.randn(1, 4, 8, 8, generator=g), dim=1).requires_grad_(True)
    f2 = torch.nn.functional.normalize(torch.randn(1, 4, 8, 8, generator=g), dim=1)
    a = dfr_losses(cfg, logits, f1, f1, images, target)
    b = dfr_losses(cfg, logits, f1, f2, images, target)
    assert a["reg"].item() != pytest.approx(b["reg"].item(), rel=1e-3)
    a["loss"].backward()
    assert f1.grad is None and logits.grad is not None  # the kernel is detached; the softmax is trained
    shallow = dfr_losses(DFRConfig(kernel="shallow", radius=2, xy_sigma=2.0, loss_scale=1.0), logits, f1, None,
                         images, target)  # fmt: skip
    assert shallow["reg"].item() > 0
    pce = dfr_losses(create_method("dfr", "pce").cfg, logits, f1, f1, images, target)
    assert pce["loss"].item() == pytest.approx(pce["pce"].item()) and pce["reg"].item() == 0


def test_method_step_trains_the_segmenter_and_the_fch():
    method = create_method("dfr", "tiny")
    torch.manual_seed(0)
    net = method.wrap(create_segmenter("tiny", 3), "tiny")
    images = torch.rand(2, 3, 32, 32)
    target = torch.full((2, 32, 32), 255)
    target[:, 4:7, 2:30] = 0
    target[:, 20:23, 2:30] = 2
    losses = method.step(net, (images, target), epoch=0)
    assert set(losses) == {"loss", "pce", "reg", "fch"} and all(torch.isfinite(v) for v in losses.values())
    assert losses["reg"].item() > 0 and losses["fch"].item() > 0
    losses["loss"].backward()
    assert net.fch[0].weight.grad is not None and net.fch[0].weight.grad.abs().sum() > 0
    assert method.export(net) is net.seg
    # fch_detach: the pair loss trains the FCH only
    detached = create_method("dfr", "tiny", ("fch_detach=true", "reg_weight=0"))
    torch.manual_seed(0)
    net = detached.wrap(create_segmenter("tiny", 3), "tiny")
    losses = detached.step(net, (images, torch.full_like(target, 255)), epoch=0)  # no labels: pCE 0
    fch_only = detached.step(net, (images, target), epoch=0)["fch"]
    fch_only.backward()
    assert losses["pce"].item() == 0 and net.fch[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.seg.parameters())


# ---------------------------------------------------------------------------- weak labels stage, task


def test_weak_label_stage_simulates_under_the_budget(synth_root, tmp_path):
    cfg = WeakLabelsConfig(data=synth_root, out=tmp_path / "weak", budget=0.03, device="cpu")
    m = make_weak_labels(cfg)
    ds = VOCDataset(synth_root, "train")
    assert m["source"] == "simulate" and m["agreement_with_masks"] == 1.0
    assert 0.005 < m["labelled_fraction"] <= 0.031
    label = read_mask_png(tmp_path / "weak" / f"{ds[0].image_id}.png")
    assert set(np.unique(label).tolist()) - {255} <= set(range(ds.num_classes + 1))
    again = make_weak_labels(cfg)  # complete: skipped, same metrics
    assert again == m
    points = make_weak_labels(WeakLabelsConfig(data=synth_root, out=tmp_path / "pts", kind="points", device="cpu"))
    assert points["labelled_fraction"] < m["labelled_fraction"] and points["agreement_with_masks"] == 1.0


def test_weak_label_stage_refuses_a_dataset_without_scribbles(synth_root, tmp_path):
    with pytest.raises(DataError, match="--weak.source simulate"):
        make_weak_labels(WeakLabelsConfig(data=synth_root, out=tmp_path / "w", source="dataset", device="cpu"))


def test_scribble_task_registered():
    assert "scribble" in TASKS and "scribble" not in PLANNED
    assert [s.name for s in get_task("scribble").stages] == ["weak", "seg", "eval-seg"]


@pytest.mark.slow
def test_scribble_task_runs_end_to_end(tmp_path):
    cfg = RunConfig(
        out=tmp_path / "run",
        synth_preset="tiny",
        task="scribble",
        method="dfr",
        device="cpu",
        seg=TrainSegOptions(arch="tiny", train=DenseTrainConfig(epochs=1), crop=64),
        scribble=ScribbleMethodOptions(preset="tiny"),
        eval_seg=EvalSegOptions(scales=(1.0,), flip=False),
    )
    summary = run(cfg)
    assert summary["weak"]["source"] == "simulate" and 0 <= summary["segmenter"]["miou"] <= 1
    assert (tmp_path / "run" / "seg" / "fch.safetensors").is_file()
