"""DCFM (co-saliency): democratic voting, rank weights, losses, the group sampler and readers, shapes, stages."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from weakseg.backbones import create_backbone
from weakseg.cams.democratic import (
    democratic_prototype,
    democratic_response,
    democratic_seeds,
    democratic_votes,
    group_affinity,
    rank_attention,
    rank_weights,
)
from weakseg.data.groups import (
    GroupLabels,
    GroupSampler,
    eval_groups,
    group_labels,
    open_cosal_folder,
    open_davis_frames,
    target_mask,
)
from weakseg.engine.artifacts import load_json
from weakseg.errors import ConfigError, DataError
from weakseg.losses.cosal import fg_bg_iou_loss, self_contrastive_loss, soft_iou_loss
from weakseg.methods import create_method
from weakseg.stages.train_cosal import EvalCosalConfig, TrainCosalConfig, eval_cosal, train_cosal
from weakseg.tasks import TASKS, get_task, methods_of

pytestmark = pytest.mark.usefixtures("one_thread")

A, B, C = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


def _group(*images: tuple[tuple[float, ...], ...]) -> torch.Tensor:
    """``[N, 3, 1, W]`` features: each image a row of one-hot "class" vectors."""
    return torch.tensor([[list(px) for px in img] for img in images]).permute(0, 2, 1)[:, :, None, :]


# ---------------------------------------------------------------------------- democratic voting


def test_votes_by_hand_and_the_majority_seed_wins():
    # image 0 shows A (in every image) and B (in images 0 and 2 only); image 1: C, A; image 2: A, B
    f = _group((A, B), (C, A), (A, B))
    votes = democratic_votes(group_affinity(f, f), 3)
    s = 1 / math.sqrt(3)  # A = QᵀK/√C with Q = K = f
    # A at image 0 pos 0: every image has an A -> (1 + 1 + 1) / 3; B at pos 1: images 0 and 2 -> 2/3; C: 1/3
    expected = torch.tensor([[1, 2 / 3], [1 / 3, 1], [1, 2 / 3]]) * s
    assert torch.allclose(votes, expected, atol=1e-6)
    assert democratic_seeds(votes).tolist() == [0, 1, 0]  # every image's seed lands on the shared A


def test_majority_beats_a_locally_strong_match():
    # image 0's B is stronger (1.5²) than its A (1), but only image 0 shows B; A is in all three images
    f = _group((A, (0.0, 1.5, 0.0)), (C, A), (A, C))
    votes = democratic_votes(group_affinity(f, f), 3)
    assert democratic_seeds(votes).tolist() == [0, 1, 0]  # A: (1 + 1 + 1) / 3 beats B: (2.25 + 0 + 0) / 3
    alone = democratic_votes(group_affinity(f[:1], f[:1]), 1)  # image 0 voting alone picks B
    assert democratic_seeds(alone).tolist() == [1]


def test_response_is_one_on_the_shared_class_and_zero_on_distractors():
    f = _group((A, B, C), (C, A, B), (B, C, A))
    r = democratic_response(f, torch.tensor([0, 1, 2]))  # every seed on A
    assert r.shape == (3, 1, 1, 3)
    assert torch.allclose(r[:, 0, 0], torch.eye(3), atol=1e-6)
    f = _group((A, B), (C, A), (A, B))
    proto, resp, seeds = democratic_prototype(f, f, f)
    assert seeds.tolist() == [0, 1, 0]
    assert torch.allclose(resp[:, 0, 0], torch.tensor([[1.0, 0], [0, 1], [1, 0]]), atol=1e-6)
    assert torch.allclose(proto, torch.tensor([0.5, 0, 0]), atol=1e-6)  # mean over 6 positions of f·R: 3 A's


def test_one_image_group_and_sixteen_image_group():
    torch.manual_seed(0)
    f1 = torch.randn(1, 8, 4, 4)
    proto, resp, seeds = democratic_prototype(f1, f1, f1)
    assert proto.shape == (8,) and resp.shape == (1, 1, 4, 4) and seeds.shape == (1,)
    assert resp.min() == 0 and resp.max() == 1
    method = create_method("dcfm", "tiny", ("input_size=64",))
    net = method.build(create_backbone("tiny", output_stride=8, pretrained=False))
    prob = method.predict_group(net, torch.rand(16, 3, 64, 64))
    assert prob.shape == (16, 1, 64, 64) and 0 <= prob.min() and prob.max() <= 1


def test_rank_weights_by_hand():
    row = torch.tensor([[2.0, -1.0, 0.5, 1.0, 0.0]])
    # positives ranked 2 > 1 > 0.5 -> ranks 0, 1, 2 -> weights 1, 8, 27; non-positive -> 1
    assert rank_weights(row).tolist() == [[1.0, 1.0, 27.0, 8.0, 1.0]]
    assert rank_weights(row, power=1.0).tolist() == [[1.0, 1.0, 3.0, 2.0, 1.0]]


def test_rank_attention_by_hand():
    # one image, C = 1, three positions: logits L[p, q] = q_p k_q with q = k = (1, -1, 2)
    q = torch.tensor([1.0, -1.0, 2.0]).view(1, 1, 1, 3)
    v = torch.tensor([10.0, 20.0, 30.0]).view(1, 1, 1, 3)
    logits = torch.tensor([[1.0, -1, 2], [-1, 1, -2], [2, -2, 4]])
    w = torch.tensor([[8.0, 1, 1], [1, 1, 1], [8, 1, 1]])  # rows 0 and 2: two positives (ranks 0, 1); row 1: one
    att = torch.softmax(logits, 1) * w
    expected = att @ v.flatten()
    assert torch.allclose(rank_attention(q, q, v).flatten(), expected)
    assert torch.allclose(rank_attention(q, q, v, renormalise=True).flatten(), expected / att.sum(1))


# ---------------------------------------------------------------------------- losses


def test_self_contrastive_loss_signs():
    p = torch.tensor([1.0, 2.0, 0.5])
    q = torch.tensor([-2.0, 1.0, 0.0])
    near_zero = self_contrastive_loss(p, 3 * p, -p)  # P along P+, against P-
    assert near_zero < 1e-5
    good = self_contrastive_loss(p, p + 0.1 * q, q)
    bad = self_contrastive_loss(p, q, p + 0.1 * q)  # P matches the background prototype
    assert good < bad
    # orthogonal prototypes: -log(1/2) - log(1/2)
    assert self_contrastive_loss(torch.tensor([1.0, 0]), torch.tensor([0, 1.0]), torch.tensor([0, -1.0])).item() == (
        pytest.approx(2 * math.log(2), rel=1e-5)
    )


def test_soft_iou_losses():
    y = torch.zeros(2, 1, 4, 4)
    y[:, :, 1:3, 1:3] = 1
    assert soft_iou_loss(y, y).item() == pytest.approx(0.0, abs=1e-6)
    half = torch.full_like(y, 0.5)
    # IoU = Σ0.5·y / Σ(0.5 + y − 0.5y) = 2 / (8 + 2) per image
    assert soft_iou_loss(half, y).item() == pytest.approx(1 - 2 / 10, abs=1e-5)
    assert fg_bg_iou_loss(100 * (2 * y - 1), y).item() == pytest.approx(0.0, abs=1e-5)
    valid = torch.ones_like(y)
    valid[:, :, 0, :] = 0  # ignored row: a wrong prediction there costs nothing
    wrong_top = y.clone()
    wrong_top[:, :, 0, :] = 1
    assert soft_iou_loss(wrong_top, y, valid).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------- groups


LABELS = [(0,), (0, 1), (1,), (0,), (2,), (1, 0), ()]


def test_group_sampler_groups_share_their_target():
    s = GroupSampler(LABELS, 4, group_size=3, seed=1)
    groups = s.all_groups(0)
    assert len(groups) == len(s) == 5  # image 4 (class 2 alone) and image 6 (no label) anchor nothing
    for g in groups:
        assert all(g.target in LABELS[i] for i in g.members)
        assert len(set(g.members)) == len(g.members) <= 3
    assert sorted(g.members[0] for g in groups) == [0, 1, 2, 3, 5]
    assert [g.members for g in groups] == [g.members for g in GroupSampler(LABELS, 4, 3, seed=1).all_groups(0)]
    assert [g.members for g in groups] != [g.members for g in s.all_groups(1)]
    shards = [GroupSampler(LABELS, 4, 3, seed=1, rank=r, world_size=2).groups(0) for r in (0, 1)]
    assert [g.members for g in shards[0] + shards[1]] != []
    assert {g.members for g in groups} == {g.members for sh in shards for g in sh}
    with pytest.raises(ConfigError, match="no target"):
        GroupSampler([(0,), (1,)], 2, 3)


def test_eval_groups_chunk_each_target():
    gl = GroupLabels("class", tuple((0,) for _ in range(7)) + ((1,),), ("a", "b"))
    groups = eval_groups(gl, group_size=3)
    assert [(g.name, g.members) for g in groups] == [("a_0", (0, 1, 2)), ("a_1", (3, 4)), ("a_2", (5, 6))]
    assert len(eval_groups(gl, 3, max_per_target=1)) == 1


def test_target_mask_by_class_and_record():
    m = np.array([[0, 1, 2], [255, 2, 1]], np.uint8)
    assert target_mask(m, 1, "class").tolist() == [[0, 0, 1], [255, 1, 0]]  # class 1 = value 2
    assert target_mask(m, 0, "record").tolist() == [[0, 1, 1], [255, 1, 1]]


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_cosal_folder_and_davis_readers(tmp_path):
    rgb = np.zeros((8, 10, 3), np.uint8)
    gt = np.zeros((8, 10), np.uint8)
    gt[2:5, 3:6] = 255
    for grp in ("cat", "dog"):
        for k in range(2):
            _png(tmp_path / "co" / "images" / grp / f"{k}.png", rgb)
            _png(tmp_path / "co" / "gts" / grp / f"{k}.png", gt)
    ds = open_cosal_folder(tmp_path / "co")
    gl = group_labels(ds, "record")
    assert gl.names == ("cat", "dog") and gl.labels == ((0,), (0,), (1,), (1,))
    assert ds.load_mask(0).sum() == 9
    for seq in ("car-roundabout", "drift-chicane", "libby"):
        for k in range(4):
            _png(tmp_path / "davis" / "JPEGImages" / "480p" / seq / f"{k:05d}.jpg", rgb)
            _png(tmp_path / "davis" / "Annotations" / "480p" / seq / f"{k:05d}.png", gt)
    dv = open_davis_frames(tmp_path / "davis", "car-roundabout,drift-chicane,libby", by="category", every=2)
    assert len(dv) == 6 and group_labels(dv, "record").names == ("car", "dog")
    assert {r.group for r in open_davis_frames(tmp_path / "davis", "all", by="sequence")} == {
        "car-roundabout", "drift-chicane", "libby"}  # fmt: skip
    with pytest.raises(DataError, match="not in"):
        open_davis_frames(tmp_path / "davis", "cows")


# ---------------------------------------------------------------------------- network and stages


def test_shapes_and_no_group_interaction_in_the_baseline():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32)
    gt = (torch.rand(3, 1, 32, 32) > 0.5).float()
    for name in ("dcfm", "single-saliency"):
        method = create_method(name, "tiny")
        net = method.build(create_backbone("tiny", output_stride=8, pretrained=False))
        net.train()
        out = net(x, gt)
        assert [m.shape for m in out["logits"]] == [(3, 1, 32, 32)] * 2
        losses = method.step(net, {"image": x, "gt": gt, "valid": torch.ones_like(gt)}, 0)
        losses["loss"].backward()
        assert ("scl" in losses) == (name == "dcfm")
        if name == "dcfm":
            assert out["proto"].shape == out["proto_fg"].shape == out["proto_bg"].shape == (16,)
        # image 0's map with another group: unchanged without group interaction, changed with it
        alone = method.predict_group(net, x[:1])
        other = method.predict_group(net, torch.cat([x[:1], torch.rand(2, 3, 32, 32)]))
        same = torch.allclose(alone[0], other[0], atol=1e-5)
        assert same == (name == "single-saliency")


def test_train_and_eval_stages_write_maps_and_metrics(synth_root, tmp_path):
    train = TrainCosalConfig(data=synth_root, out=tmp_path / "train", method="dcfm", preset="tiny", backbone="tiny",
                             device="cpu")  # fmt: skip
    train_cosal(train)
    assert (train.out / "model.safetensors").is_file() and (train.out / "DONE").is_file()
    train_cosal(train)  # complete: skipped
    ev = EvalCosalConfig(data=synth_root, out=tmp_path / "eval", model_dir=train.out, max_groups_per_target=1,
                         device="cpu")  # fmt: skip
    result = eval_cosal(ev)
    metrics = load_json(ev.out / "metrics.json")
    assert metrics["groups"] == result["groups"] > 0
    assert 0 <= metrics["metrics"]["smeasure"] <= 1 and 0 <= metrics["metrics"]["mae"] <= 1
    pngs = sorted((ev.out / "maps").rglob("*.png"))
    assert len(pngs) == metrics["images"]
    assert np.asarray(Image.open(pngs[0])).dtype == np.uint8
    with pytest.raises(ConfigError, match="not a co-saliency method"):
        train_cosal(TrainCosalConfig(data=synth_root, out=tmp_path / "x", method="cam", preset="tiny"))


def test_co_saliency_task_is_registered():
    task = get_task("co-saliency")
    assert task is TASKS["co-saliency"]
    assert methods_of("co-saliency") == ["dcfm", "single-saliency"]
