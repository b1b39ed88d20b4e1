"""Few-shot segmentation (issue 19): synthetic classes, episodes, the pure maths, the methods."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_save

from weakseg.backbones.clip import TinyClipConfig, tiny_clip
from weakseg.cams.fewshot import (
    binary_miou,
    cosine_map,
    cross_guided_weights,
    fuse_predictions,
    high_order_affinity,
    masked_average_pool,
    prior_mask,
    prototype_logits,
    split_by_prediction,
)
from weakseg.data.episodes import (
    ClassIndex,
    binary_target,
    class_pool,
    fold_spec,
    sample_episodes,
    split_images,
)
from weakseg.data.registry import open_dataset
from weakseg.data.synthetic import SynthConfig, class_names, generate
from weakseg.errors import ConfigError
from weakseg.eval.fewshot import FewShotMeter
from weakseg.methods.clip_es import load_clip_weights
from weakseg.methods.fewshot import ClipPrior, FewShotConfig, SCLNet
from weakseg.stages.fewshot import FewShotEvalConfig, FewShotTrainConfig, fewshot_eval, fewshot_train

# sha256 of every file (relative path + bytes, sorted) of `SynthConfig(size="tiny")` and of a smaller config,
# computed with the generator at commit d2e4215 (before the n_classes option existed).
TINY_HASH = "343919d86b52104dc1d12a755174bed8d70288b1381b60238313a78ed809a00f"
SMALLER = dict(size="tiny", n_train=6, n_val=3, n_single=3, n_web=3, seed=3)
SMALLER_HASH = "f16a728c0417d7fbedf7a29bfc200987a09d07a21546592aed9272fc54093b6f"


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("kw,expected", [(dict(size="tiny"), TINY_HASH), (SMALLER, SMALLER_HASH)])
def test_existing_synthetic_presets_are_byte_identical(tmp_path, kw, expected):
    root = generate(SynthConfig(out=tmp_path / "s", **kw), workers=1)
    assert tree_hash(root) == expected


def test_synthetic_twenty_classes(tmp_path):
    root = generate(SynthConfig(out=tmp_path / "s", size="tiny", n_train=40, n_val=0, n_single=0, n_web=0,
                                n_classes=20), workers=1)  # fmt: skip
    ds = open_dataset(root, "train")
    assert ds.class_names == class_names(20) and ds.class_names[10] == "pale disc"
    seen = {c for r in ds.records for c in r.labels}
    assert max(seen) >= 10  # the new classes are drawn
    for i in range(len(ds)):
        mask = ds.load_mask(i)
        values = set(np.unique(mask).tolist()) - {0, 255}
        assert values == {c + 1 for c in ds.records[i].labels}


# ------------------------------------------------------------------------------------------------ maths


def test_masked_average_pool_and_cosine_on_hand_tensors():
    feat = torch.tensor([[[1.0, 3.0], [5.0, 7.0]], [[0.0, 2.0], [0.0, 2.0]]])[None]  # [1, 2, 2, 2]
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])[None, None]
    v = masked_average_pool(feat, mask, eps=0.0)
    assert torch.allclose(v, torch.tensor([[2.0, 1.0]]))  # mean of (1,0) and (3,2)
    assert torch.allclose(masked_average_pool(feat, torch.zeros_like(mask)), torch.zeros(1, 2))  # empty mask → 0
    cos = cosine_map(feat, torch.tensor([[1.0, 0.0]]))
    # pixel (0,0) = (1,0) → 1; (0,1) = (3,2) → 3/√13; (1,0) = (5,0) → 1; (1,1) = (7,2) → 7/√53
    expected = torch.tensor([[[1.0, 3 / 13**0.5], [1.0, 7 / 53**0.5]]])
    assert torch.allclose(cos, expected, atol=1e-6)
    logits = prototype_logits(feat, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), scale=20)
    assert logits.shape == (1, 2, 2, 2) and torch.allclose(logits[0, 1], 20 * expected[0], atol=1e-5)


def test_prior_mask_is_one_where_the_query_matches_the_support_foreground():
    support = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])[None]  # [1, C=2, 1, 2]: pixel 0 = e1, pixel 1 = e2
    mask = torch.tensor([[[1.0, 0.0]]])[None]  # only pixel 0 (e1) is foreground
    query = torch.tensor([[[2.0, 0.0, 1.0]], [[0.0, 3.0, 1.0]]])[None]  # e1, e2, (e1+e2)
    prior = prior_mask(query, support, mask)
    # raw max cosine: 1, 0, 1/√2 → min-max: 1, 0, 0.7071
    assert torch.allclose(prior[0, 0, 0], torch.tensor([1.0, 0.0, 2**-0.5]), atol=1e-5)


def test_self_guided_split_covered_and_uncovered():
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])[None, None]
    pred = torch.tensor([[1, 0], [0, 1]])[None]
    covered, uncovered = split_by_prediction(mask, pred)
    assert covered[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert uncovered[0, 0].tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_binary_miou_ignores_255():
    gt = torch.tensor([[1, 1, 0, 255]])
    pred = torch.tensor([[1, 0, 0, 1]])
    # fg: I=1, U=2 → 0.5; bg: I=1, U=2 → 0.5 (the 255 pixel counts for neither)
    assert torch.allclose(binary_miou(pred, gt), torch.tensor(0.5))


def test_cross_guided_weights_favour_the_support_that_segments_the_others_best():
    # support 0's vectors segment every support well, support 2's badly
    scores = torch.tensor([[1.0, 0.9, 0.8], [0.9, 0.6, 0.3], [0.2, 0.1, 0.3]])
    w = cross_guided_weights(scores)
    assert torch.allclose(w.sum(), torch.tensor(1.0))
    assert w[0] > w[1] > w[2]
    assert torch.allclose(w, scores.mean(1) / scores.mean(1).sum())
    fused = fuse_predictions(torch.stack([torch.ones(2), 2 * torch.ones(2), 4 * torch.ones(2)]), w)
    assert torch.allclose(fused, (w * torch.tensor([1.0, 2.0, 4.0])).sum().expand(2))


def test_scl_cross_guided_module_scores_supports_by_segmenting_the_others():
    """End to end through SCLNet.cross_guided_weights with a decoder that predicts "foreground" exactly where a
    feature channel agrees with the primary vector: the support whose vector is the true foreground feature wins."""
    cfg = FewShotConfig(hidden=2, bins=(1.0,), prior="none", feature_dropout=0.0)
    net = SCLNet(2, cfg)

    class Oracle(torch.nn.Module):
        def forward(self, feat, v1, v2, prior, query):
            score = (feat * v1[:, :, None, None]).sum(1)  # [B, h, w]
            return torch.stack([torch.full_like(score, 0.5), score], 1), []

    net.decoder = Oracle()
    fg = torch.tensor([1.0, 0.0])  # foreground pixels carry e1, background e2
    feat = torch.zeros(1, 3, 2, 2, 2)
    target = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    target[..., 0] = 1  # left column is foreground in every support
    feat[:, :, 0, :, 0], feat[:, :, 1, :, 1] = 1.0, 1.0
    vpri = torch.stack([fg, torch.tensor([0.0, 1.0]), torch.tensor([0.7, 0.7])])[None]  # good, inverted, mixed
    w = net.cross_guided_weights(feat, vpri, torch.zeros_like(vpri), target)
    assert w.shape == (1, 3) and torch.allclose(w.sum(), torch.tensor(1.0))
    assert w[0, 0] > w[0, 2] > w[0, 1]


def test_high_order_affinity_dominates_first_order():
    torch.manual_seed(0)
    attn = torch.rand(3, 5, 5).softmax(-1)
    t = high_order_affinity(attn)
    a = attn.mean(0)[1:, 1:]
    a = a / a.sum(0, keepdim=True)
    a = a / a.sum(1, keepdim=True)
    first = torch.maximum(a, a @ a.T)
    assert torch.allclose(t, first @ first, atol=1e-6)
    assert (first >= a - 1e-7).all()


# ------------------------------------------------------------------------------------------------ episodes


def test_fold_definitions():
    assert fold_spec("pascal-5i", 20).test_classes(1) == (5, 6, 7, 8, 9)
    coco = fold_spec("coco-20i", 80)
    assert coco.test_classes(0)[:3] == (0, 4, 8) and len(coco.test_classes(3)) == 20  # 1-based 1, 5, 9, ...
    assert fold_spec("coco-20i-contiguous", 80).test_classes(2) == tuple(range(40, 60))
    with pytest.raises(ConfigError, match="20-class"):
        fold_spec("pascal-5i", 10)
    with pytest.raises(ConfigError, match="valid"):
        fold_spec("pascal-6i", 20)


def _toy_index() -> ClassIndex:
    # 8 images; class 0 and 1 are training classes, class 2 is the test class
    present = [{0}, {0}, {0, 2}, {1}, {1}, {1, 2}, {2}, {0, 1}]
    sets = tuple(frozenset(p) for p in present)
    return ClassIndex(sets, sets, 0.0)


def test_sampler_never_shows_a_test_class_in_training():
    index = _toy_index()
    pool = class_pool(index, [0, 1], forbidden=[2], novel_pixels="exclude")
    assert pool == {0: [0, 1, 7], 1: [3, 4, 7]}  # images 2 and 5 show class 2: excluded
    episodes = sample_episodes(pool, 200, shots=2, seed=0)
    for e in episodes:
        images = [e.query, *e.supports[0]]
        assert e.cls in (0, 1) and len(set(images)) == 3
        assert all(2 not in index.present[i] and e.cls in index.listed[i] for i in images)
    kept = class_pool(index, [0, 1], forbidden=[2], novel_pixels="ignore")
    assert 2 in kept[0] and 5 in kept[1]
    with pytest.raises(ConfigError):
        class_pool(index, [0, 2], forbidden=[2])


def test_ignore_convention_marks_test_class_pixels():
    mask = np.array([[0, 1, 3, 255]], np.uint8)  # class 0, class 2 (test), ignore
    assert binary_target(mask, 0, [2], "ignore").tolist() == [[0, 1, 255, 255]]
    assert binary_target(mask, 0, [2], "background").tolist() == [[0, 1, 0, 255]]


def test_test_episodes_are_fixed_by_the_seed():
    pool = class_pool(_toy_index(), [0, 1, 2])
    a = sample_episodes(pool, 30, shots=1, seed=321)
    assert a == sample_episodes(pool, 30, shots=1, seed=321)
    assert a != sample_episodes(pool, 30, shots=1, seed=322)
    two_way = sample_episodes(pool, 10, shots=1, ways=2, seed=1)
    assert all(len(set(e.classes)) == 2 and len(e.supports) == 2 for e in two_way)


def test_split_images_disjoint():
    tr, va = split_images(20, 0.25, seed=0)
    assert len(va) == 5 and not set(tr) & set(va) and sorted(tr + va) == list(range(20))


def test_meter_accumulates_over_episodes_per_class():
    m = FewShotMeter([3, 4])
    m.update(3, np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 0]]))  # fg I=1 U=2
    m.update(3, np.array([[1, 0, 0, 0]]), np.array([[1, 1, 0, 0]]))  # fg I=1 U=2 → class 3: 2/4
    m.update(4, np.array([[1, 1, 255, 0]]), np.array([[1, 1, 1, 0]]))  # fg I=2 U=2 → class 4: 1
    r = m.result()
    assert r["class_iou"] == {"3": 0.5, "4": 1.0} and r["miou"] == pytest.approx(0.75)
    assert FewShotMeter([1, 2]).result()["class_iou"] == {"1": None, "2": None}  # no episode: None, not NaN
    # bg over all: I = 2 + 2 + 1 = 5, U = 3 + 3 + 1 = 7; fg: I = 4, U = 6
    assert r["fb_iou"] == pytest.approx(0.5 * (5 / 7 + 4 / 6))


# ------------------------------------------------------------------------------------------------ methods


@pytest.fixture(scope="module")
def fs_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fs") / "synth20"
    return generate(SynthConfig(out=root, size="tiny", n_train=60, n_val=30, n_single=0, n_web=0, n_classes=20),
                    workers=1)  # fmt: skip


@pytest.fixture(scope="module")
def toy_clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    cfg = TinyClipConfig(image_size=64, patch_size=16, vision_layers=2)
    clip = tiny_clip(0, cfg)
    (folder / "clip.safetensors").write_bytes(
        safetensors_save({k: v.contiguous() for k, v in clip.state_dict().items()})
    )
    (folder / "clip_config.json").write_text(json.dumps(cfg.model_cfg()))
    return folder


@pytest.mark.parametrize("method,prior", [("prototype", "visual"), ("scl", "visual"), ("scl", "visual+clip")])
def test_train_and_eval_one_fold(fs_data, toy_clip_dir, tmp_path, method, prior):
    sets = ("epochs=1", "episodes_per_epoch=4", "val_episodes=4", f"prior={prior}", f"clip_weights={toy_clip_dir}",
            "clip_input=64", "clip_attn_layers=8")  # fmt: skip
    out = fewshot_train(FewShotTrainConfig(data=fs_data, out=tmp_path / "m", method=method, preset="tiny",
                                           backbone="tiny", set=sets, device="cpu"))  # fmt: skip
    hist = json.loads((out / "history.json").read_text())
    assert set(hist["test_classes"]) == {0, 1, 2, 3, 4} and not set(hist["train_classes"]) & {0, 1, 2, 3, 4}
    for shots in (1, 2):
        res = fewshot_eval(FewShotEvalConfig(model_dir=out, out=tmp_path / f"e{shots}", shots=shots, episodes=6,
                                             device="cpu"))  # fmt: skip
        assert res["episodes"] == 6 and 0.0 <= res["fb_iou"] <= 1.0
        eps = json.loads((tmp_path / f"e{shots}" / "episodes.json").read_text())
        assert all(set(e["classes"]) <= {0, 1, 2, 3, 4} and len(e["supports"][0]) == shots for e in eps)


def test_clip_prior_shape_and_range(fs_data, toy_clip_dir):
    cfg = FewShotConfig(prior="clip", clip_weights=str(toy_clip_dir), clip_input=64)
    prior = ClipPrior(load_clip_weights(str(toy_clip_dir)), class_names(20), cfg)
    p = prior(torch.rand(1, 3, 80, 96), 3)
    assert p.shape == (4, 4) and float(p.min()) >= 0.0 and float(p.max()) <= 1.0 + 1e-6


def test_feature_cache_gives_the_same_metrics(fs_data, tmp_path):
    cache = tmp_path / "cache"
    out = fewshot_train(FewShotTrainConfig(data=fs_data, out=tmp_path / "m", method="prototype", preset="tiny",
                                           backbone="tiny", device="cpu", feature_cache=cache))  # fmt: skip
    assert any(cache.rglob("*.safetensors"))
    runs = [
        fewshot_eval(
            FewShotEvalConfig(model_dir=out, out=tmp_path / f"e{i}", episodes=8, device="cpu", feature_cache=c)
        )  # fmt: skip
        for i, c in enumerate((cache, cache, None))
    ]
    assert runs[0]["class_iou"] == runs[1]["class_iou"] == runs[2]["class_iou"]
