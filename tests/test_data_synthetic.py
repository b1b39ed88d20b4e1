"""The synthetic benchmark: determinism, label/mask consistency, extra sets and the WSSS difficulties."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakseg.data.images import load_mask, load_rgb
from weakseg.data.labels import labels_from_mask, read_classes, read_cls_labels
from weakseg.data.synthetic import CLASS_NAMES, PART_COLOURS, SynthConfig, generate, make_scene, render_sample_grid
from weakseg.data.voc import VOCDataset
from weakseg.errors import ConfigError, DataError

SMALL = dict(size="tiny", n_train=24, n_val=8, n_single=8, n_web=8)


def _digest(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = _digest(generate(SynthConfig(out=tmp_path / "a", seed=3, **SMALL)))
    b = _digest(generate(SynthConfig(out=tmp_path / "b", seed=3, **SMALL)))
    c = _digest(generate(SynthConfig(out=tmp_path / "c", seed=4, **SMALL)))
    assert a == b
    assert len(a) > 3 * (24 + 8)  # images, masks, part masks of the main set + extra sets
    jpgs = [k for k in a if k.startswith("JPEGImages/")]
    assert sum(a[k] != c.get(k) for k in jpgs) > 0.9 * len(jpgs)


def test_layout_and_labels_match_masks(synth_root):
    assert read_classes(synth_root / "classes.txt") == CLASS_NAMES
    for split, n in (("train", 40), ("val", 16)):
        ds = VOCDataset(synth_root, split)
        assert len(ds) == n and ds.class_names == CLASS_NAMES
        for i in range(len(ds)):
            mask = ds.load_mask(i)
            img = ds.load_image(i)
            assert img.shape == (96, 96, 3) and mask.shape == (96, 96)
            assert ds[i].labels, "every main-set image shows at least one object"
            assert ds[i].labels == labels_from_mask(mask, len(CLASS_NAMES))
            assert (mask == 255).any(), "object boundaries carry the ignore band"
    assert (synth_root / "samples.png").is_file()
    assert (synth_root / "synth.json").is_file()


def test_ignore_band_is_exactly_the_object_boundaries():
    plain = _scenes(20, "main", ignore_band=0, min_visible=1)
    band = _scenes(20, "main", ignore_band=1, min_visible=1)
    for p, b in zip(plain, band, strict=True):
        assert not (p.mask == 255).any()
        m = p.mask
        edge = np.zeros(m.shape, bool)
        for d in (m[1:] != m[:-1],):
            edge[1:] |= d
            edge[:-1] |= d
        d = m[:, 1:] != m[:, :-1]
        edge[:, 1:] |= d
        edge[:, :-1] |= d
        np.testing.assert_array_equal(b.mask == 255, edge)
        np.testing.assert_array_equal(b.image, p.image)


def test_discriminative_part_is_small_bright_and_class_coloured(synth_root):
    ds = VOCDataset(synth_root, "train")
    fractions, part_err, body_err = [], [], []
    for i in range(len(ds)):
        rid = ds[i].image_id
        mask, img = ds.load_mask(i), load_rgb(ds[i].image_path).astype(np.float32)
        parts = load_mask(synth_root / "SegmentationPart" / f"{rid}.png")
        for c in ds[i].labels:
            obj, part = mask == c + 1, parts == c + 1
            if part.sum() < 4:
                continue  # occluded part
            fractions.append(part.sum() / (obj | part).sum())
            inner = part & obj
            part_err.append(np.abs(img[inner].mean(0) - PART_COLOURS[c]).mean() if inner.any() else 0)
            body = obj & ~part
            body_err.append(np.abs(img[body].mean(0) - PART_COLOURS[c]).mean())
    assert len(fractions) > 30
    assert 0.03 < np.median(fractions) < 0.15  # "~5-10 % of the object"
    assert np.median(part_err) < 45 < np.median(body_err)  # the part has the class colour, the body not


def test_single_and_web_sets(tmp_path):
    sizes = dict(min_side=64, max_side=64)
    cfg = SynthConfig(out=tmp_path / "w", size="tiny", n_train=1, n_val=0, n_single=40, n_web=400, **sizes)
    root = generate(cfg)
    single = VOCDataset(root / "extra_single", "train")
    assert len(single) == 40
    for i in range(len(single)):
        assert len(single[i].labels) == 1
        assert single[i].labels == labels_from_mask(single.load_mask(i), 10)

    web = VOCDataset(root / "extra_web", "train")
    true = read_cls_labels(root / "extra_web" / "true_labels.csv", CLASS_NAMES)
    assert len(web) == 400 and all(len(r.labels) == 1 for r in web.records)
    wrong = np.mean([r.labels[0] not in true[r.image_id] for r in web.records])
    right = [r for r in web.records if r.labels[0] in true[r.image_id]]
    missing = np.mean([len(true[r.image_id]) > 1 for r in right])
    assert 0.13 < wrong < 0.27, wrong  # web_wrong_rate = 0.2
    assert 0.22 < missing < 0.38, missing  # web_missing_rate = 0.3
    for i in range(20):  # the true labels are what the masks show
        assert true[web[i].image_id] == labels_from_mask(web.load_mask(i), 10)

    # appearance shift: the web set is saved with a lower JPEG quality than the main set (q = 90)
    with Image.open(root / "JPEGImages" / "train_00000.jpg") as im:
        main_q = sum(im.quantization[0])
    web_q = []
    for r in web.records[:20]:
        with Image.open(r.image_path) as im:
            web_q.append(sum(im.quantization[0]))
    assert min(web_q) > main_q  # larger quantisation steps = lower quality


def _scenes(n: int, kind: str, **kw):
    cfg = SynthConfig(out=Path("unused"), size="tiny", min_side=64, max_side=64, **kw).resolved()
    return [make_scene(cfg, np.random.default_rng([7, i]), kind)[0] for i in range(n)]


def test_context_and_co_occurrence_follow_their_rates():
    single = _scenes(300, "single")
    ctx = np.mean([s.bg == s.labels[0] for s in single])
    assert 0.2 < ctx < 0.42  # 0.3 + 0.7/14 expected
    no_ctx = _scenes(150, "single", context_rate=0.0)
    assert np.mean([s.bg == s.labels[0] for s in no_ctx]) < 0.2

    main = _scenes(400, "main")
    has = np.array([[c in s.labels for c in range(10)] for s in main])
    p_pair = has[has[:, 0], 1].mean()
    p_unpaired = has[has[:, 6], 7].mean()
    assert p_pair > p_unpaired + 0.2  # (0, 1) is a co-occurring pair, (6, 7) is not
    counts = np.bincount([len(s.labels) for s in main], minlength=6)
    assert counts[0] == 0 and counts[1] > 0 and counts[3] + counts[4] > 0  # 1..4 objects, never none


def test_body_cue_sets_how_different_paired_bodies_are():
    def gap(cue: float) -> float:
        scenes = _scenes(240, "single", body_cue=cue, part_rate=0.0)
        body = {0: [], 5: []}
        for s in scenes:
            c = s.labels[0]
            if c in body:
                body[c].append(s.image[s.mask == c + 1].astype(np.float32).mean(0))
        return float(np.abs(np.mean(body[0], 0) - np.mean(body[5], 0)).mean())

    assert gap(1.0) > gap(0.0) + 12  # classes 0 and 5 share the stripe family; the cue shifts colours


def test_config_validation_and_refusing_foreign_folders(tmp_path):
    with pytest.raises(ConfigError, match="tiny"):
        SynthConfig(out=tmp_path, size="huge").resolved()
    with pytest.raises(ConfigError, match="context_rate"):
        SynthConfig(out=tmp_path, context_rate=1.5).resolved()
    with pytest.raises(ConfigError, match="pair"):
        SynthConfig(out=tmp_path, pairs=((0, 0),)).resolved()
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(DataError, match="synth.json"):
        generate(SynthConfig(out=tmp_path, **SMALL))
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_regenerating_keeps_an_identical_dataset_and_replaces_another(tmp_path):
    cfg = SynthConfig(out=tmp_path / "d", size="tiny", n_train=20, n_val=4, n_single=4, n_web=0)
    root = generate(cfg)
    stamp = (root / "JPEGImages" / "train_00000.jpg").stat().st_mtime_ns
    assert generate(cfg) == root
    assert (root / "JPEGImages" / "train_00000.jpg").stat().st_mtime_ns == stamp  # kept, not rewritten
    generate(SynthConfig(out=root, size="tiny", n_train=8, n_val=4, n_single=0, n_web=0))
    assert len(list((root / "JPEGImages").iterdir())) == 12
    assert not (root / "extra_single").exists()
    (root / "synth.json").unlink()  # as after an interrupted run: still recognised as ours
    generate(SynthConfig(out=root, size="tiny", n_train=4, n_val=4, n_single=0, n_web=0))
    assert len(list((root / "JPEGImages").iterdir())) == 8


def test_sample_grid(synth_root, tmp_path):
    out = render_sample_grid(synth_root, tmp_path / "grid.png", n=5)
    with Image.open(out) as im:
        assert im.width > 3 * 2 * 96 and im.height > 2 * 96
