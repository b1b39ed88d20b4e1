"""WeCLIP (weakseg.methods.weclip, weakseg.cams.weclip, weakseg.losses.weclip) on tiny tensors and a tiny random
CLIP: shapes on non-square inputs, frozen CLIP, RFM filter, affinity loss, the RFM switch by optimiser steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from weakseg.cams.cam import make_views
from weakseg.cams.weclip import background_scores, rfm_active, rfm_affinity, rfm_filter, scores_to_label, transition
from weakseg.losses.weclip import affinity_loss, balanced_ce, label_affinity, radius_mask
from weakseg.methods import create_method
from weakseg.methods.base import LoaderContext
from weakseg.methods.weclip import LayerFusion, WeCLIPNet, WeCLIPPredictor, feature_affinity, online_label
from weakseg.stages.make_cams import MakeCamsConfig, make_cams
from weakseg.stages.train_cls import TrainClsConfig, train_cls

pytestmark = pytest.mark.usefixtures("one_thread")

K = 3  # classes of the hand-made tests


def tiny(*overrides: str):
    return create_method("weclip", "tiny", overrides)


# ---------------------------------------------------------------------------- RFM and label math


def test_rfm_filter_uses_the_signed_sum_by_hand():
    dec = torch.full((2, 2), 0.5)  # Σ = 2
    maps = torch.stack([
        torch.ones(2, 2),  # d = 2 - 4 = -2: kept
        torch.zeros(2, 2),  # d = 2: dropped
        torch.full((2, 2), 0.5),  # d = 0: kept
        torch.tensor([[1.5, -0.5], [-0.5, 1.5]]),  # d = 0 (|d| would be 4 and drop it): kept
    ])  # fmt: skip
    assert rfm_filter(maps, dec).tolist() == [True, False, True, True]  # mean d = 0
    expected = (maps[0] + maps[2] + maps[3]) / 3 * dec
    assert torch.allclose(rfm_affinity(maps, dec), expected)


def test_rfm_filter_keeps_the_maps_equal_to_the_decoder_when_the_others_carry_less_mass():
    g = torch.Generator().manual_seed(0)
    dec = torch.rand(5, 5, generator=g) + 0.5
    others = [torch.rand(5, 5, generator=g) * 0.5 for _ in range(3)]  # Σ smaller than dec's: d > 0
    maps = torch.stack([dec, others[0], dec, others[1], dec, others[2]])
    assert rfm_filter(maps, dec).tolist() == [True, False, True, False, True, False]


def test_transition_is_symmetric_and_row_stochastic_before_the_power():
    a = torch.rand(6, 6) + 0.1
    t = transition(a, iters=20, power=1)
    assert torch.allclose(t, t.T)
    assert torch.allclose(t.sum(1), torch.ones(6), atol=1e-3)


def test_rfm_switch_counts_optimiser_steps():
    assert not rfm_active(14999, 15000) and rfm_active(15000, 15000) and rfm_active(20000, 15000)
    assert not rfm_active(10**9, -1)


def test_background_scores_and_label_ids():
    cams = torch.tensor([[[0.9, 0.1]], [[0.2, 0.3]]])  # K=2 maps of a 1x2 image
    scores = background_scores(cams)
    assert torch.allclose(scores[0], torch.tensor([[0.1, 0.7]]))
    assert scores_to_label(scores, [4, 7]).tolist() == [[5, 0]]  # class 4 → id 5; background 0
    assert background_scores(cams[:0]).shape == (1, 1, 2) and bool((background_scores(cams[:0]) == 1).all())


# ---------------------------------------------------------------------------- losses


def test_radius_mask_band():
    m = radius_mask(3, 4, 1)
    assert m.shape == (12, 12) and torch.equal(m, m.T) and bool(m.diagonal().all())
    assert m[0].nonzero().flatten().tolist() == [0, 1, 4, 5]  # (0,0): itself, (0,1), (1,0), (1,1)
    assert not m[0, 2] and not m[0, 8]


def test_affinity_loss_is_zero_at_the_label_affinity():
    labels = torch.tensor([[[0, 1, 1], [0, 255, 2]]])
    target, valid = label_affinity(labels, radius=8)
    assert target.shape == (1, 6, 6) and torch.equal(target, target.transpose(1, 2))
    assert torch.equal(valid, valid.transpose(1, 2)) and not bool(valid[0, 4].any())  # the ignored token
    assert affinity_loss(target, target, valid).item() == 0.0
    wrong = 1 - target
    assert affinity_loss(wrong, target, valid).item() > 0.9  # everything wrong: close to 0.5 + 0.5
    ignored = target.clone()
    ignored[0, 4] = 1 - ignored[0, 4]  # only pairs of the ignored token differ
    assert affinity_loss(ignored, target, valid).item() == 0.0


def test_balanced_ce_by_hand_and_without_nan():
    logits = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 1], [2, 255]]])
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")[0]
    expected = 0.5 * ce[0, 0] + 0.5 * (ce[0, 1] + ce[1, 0]) / 2
    assert torch.allclose(balanced_ce(logits, target), expected)
    assert balanced_ce(logits, torch.full((1, 2, 2), 255)).item() == 0.0
    only_fg = torch.ones(1, 2, 2, dtype=torch.long)
    assert torch.allclose(balanced_ce(logits, only_fg), 0.5 * F.cross_entropy(logits, only_fg))


# ---------------------------------------------------------------------------- network shapes (non-square)


def test_fusion_and_affinity_shapes():
    tokens = [torch.randn(2, 1 + 3 * 5, 8) for _ in range(3)]
    feats = LayerFusion(8, 3, 6).eval()(tokens, (3, 5))
    assert feats.shape == (2, 6, 3, 5)
    aff = feature_affinity(feats)
    assert aff.shape == (2, 15, 15) and bool(((aff >= 0) & (aff <= 1)).all())
    assert torch.allclose(aff, aff.transpose(1, 2))


def test_forward_shapes_on_a_non_square_input():
    method = tiny()
    net = method.build(None, K).eval()
    out = net(torch.rand(2, 3, 32, 48))
    h, w = 4, 6  # patch 8
    assert out.grid == (h, w)
    assert out.logits.shape == (2, K + 1, h, w)
    assert out.aff.shape == (2, h * w, h * w)
    assert out.attn.shape == (2, 2, 1 + h * w, 1 + h * w)  # tiny: 2 last blocks' attention
    assert out.last_in.shape == (2, 1 + h * w, net.visual.width)
    assert len(net.fusion.mlps) == net.visual.num_layers - 1  # all blocks but the last are fused


@pytest.mark.parametrize("use_rfm", [False, True])
def test_online_label_uses_only_the_image_labels(use_rfm):
    method = tiny()
    method.class_names = ("a", "b", "c")
    net = method.build(None, K).eval()
    image = torch.rand(1, 3, 32, 48)
    out = net(image)
    text, scale, k = method.text(net, torch.device("cpu"))
    rows = list(range(k, text.shape[0]))
    dec = out.aff[0] if use_rfm else None
    label = online_label(net.visual, image[0], out.last_in, out.attn[0], dec, [0, 2], text, scale, rows, out.grid,
                         method.cfg)  # fmt: skip
    assert label.shape == (32, 48) and set(label.unique().tolist()) <= {0, 1, 3}
    empty = online_label(net.visual, image[0], out.last_in, out.attn[0], dec, [], text, scale, rows, out.grid,
                         method.cfg)  # fmt: skip
    assert not bool(empty.any())


# ---------------------------------------------------------------------------- training


def _batch(n=4, h=32, w=48):
    g = torch.Generator().manual_seed(1)
    labels = torch.zeros(n, K)
    labels[0, 1] = labels[1, 0] = labels[1, 2] = labels[3, 1] = 1  # image 2 has no class
    return {"image": torch.rand(n, 3, h, w, generator=g), "label": labels}


def test_training_leaves_the_frozen_clip_unchanged_and_counts_optimiser_steps():
    torch.manual_seed(0)
    method = tiny("rfm_start_step=2")
    method.class_names = ("a", "b", "c")
    net = method.build(None, K)
    clip_before = {k: v.clone() for k, v in net.clip_model.state_dict().items()}
    assert not any(k.startswith(("clip", "_frozen", "visual")) for k in net.state_dict())  # only the trained parts
    dec_before = [p.detach().clone() for p in net.decoder.parameters()]
    opt = method.optimizer(net)
    batch = _batch()
    rfm = []
    for _ in range(3):
        losses = method.step(net.train(), batch, 0)
        rfm.append(float(losses["rfm"]))
        opt.zero_grad()
        losses["loss"].backward()
        assert all(p.grad is None for p in net.clip_model.parameters())
        opt.step()
        with torch.no_grad():  # a validation forward in between moves no counter
            net.eval()(batch["image"][:1])
    assert rfm == [0.0, 0.0, 1.0]
    assert int(net.opt_steps) == 3 and int(net.state_dict()["opt_steps"]) == 3
    assert all(torch.equal(v, net.clip_model.state_dict()[k]) for k, v in clip_before.items())
    assert any(not torch.equal(a, p) for a, p in zip(dec_before, net.decoder.parameters(), strict=True))


def test_pseudo_labels_come_from_image_labels_not_masks():
    method = tiny()
    method.class_names = ("a", "b", "c")
    net = method.build(None, K).eval()
    batch = _batch()
    with torch.no_grad():
        out = net(batch["image"])
    pseudo = method.pseudo_labels(net, batch["image"], batch["label"], out, use_rfm=False)
    assert pseudo.shape == (4, 32, 48)
    for b in range(4):
        allowed = {0} | {c + 1 for c in torch.nonzero(batch["label"][b]).flatten().tolist()}
        assert set(pseudo[b].unique().tolist()) <= allowed
    assert not bool(pseudo[2].any())


def test_paper_preset_recipe_and_schedule():
    c = create_method("weclip", "paper").cfg
    assert (c.lr, c.decoder_lr_mult, c.weight_decay, c.iterations, c.batch_size, c.input_size) == (
        2e-4, 10.0, 0.01, 30000, 4, 320)  # fmt: skip
    assert (c.rfm_start_step, c.rfm_layers, c.attn_layers, c.aff_weight, c.par_iters) == (15000, 6, 8, 0.1, 20)
    f = create_method("weclip", "paper").lr_factor(2646)
    assert f(0) == pytest.approx(1e-6) and f(50) == pytest.approx(1 - 50 / 30000) and f(30000) == 0.0


def test_predictor_multiscale_flip_on_a_non_square_image(synth_dataset):
    method = create_method("weclip", "tiny", ("input_size=48",))
    net = method.build(None, len(synth_dataset.class_names)).eval()
    pred = method.cam_predictor(net, synth_dataset, make_views((1.0, 0.75), True), torch.device("cpu"), 0)
    assert isinstance(pred, WeCLIPPredictor)
    i = next(k for k, r in enumerate(synth_dataset.records) if len(r.labels) >= 1)
    classes = list(synth_dataset[i].labels)
    maps = pred(i, classes)
    h, w = synth_dataset.load_image(i).shape[:2]
    assert maps.shape == (len(classes), h, w)
    assert float(maps.min()) >= 0 and float(maps.sum(0).max()) <= 1 + 1e-5  # probabilities, background left out


def test_train_cls_then_make_cams(synth_root, tmp_path):
    cls = train_cls(TrainClsConfig(data=synth_root, out=tmp_path / "cls", method="weclip", preset="tiny",
                                   backbone="tiny", device="cpu"))  # fmt: skip
    meta = json.loads((cls / "config.json").read_text())
    assert meta["record"]["clip"]["random_toy"]
    weights = load_file(cls / "model.safetensors")
    assert not any(k.startswith("clip") for k in weights)  # the frozen CLIP is not copied into the cls folder
    assert int(weights["opt_steps"]) == 10  # 40 train images, batch 4, 1 epoch: the RFM counter is saved
    cams = make_cams(MakeCamsConfig(cls_dir=cls, data=synth_root, out=tmp_path / "cams", scales=(1.0,), flip=True,
                                    device="cpu"))  # fmt: skip
    files = sorted(cams.glob("*.npz"))
    assert files and (cams / "DONE").is_file()
    with np.load(files[0]) as z:
        assert z["cams"].ndim == 3 and float(z["cams"].max()) <= 1.0


def test_loader_batches_feed_the_step(synth_dataset):
    method = tiny()
    make_loader, steps = method.loader(synth_dataset, LoaderContext(seed=0))
    net = method.build(None, len(synth_dataset.class_names))
    losses = method.step(net.train(), next(iter(make_loader(0))), 0)
    assert torch.isfinite(losses["loss"]) and set(losses) == {"loss", "seg", "aff", "rfm"}
    assert isinstance(net, WeCLIPNet)
