"""MCIS as its official code does it: test-time fusion modes, contrastive rows, partners drawn with the image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weakseg.backbones import create_backbone
from weakseg.cams.cam import View, make_views
from weakseg.cams.coattention import co_attention
from weakseg.cams.mcis_fusion import finish_official, kept, official_fusion, to_base_grid
from weakseg.config import apply_overrides
from weakseg.data.pairs import class_index, sample_partners
from weakseg.errors import ConfigError
from weakseg.methods import create_method
from weakseg.methods.cam import CamNet
from weakseg.methods.mcis import (
    OFFICIAL_COPIES,
    PRESETS,
    TEST_FUSIONS,
    MCISNet,
    MCISPredictor,
    mcis_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- pure fusion functions


def test_official_fusion_by_hand():
    """Five 2×2 maps of two classes; σ(mean) > 0.1 ⇔ mean > ln(1/9) ≈ -2.197."""
    t = torch.tensor
    a = t([[[2.0, -1.0], [0.0, 1.0]], [[-10.0, -10.0], [-10.0, 2.0]]])  # class 1: mean -7, kept anyway (A)
    b = t([[[-4.0, -4.0], [-4.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]])  # means -2 (kept), 1 (kept)
    c = t([[[-5.0, -5.0], [-5.0, -5.0]], [[-2.5, -2.5], [-2.5, 5.0]]])  # -5 (dropped), -0.625 (kept)
    d = t([[[-3.0, 1.0], [-3.0, -3.0]], [[-4.0, -4.0], [-4.0, 1.0]]])  # -2 (kept), -2.75 (dropped)
    p = t([[[-10.0, 3.0], [-10.0, -10.0]], [[0.0, 0.0], [0.0, 0.0]]])  # -6.75 (dropped), 0 (kept, all zero)
    assert kept(b).tolist() == [True, True] and kept(c).tolist() == [False, True]
    assert kept(d).tolist() == [True, False] and kept(p).tolist() == [False, True]
    expected = t(
        [
            # A [[1, 0], [0, .5]] + B [[0, 0], [0, 1]] + D [[0, 1], [0, 0]], over 5
            [[1.0 / 5, 1.0 / 5], [0.0, 1.5 / 5]],
            # A [[0, 0], [0, 1]] + B all ones + C [[0, 0], [0, 1]] + P zeros, over 5
            [[1.0 / 5, 1.0 / 5], [1.0 / 5, 3.0 / 5]],
        ]
    )
    torch.testing.assert_close(official_fusion([a, b, c, d, p]), expected)


def test_official_fusion_divides_by_all_maps_even_when_dropped():
    a = torch.tensor([[[0.0, 4.0], [2.0, 0.0]]])
    dropped = torch.full((1, 2, 2), -9.0)
    torch.testing.assert_close(official_fusion([a, dropped, dropped]), torch.tensor([[[0.0, 1 / 3], [1 / 6, 0.0]]]))
    with pytest.raises(ValueError):
        official_fusion([])


def test_to_base_grid_and_finish():
    m = torch.arange(6.0).view(1, 2, 3)
    assert torch.equal(to_base_grid(m, True, (2, 3)), m.flip(-1))
    assert torch.equal(to_base_grid(m, False, (2, 3)), m)
    up = to_base_grid(m, False, (4, 6))
    torch.testing.assert_close(up, F.interpolate(m[None], (4, 6), mode="bicubic", align_corners=False)[0])
    out = finish_official(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), (5, 5))
    assert out.shape == (1, 5, 5) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert finish_official(torch.zeros(0, 2, 2), (3, 4)).shape == (0, 3, 4)


# ---------------------------------------------------------------------------- network and predictor


def _tiny_net(preset: str = "tiny", overrides: tuple[str, ...] = ()) -> tuple[MCISNet, object]:
    torch.manual_seed(0)
    cfg = apply_overrides(PRESETS[preset], overrides)
    return MCISNet(create_backbone("tiny", None, cfg.output_stride, pretrained=False), 10, cfg).eval(), cfg


def test_official_maps_match_the_pairs_computed_directly():
    net, _ = _tiny_net()
    torch.manual_seed(1)
    d = net.dim
    base, flip = torch.randn(1, d, 4, 4), torch.randn(1, d, 4, 4)
    small, large = torch.randn(1, d, 3, 3), torch.randn(1, d, 8, 8)
    partners = torch.randn(2, d, 4, 4)
    classes, rows = [2, 0], {2: [0, 0, 1], 0: [1]}
    copies = [(View(1.0, True), flip), (View(0.75), small), (View(2.0), large)]
    maps = net.official_maps(base, copies, classes, partners, rows)
    assert len(maps) == 5 and all(m.shape == (2, 4, 4) for m in maps)
    w, cc = net.coatt.weight, net.co_classifier
    with torch.no_grad():
        x_co, flip_co = co_attention(base, flip, w)
        torch.testing.assert_close(maps[0], cc(x_co)[0, classes])  # A: the image in (x, flip x)
        torch.testing.assert_close(maps[1], cc(flip_co)[0, classes].flip(-1))  # B: the copy's, flipped back
        for k, f in ((2, small), (3, large)):  # C, D: the copies' maps, bicubic to the base grid
            copy_map = cc(co_attention(base, f, w)[1])[:, classes]
            torch.testing.assert_close(maps[k], F.interpolate(copy_map, (4, 4), mode="bicubic")[0])
        per = [cc(co_attention(base, partners[j : j + 1], w)[0])[0] for j in range(2)]
        torch.testing.assert_close(maps[4][0], (2 * per[0][2] + per[1][2]) / 3)  # P: raw maps averaged
        torch.testing.assert_close(maps[4][1], per[1][0])
    assert len(net.official_maps(base, copies, classes)) == 4  # no partners: no P


def test_official_predictor_uses_its_own_views_and_partners_with_the_image(synth_dataset):
    net, cfg = _tiny_net("tiny", ("test_fusion=official", "test_partners=2", "input_size=48"))
    i = next(k for k, r in enumerate(synth_dataset.records) if len(r.labels) >= 2)
    classes = sorted(synth_dataset[i].labels)
    dev = torch.device("cpu")
    p1 = MCISPredictor(net, synth_dataset, make_views((1.0,), False), cfg, dev, seed=3)
    p2 = MCISPredictor(net, synth_dataset, make_views((1.0, 0.5, 1.5), True), cfg, dev, seed=3)
    cams = p1(i, classes)
    h, w = synth_dataset.load_image(i).shape[:2]
    assert cams.shape == (len(classes), h, w) and float(cams.min()) >= 0 and float(cams.max()) <= 1
    assert torch.equal(cams, p2(i, classes))  # make-cams' views are not used
    # the same computed by hand: official views, partners drawn with the image allowed
    views = [View(1.0), *OFFICIAL_COPIES]
    labels = [r.labels for r in synth_dataset.records]
    drawn = sample_partners(labels, class_index(labels, 10), i, 2, 3, include_self=True)

    def feats(j):
        return net.view_features(p1.image(j), views, 48)

    f = feats(i)
    base = f[1.0][:1]
    copies = [(View(1.0, True), f[1.0][1:2]), (View(0.75), f[0.75]), (View(2.0), f[2.0])]
    unique = sorted({j for js in drawn.values() for j in js})
    partner_feats = torch.cat([feats(j)[1.0][:1] for j in unique])
    rows = {c: [unique.index(j) for j in js] for c, js in drawn.items()}
    expected = finish_official(official_fusion(net.official_maps(base, copies, classes, partner_feats, rows)), (h, w))
    torch.testing.assert_close(cams, expected)


def test_default_cpu192_predictor_is_the_plain_cam_prediction(synth_dataset):
    """cpu192 (test_partners=0, no self-pairs, weakseg fusion): bit-identical to CamNet.predict_cams."""
    net, cfg = _tiny_net("cpu192", ("input_size=48", "frozen_stages=0"))  # the tiny backbone has no stages
    assert cfg.test_fusion == "weakseg" and cfg.test_partners == 0 and not cfg.test_self_pairs
    views = make_views((1.0, 0.5, 1.5), True)
    predictor = MCISPredictor(net, synth_dataset, views, cfg, torch.device("cpu"), seed=0)
    for i in [k for k, r in enumerate(synth_dataset.records) if r.labels][:3]:
        classes = list(synth_dataset[i].labels)
        image = predictor.image(i)
        plain = CamNet.predict_cams(net, image, classes, views, 48, tuple(image.shape[-2:]))
        assert torch.equal(predictor(i, classes), plain)


def test_fusion_and_rows_options_are_checked():
    with pytest.raises(ConfigError, match="test_fusion.*valid names: official, weakseg"):
        create_method("mcis", "tiny", ("test_fusion=paper",))
    with pytest.raises(ConfigError, match="contrastive_rows.*valid names: all, nonempty"):
        create_method("mcis", "tiny", ("contrastive_rows=some",))
    assert set(TEST_FUSIONS) == {"weakseg", "official"}
    paper = PRESETS["paper"]
    assert (paper.test_fusion, paper.contrastive_rows, paper.test_partners) == ("official", "all", 3)
    assert (PRESETS["cpu192"].test_fusion, PRESETS["cpu192"].contrastive_rows) == ("weakseg", "nonempty")


# ---------------------------------------------------------------------------- training and sampling


def _hand_batch_out() -> tuple[dict, dict]:
    """Two rows, K = 2: the anchor's unshared classes are [[0, 1], [0, 0]], the partner's none."""
    ya, yp = torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    zeros = torch.zeros(2, 2)
    ln3 = math.log(3.0)
    out = {
        "logits": zeros, "logits_p": zeros, "logits_v": [], "co_a": zeros, "co_p": zeros, "co_self": [],
        "contrast_a": torch.tensor([[0.0, 0.0], [ln3, -ln3]]), "contrast_p": zeros,
    }  # fmt: skip
    return out, {"label_a": ya, "label_p": yp}


def test_contrastive_rows_by_hand():
    out, batch = _hand_batch_out()
    row0 = math.log(2.0)  # target [0, 1], logits [0, 0]: -(log σ(0) + log(1 - σ(0))) / 2
    row1 = 0.5 * math.log(16 / 3)  # target [0, 0], logits [ln 3, -ln 3]: -(log 1/4 + log 3/4) / 2
    for rows, expected in (("nonempty", row0), ("all", (row0 + row1) / 2)):
        hp = apply_overrides(PRESETS["tiny"], (f"contrastive_rows={rows}", "contrastive_from_epoch=0"))
        parts = mcis_loss(out, batch, 0, hp)
        assert parts["contrast"].item() == pytest.approx(expected, rel=1e-6), rows
    # no row with an unshared class: no contrastive term in either mode
    out["contrast_a"] = torch.zeros(2, 2)
    batch["label_a"] = batch["label_p"]
    hp = apply_overrides(PRESETS["tiny"], ("contrastive_rows=all", "contrastive_from_epoch=0"))
    assert mcis_loss(out, batch, 0, hp)["contrast"].item() == 0.0


def test_partners_with_the_image_allowed():
    labels = [[0], [0], [1]]
    members = class_index(labels, 2)
    drawn = sample_partners(labels, members, 0, 200, seed=5, include_self=True)
    assert set(drawn[0]) == {0, 1}  # with replacement, the image itself among them
    assert drawn == sample_partners(labels, members, 0, 200, seed=5, include_self=True)
    assert set(sample_partners(labels, members, 0, 50, seed=5)[0]) == {1}  # default: the image excluded
    assert sample_partners(labels, members, 2, 3, seed=5, include_self=True) == {1: [2, 2, 2]}
    assert all(isinstance(j, int) for j in drawn[0]) and np.isin(drawn[0], members[0]).all()
