"""SDS (weakseg select): the scoring maths on hand tensors, PCS on a shuffle-invariant tiny CLIP, ASF with an oracle
CLIP mask on deliberately corrupted masks, the class-balanced quota, the stage and train-seg --keep, the errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from weakseg.backbones.clip import tiny_clip
from weakseg.cams.sds import (
    asf_score,
    class_balanced_keep,
    entropy,
    inverse_permutation,
    patch_shuffle,
    pcs_keep,
    pcs_scores,
    pseudo_from_cams,
    shuffle_permutation,
)
from weakseg.data.corrupt import (
    apply_corruption,
    corrupt_dataset,
    empty_mask,
    erode_mask,
    shift_mask,
    shuffle_cells,
    wrong_class_mask,
)
from weakseg.data.dataset import MaskFileDataset, Record
from weakseg.data.keep import keep_subset, read_id_list
from weakseg.data.labels import write_classes
from weakseg.data.palette import save_mask_png
from weakseg.data.registry import open_dataset
from weakseg.engine.dense import DenseTrainConfig
from weakseg.errors import ConfigError, DataError
from weakseg.methods.clip_es import CLIP_CONFIG, CLIP_FILE
from weakseg.methods.clip_es import PRESETS as CLIP_PRESETS
from weakseg.methods.sds import SDSConfig, SDSScorer, clip_side, sds_preset
from weakseg.stages.select import SelectConfig, select
from weakseg.stages.train_seg import TrainSegConfig, train_seg

pytestmark = pytest.mark.usefixtures("one_thread")

CLIP_CFG = CLIP_PRESETS["tiny"]  # 32-px input, patch 8: a 4 x 4 token grid


# ---------------------------------------------------------------------------- shuffling


def test_patch_shuffle_moves_whole_cells_and_is_undone_by_the_inverse():
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    perm = torch.tensor([3, 2, 1, 0])  # 2 x 2 grid of 2 x 3 cells, reversed
    y = patch_shuffle(x, 2, perm)
    assert torch.equal(y[..., :2, :3], x[..., 2:, 3:]) and torch.equal(y[..., 2:, 3:], x[..., :2, :3])
    assert torch.equal(y[..., :2, 3:], x[..., 2:, :3])
    assert torch.equal(y.flatten().sort().values, x.flatten().sort().values)  # the same pixels
    assert torch.equal(patch_shuffle(y, 2, inverse_permutation(perm)), x)
    with pytest.raises(ValueError, match="equal cells"):
        patch_shuffle(torch.zeros(3, 5, 6), 2, perm)  # 5 rows do not split in 2: refused, not cropped
    with pytest.raises(ValueError, match="permutation"):
        patch_shuffle(x, 2, torch.tensor([0, 0, 1, 2]))


def test_shuffle_permutation_is_seeded_and_never_the_identity():
    assert torch.equal(shuffle_permutation(16, 3), shuffle_permutation(16, 3))
    assert not torch.equal(shuffle_permutation(16, 3), shuffle_permutation(16, 4))
    for seed in range(50):
        assert not torch.equal(shuffle_permutation(2, seed), torch.arange(2))


def test_clip_side_is_a_whole_number_of_tokens_per_cell():
    assert (
        clip_side(128, 8, 4) == 128
        and clip_side(224, 16, 4) == 256
        and clip_side(200, 16, 4) == 192
        and clip_side(10, 8, 2) == 16
    )


# ---------------------------------------------------------------------------- PCS maths


def test_entropy_and_pcs_by_hand():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(entropy(p), torch.tensor([math.log(2), 0.0], dtype=torch.float64))
    q = torch.tensor([[0.25, 0.25, 0.5], [0.5, 0.5, 0.0]])
    expected = [abs(math.log(2) - 1.5 * math.log(2)), math.log(2)]
    assert torch.allclose(pcs_scores(p, q), torch.tensor(expected, dtype=torch.float64))
    assert float(pcs_scores(p, p).abs().max()) == 0.0


def test_pcs_keep_threshold_and_drop_rules():
    s = np.array([0.05, 0.2, 0.1, 0.3])
    assert pcs_keep(s, "threshold", 0.1, 0.0).tolist() == [False, True, False, True]  # official: PCS > 0.1
    assert pcs_keep(s, "drop", 0.0, 0.5).tolist() == [False, True, False, True]
    assert pcs_keep(s, "drop", 0.0, 0.3).tolist() == [False, True, True, True]  # floor(0.3 * 4) = 1 dropped
    with pytest.raises(ValueError, match="rule"):
        pcs_keep(s, "median", 0.1, 0.1)


# ---------------------------------------------------------------------------- PCS on a shuffle-invariant CLIP


class MemoryDataset(MaskFileDataset):
    """In-memory (image, mask) pairs."""

    def __init__(self, images, masks, class_names):
        records = [Record(f"im{i}", Path(f"im{i}.png"), tuple(sorted(set(np.unique(m).tolist()) - {0, 255}))) for
                   i, m in enumerate(masks)]  # fmt: skip
        records = [Record(r.image_id, r.image_path, tuple(c - 1 for c in r.labels)) for r in records]
        super().__init__(Path("."), "train", class_names, records, [None] * len(masks))
        self.images, self.masks = images, masks

    def load_image(self, i):
        return self.images[i]

    def load_mask(self, i):
        return self.masks[i]


def _scene(seed: int, h: int = 40, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A textured image (non-square) with one coloured rectangle of class 1 or 2."""
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w, 3)) * 80 + 60).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    y, x = rng.integers(2, h // 2), rng.integers(2, w // 2)
    c = 1 + seed % 2
    image[y : y + 14, x : x + 16] = (230, 40, 40) if c == 1 else (40, 40, 230)
    mask[y : y + 14, x : x + 16] = c
    return image, mask


@pytest.fixture(scope="module")
def scenes():
    pairs = [_scene(s) for s in range(6)]
    return MemoryDataset([p[0] for p in pairs], [p[1] for p in pairs], ("red", "blue"))


def _clip(zero_pos: bool) -> torch.nn.Module:
    model = tiny_clip(0, CLIP_CFG.toy.model_cfg(CLIP_CFG.input_size))  # patch-mean pooling (pool_type avg)
    if zero_pos:
        with torch.no_grad():
            model.visual.positional_embedding.zero_()
    return model


def test_pcs_is_zero_for_a_shuffle_invariant_clip(scenes):
    # no position embedding + patch-mean pooling: the ViT is permutation-equivariant, its score invariant
    scorer = SDSScorer(_clip(True), scenes, CLIP_CFG, sds_preset("tiny"), torch.device("cpu"))
    for i in range(len(scenes)):
        p = scorer.probs(scenes.load_image(i), scenes[i].labels)
        assert float(pcs_scores(p.orig, p.shuffled)) < 1e-5 and 1 - p.cosine < 1e-5
    with_pos = SDSScorer(_clip(False), scenes, CLIP_CFG, sds_preset("tiny"), torch.device("cpu"))
    probs = [with_pos.probs(scenes.load_image(i), scenes[i].labels) for i in range(len(scenes))]
    moved = [float(pcs_scores(p.orig, p.shuffled)) for p in probs]
    assert max(moved) > 1e-4  # with position embeddings the same images do move: the test can fail


def test_scorer_pseudo_masks_hold_only_annotated_classes(scenes):
    scorer = SDSScorer(_clip(False), scenes, CLIP_CFG, sds_preset("tiny"), torch.device("cpu"))
    p = scorer.probs(scenes.load_image(0), scenes[0].labels)
    masks = scorer.pseudo_masks(0, scenes[0].labels, p)
    assert set(masks) == {"none", "relative"}
    for m in masks.values():
        assert m.shape == scenes.masks[0].shape and set(np.unique(m)) <= {0, scenes[0].labels[0] + 1}
    assert p.orig.shape == (1 + len(CLIP_CFG.background),) and float(p.classes.sum()) == pytest.approx(1.0)


# ---------------------------------------------------------------------------- ASF maths


def test_pseudo_from_cams_by_hand():
    cams = torch.tensor([[[0.9, 0.2], [0.6, 0.0]], [[0.1, 0.8], [0.7, 0.3]]])  # classes 3 and 5
    out = pseudo_from_cams(cams, [3, 5])
    # bg = 1 - max: [[0.1, 0.2], [0.3, 0.7]] -> argmax over (bg, c3, c5)
    assert out.tolist() == [[4, 6], [6, 0]]
    weighted = pseudo_from_cams(cams, [3, 5], weights=torch.tensor([1.0, 0.25]))
    # class 5 scaled to [[.025, .2], [.175, .075]]; bg = 1 - max = [[.1, .8], [.4, .925]]
    assert weighted.tolist() == [[4, 0], [4, 0]]
    assert pseudo_from_cams(torch.zeros(0, 2, 3), []).tolist() == [[0, 0, 0], [0, 0, 0]]


def test_asf_score_is_a_pooled_iou_that_ignores_255():
    mask = np.array([[1, 1, 0, 2], [1, 255, 0, 2]], np.uint8)
    pseudo = np.array([[1, 0, 0, 2], [1, 1, 2, 2]], np.uint8)
    # class 0 (id 1): I = 2, U = 3 (the 255 pixel is left out); class 1 (id 2): I = 2, U = 3
    assert asf_score(mask, pseudo, [0, 1]) == pytest.approx(4 / 6)
    assert asf_score(mask, np.zeros_like(mask), [0, 1]) == 0.0
    assert asf_score(np.zeros_like(mask), np.zeros_like(mask), [0]) == 0.0  # empty union: 0, not NaN


def _procedural(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    masks = []
    for i in range(n):
        m = np.zeros((32, 40), np.uint8)
        for c in {1 + i % 4, 1 + (i * 7 // 3) % 4} if i % 3 == 0 else {1 + i % 4}:
            y, x = rng.integers(0, 18), rng.integers(0, 24)
            m[y : y + 12, x : x + 14] = c
        masks.append(m)
    return masks


def test_asf_with_an_oracle_clip_mask_drops_the_corrupted_masks_first():
    rng = np.random.default_rng(0)
    clean = _procedural(40, rng)
    bad = {i: kind for i, kind in zip(rng.choice(40, 12, replace=False).tolist(),
                                      ["shift", "wrong_class", "erase", "erode"] * 3, strict=True)}  # fmt: skip
    given = []
    for i, m in enumerate(clean):
        kind = bad.get(i)
        ops = {"shift": lambda m: shift_mask(m, 10, 10), "wrong_class": lambda m: wrong_class_mask(m, 4, rng),
               "erase": empty_mask, "erode": lambda m: erode_mask(m, 4), None: lambda m: m}  # fmt: skip
        given.append(ops[kind](m))
    # the annotated classes are the given mask's, else the image's (an erased mask still names its image's classes)
    classes = [sorted(set(np.unique(g).tolist()) - {0} or set(np.unique(c).tolist()) - {0}) for g, c in
               zip(given, clean, strict=True)]  # fmt: skip
    classes = [[c - 1 for c in cs] for cs in classes]
    scores = [asf_score(g, c, cs) for g, c, cs in zip(given, clean, classes, strict=True)]  # oracle = clean mask
    order = np.argsort(scores, kind="stable")
    assert set(order[: len(bad)].tolist()) == set(bad)  # every corrupted mask ranks below every clean one
    keep, info = class_balanced_keep(scores, classes, 0.5)
    assert not any(keep[i] for i in bad) and keep.sum() >= 20  # halving each class keeps only clean samples
    for c, q in info.items():
        assert q["kept"] >= math.ceil(0.5 * q["candidates"]) == q["quota"]
        with_c = sorted((i for i in range(40) if c in classes[i]), key=lambda i: -scores[i])
        assert all(keep[i] for i in with_c[: q["quota"]])  # each class keeps its best-agreeing images
    assert not any(math.isnan(s) for s in scores)


def test_class_balanced_quota_keeps_each_class_best_share():
    scores = [0.9, 0.8, 0.1, 0.7, 0.2, 0.3, 0.0]
    classes = [[0], [0], [0], [1], [1], [0, 1], []]
    keep, info = class_balanced_keep(scores, classes, 0.5)
    # class 0: 4 images -> quota 2 (0.9, 0.8); class 1: 3 images -> quota 2 (0.7, then 0.3 which also holds 0)
    assert keep.tolist() == [True, True, False, True, False, True, False]
    assert info == {0: {"candidates": 4, "quota": 2, "kept": 3}, 1: {"candidates": 3, "quota": 2, "kept": 2}}
    keep, info = class_balanced_keep(scores, classes, 0.5, candidates=np.array([0, 1, 1, 1, 1, 1, 1], bool))
    assert not keep[0] and info[0]["candidates"] == 3
    with pytest.raises(ValueError, match="keep ratio"):
        class_balanced_keep(scores, classes, 0.0)


# ---------------------------------------------------------------------------- corruptions


def test_corruptions_by_hand():
    m = np.zeros((8, 8), np.uint8)
    m[0:2, 0:2] = 1
    s = shift_mask(m, 2, 4)
    assert s[2:4, 4:6].tolist() == [[1, 1], [1, 1]] and s.sum() == 4
    assert shift_mask(m, -1, 0)[0:1, 0:2].tolist() == [[1, 1]] and shift_mask(m, -1, 0).sum() == 2
    w = wrong_class_mask(np.array([[0, 1, 2]], np.uint8), 4, np.random.default_rng(0))
    assert w[0, 0] == 0 and set(w[0, 1:].tolist()) <= {3, 4} and w[0, 1] != w[0, 2]
    big = np.zeros((9, 9), np.uint8)
    big[1:8, 1:8] = 2
    assert erode_mask(big, 1).sum() == 2 * 25 and empty_mask(big).sum() == 0
    img = np.arange(6 * 6 * 3, dtype=np.uint8).reshape(6, 6, 3)
    sh = shuffle_cells(img, 3, np.random.default_rng(0))
    assert not np.array_equal(sh, img) and sorted(sh.ravel().tolist()) == sorted(img.ravel().tolist())
    with pytest.raises(ConfigError, match="corruption"):
        apply_corruption("mask_rotate", img, big, 4, np.random.default_rng(0))


# ---------------------------------------------------------------------------- stage, train-seg --keep, errors


def _write_voc(root: Path, n: int = 8) -> Path:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    write_classes(root / "classes.txt", ["red", "blue", "green"])
    for split, prefix, count in (("train", "s", n), ("val", "v", 3)):
        for i in range(count):
            image, mask = _scene(i + 100 * (prefix == "v"))
            Image.fromarray(image).save(root / "JPEGImages" / f"{prefix}{i}.png")
            save_mask_png(root / "SegmentationClass" / f"{prefix}{i}.png", mask)
        ids = "".join(f"{prefix}{i}\n" for i in range(count))
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(ids)
    return root


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return _write_voc(tmp_path_factory.mktemp("sds") / "data")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sds") / "clip"
    d.mkdir()
    model_cfg = CLIP_CFG.toy.model_cfg(CLIP_CFG.input_size)
    save_file({k: v.contiguous() for k, v in tiny_clip(0, model_cfg).state_dict().items()}, str(d / CLIP_FILE))
    (d / CLIP_CONFIG).write_text(json.dumps(model_cfg))
    return d


def test_select_stage_writes_kept_list_scores_report_and_train_seg_uses_it(voc, clip_dir, tmp_path):
    cfg = SelectConfig(data=voc, out=tmp_path / "sel", clip_weights=str(clip_dir), clip_preset="tiny", preset="tiny",
                       device="cpu")  # fmt: skip
    s = select(cfg)
    out = tmp_path / "sel"
    assert (out / "DONE").is_file() and s["images"] == 8
    rows = json.loads((out / "scores.json").read_text())
    kept = read_id_list(out / "kept.txt")
    assert len(kept) == s["kept"] == sum(r["kept"] for r in rows) and 0 < len(kept) < 8
    assert s["dropped"]["pcs"] == 2  # tiny preset: floor(0.25 * 8) dropped by PCS
    assert all(r["dropped_by"] and r["reason"] for r in rows if not r["kept"])
    assert (out / "scores.csv").read_text().splitlines()[0].startswith("image_id,classes,pcs")
    assert "Dropped samples" in (out / "report.md").read_text()
    assert len(list((out / "pseudo").glob("*.png"))) == 8
    assert select(cfg) == s  # complete: skipped, same summary
    seg = train_seg(TrainSegConfig(data=voc, out=tmp_path / "seg", supervision="full", keep=out / "kept.txt",
                                   arch="tiny", pretrained=False, crop=32, device="cpu",
                                   train=DenseTrainConfig(epochs=1, batch_size=4)))  # fmt: skip
    rec = json.loads((seg / "config.json").read_text())["record"]
    assert rec["keep"]["ids"] == len(kept)


def test_keep_list_errors_and_subset(voc, tmp_path):
    ds = open_dataset(voc, "train")
    ids = tmp_path / "ids.txt"
    ids.write_text("# kept\ns3\n\ns1\ns3\n")
    sub = keep_subset(ds, ids)
    assert [r.image_id for r in sub.records] == ["s3", "s1"]
    assert np.array_equal(sub.load_mask(0), ds.load_mask(3))
    ids.write_text("s1\nnope\n")
    with pytest.raises(DataError, match="nope"):
        keep_subset(ds, ids)
    with pytest.raises(DataError, match="not found"):
        read_id_list(tmp_path / "missing.txt")
    ids.write_text("\n# nothing\n")
    with pytest.raises(DataError, match="no image ids"):
        read_id_list(ids)


def test_select_refuses_bad_input_clearly(voc, clip_dir, tmp_path):
    base = {"data": voc, "clip_preset": "tiny", "preset": "tiny", "device": "cpu"}
    with pytest.raises(ConfigError, match="clip pretrain"):
        select(SelectConfig(out=tmp_path / "a", **base))
    with pytest.raises(ConfigError, match="paper"):
        select(SelectConfig(out=tmp_path / "b", clip_weights=str(clip_dir), **{**base, "preset": "best"}))
    with pytest.raises(ConfigError, match="asf_keep"):
        select(SelectConfig(out=tmp_path / "c", clip_weights=str(clip_dir), set=("asf_keep=0",), **base))
    with pytest.raises(ConfigError, match="clip pretrain"):
        select(SelectConfig(out=tmp_path / "d", clip_weights=str(tmp_path), **base))  # a folder without a CLIP
    bad = _write_voc(tmp_path / "bad", n=2)
    save_mask_png(bad / "SegmentationClass" / "s1.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="s1"):
        select(SelectConfig(out=tmp_path / "e", clip_weights=str(clip_dir), **{**base, "data": bad}))
    with pytest.raises(ConfigError, match="grid"):
        SDSConfig(grid=1).check()


def test_corrupt_dataset_writes_a_manifest_and_a_loadable_copy(voc, tmp_path):
    m = corrupt_dataset(voc, tmp_path / "c", per_type=1, seed=0, types=("image_noise", "mask_empty", "mask_shift"))
    assert m["share"] == pytest.approx(3 / 8) and sorted(m["corrupted"].values()) == ["image_noise", "mask_empty",
                                                                                       "mask_shift"]  # fmt: skip
    ds = open_dataset(tmp_path / "c", "train")
    empty = ds.index_of(next(k for k, v in m["corrupted"].items() if v == "mask_empty"))
    assert ds.load_mask(empty).max() == 0 and ds[empty].labels == ()
    assert len(open_dataset(tmp_path / "c", "val")) == 3
    with pytest.raises(ConfigError, match="not empty"):
        corrupt_dataset(voc, tmp_path / "c", per_type=1)
    with pytest.raises(DataError, match="both"):
        corrupt_dataset(voc, tmp_path / "d", per_type=1, copy_splits=("train",), types=("mask_empty",))
