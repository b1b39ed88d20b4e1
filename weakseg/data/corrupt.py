"""Seeded corruptions of (image, mask) pairs, and a corrupted copy of a dataset with a manifest of what was done.

Used to measure data-selection methods (SDS, ``weakseg select``): corrupt a known share of a training split, then
count how many of the corrupted samples the selection drops. Two kinds:

- **image** corruptions (the mask is kept): ``image_shuffle`` (a ``3 × 3`` grid of cells permuted),
  ``image_blur`` (Gaussian blur, σ = 5 % of the shorter side), ``image_noise`` (additive Gaussian noise,
  std 90 grey levels), ``image_wrong`` (the pixels of another image of the split whose labels share no class with this
  one, resized): a low-quality or mismatched image under a valid-looking mask;
- **mask** corruptions (the image is kept): ``mask_shift`` (the mask moved by a quarter of the image), ``mask_erode``
  (each class region eroded), ``mask_wrong_class`` (each class id replaced by one absent from the image),
  ``mask_empty`` (all background): a low-quality annotation of a good image.

The image-level labels of the copy are read off its (possibly corrupted) masks, as for synthetic data whose labels
come from its annotation. Every function is deterministic for a given ``numpy.random.Generator`` state.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from weakseg.data.dataset import IGNORE, SegDataset
from weakseg.data.labels import labels_from_mask, write_classes, write_cls_labels
from weakseg.data.palette import save_mask_png
from weakseg.data.registry import open_dataset
from weakseg.data.voc import SPLIT_DIR
from weakseg.engine.artifacts import atomic_write_bytes, save_json
from weakseg.errors import ConfigError, DataError, unknown_name

# ------------------------------------------------------------------------------------------------ image corruptions


def shuffle_cells(image: np.ndarray, grid: int, rng: np.random.Generator) -> np.ndarray:
    """``image`` ``[H, W, ...]`` with the cells of a ``grid × grid`` partition of its top-left
    ``(H // grid · grid) × (W // grid · grid)`` region permuted (never the identity); the remainder strip stays."""
    h, w = image.shape[:2]
    ch, cw = h // grid, w // grid
    if ch < 1 or cw < 1:
        raise ValueError(f"a {h}x{w} image is too small for a {grid}x{grid} shuffle")
    n = grid * grid
    perm = rng.permutation(n)
    while n > 1 and (perm == np.arange(n)).all():
        perm = rng.permutation(n)
    out = image.copy()
    cells = [image[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] for r in range(grid) for c in range(grid)]
    for j, src in enumerate(perm):
        r, c = divmod(j, grid)
        out[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = cells[src]
    return out


def blur_image(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel of ``uint8 [H, W, 3]`` with standard deviation ``sigma`` pixels."""
    out = ndimage.gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def noise_image(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``uint8 [H, W, 3]`` plus i.i.d. Gaussian noise of ``std`` grey levels, clipped to 0..255."""
    out = image.astype(np.float32) + rng.normal(0.0, std, image.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 [h, w, 3]`` → ``uint8 [H, W, 3]`` with ``size = (H, W)`` (bilinear)."""
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


# ------------------------------------------------------------------------------------------------ mask corruptions


def shift_mask(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The mask moved by ``dy`` rows and ``dx`` columns; uncovered pixels become background (0)."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def erode_mask(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Each foreground class region eroded ``iterations`` times (3 × 3 cross); eroded pixels become background."""
    out = mask.copy()
    for v in np.unique(mask):
        if v in (0, IGNORE):
            continue
        region = mask == v
        out[region & ~ndimage.binary_erosion(region, iterations=iterations)] = 0
    return out


def wrong_class_mask(mask: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Every foreground class id replaced by a distinct class id absent from the mask (same regions, wrong names).

    Raises ValueError when there are not enough absent classes."""
    present = [int(v) for v in np.unique(mask) if 0 < v <= num_classes]
    absent = [c for c in range(1, num_classes + 1) if c not in present]
    if len(absent) < len(present):
        raise ValueError(f"{len(present)} classes present but only {len(absent)} absent: no wrong class to assign")
    target = rng.choice(absent, size=len(present), replace=False)
    out = mask.copy()
    for src, dst in zip(present, target, strict=True):
        out[mask == src] = int(dst)
    return out


def empty_mask(mask: np.ndarray) -> np.ndarray:
    """An all-background mask of the same size."""
    return np.zeros_like(mask)


@dataclass(frozen=True)
class Corruption:
    """A named corruption: which part of the pair it changes and what it does (``describe`` for reports)."""

    kind: str
    """``image`` or ``mask``"""
    describe: str


CORRUPTIONS: dict[str, Corruption] = {
    "image_shuffle": Corruption("image", "3x3 grid of image cells permuted"),
    "image_blur": Corruption("image", "Gaussian blur, sigma = 5 % of the shorter side"),
    "image_noise": Corruption("image", "additive Gaussian noise, std 90 grey levels"),
    "image_wrong": Corruption("image", "pixels of another image sharing no class, resized"),
    "mask_shift": Corruption("mask", "mask moved by 1/4 of the height and width"),
    "mask_erode": Corruption("mask", "each class region eroded by 1/12 of the shorter side"),
    "mask_wrong_class": Corruption("mask", "each class id replaced by an absent class"),
    "mask_empty": Corruption("mask", "all background"),
}
"""Every corruption by name (the order of :func:`corrupt_dataset`'s round-robin assignment)."""


def apply_corruption(
    name: str,
    image: np.ndarray,
    mask: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
    donor: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)`` after corruption ``name`` (:data:`CORRUPTIONS`); ``donor`` is the other image that
    ``image_wrong`` shows."""
    if name not in CORRUPTIONS:
        raise unknown_name("corruption", name, CORRUPTIONS)
    side = min(mask.shape)
    ops: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
        "image_shuffle": lambda: (shuffle_cells(image, 3, rng), mask),
        "image_blur": lambda: (blur_image(image, max(1.0, 0.05 * side)), mask),
        "image_noise": lambda: (noise_image(image, 90.0, rng), mask),
        "image_wrong": lambda: (resize_image(_need(donor), image.shape[:2]), mask),
        "mask_shift": lambda: (image, shift_mask(mask, mask.shape[0] // 4, mask.shape[1] // 4)),
        "mask_erode": lambda: (image, erode_mask(mask, max(1, side // 12))),
        "mask_wrong_class": lambda: (image, wrong_class_mask(mask, num_classes, rng)),
        "mask_empty": lambda: (image, empty_mask(mask)),
    }
    return ops[name]()


def _need(donor: np.ndarray | None) -> np.ndarray:
    if donor is None:
        raise ValueError("image_wrong needs a donor image")
    return donor


# ------------------------------------------------------------------------------------------------ a corrupted copy


def _write_png(path: Path, image: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def corrupt_dataset(
    src: str | Path,
    dst: str | Path,
    *,
    per_type: int,
    seed: int = 0,
    split: str = "train",
    copy_splits: tuple[str, ...] = ("val",),
    types: tuple[str, ...] = tuple(CORRUPTIONS),
    fmt: str = "auto",
) -> dict:
    """Write a VOC-layout copy of ``src`` (any loader format) to ``dst`` where ``per_type`` images of ``split`` get
    each corruption of ``types`` (distinct images, drawn with ``seed``); ``copy_splits`` are copied unchanged.

    Clean images are copied byte for byte; corrupted ones are written as PNG (``JPEGImages/<id>.png``); masks as
    palette PNGs; ``cls_labels.csv`` holds the labels of the written masks. Returns the manifest (also written to
    ``dst/corruptions.json``): ``{"corrupted": {image_id: name}, "types": {...}, ...}``.
    """
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise ConfigError(f"{dst} is not empty; choose a new folder for the corrupted copy")
    for t in types:
        if t not in CORRUPTIONS:
            raise unknown_name("corruption", t, CORRUPTIONS)
    ds = open_dataset(src, split, fmt)
    n_bad = per_type * len(types)
    if n_bad > len(ds):
        raise ConfigError(f"{per_type} x {len(types)} corruptions need {n_bad} images; {split!r} has {len(ds)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds))
    chosen = {int(i): types[k % len(types)] for k, i in enumerate(order[:n_bad])}
    (dst / "JPEGImages").mkdir(parents=True)
    (dst / "SegmentationClass").mkdir()
    (dst / SPLIT_DIR).mkdir(parents=True)
    write_classes(dst / "classes.txt", ds.class_names)
    labels: dict[str, tuple[int, ...]] = {}
    corrupted: dict[str, str] = {}
    label_sets = [set(r.labels) for r in ds.records]
    for i, rec in enumerate(ds.records):
        mask = _mask(ds, i)
        name = chosen.get(i)
        if name is None:
            shutil.copyfile(rec.image_path, dst / "JPEGImages" / f"{rec.image_id}{rec.image_path.suffix.lower()}")
        else:
            donor = None
            if name == "image_wrong":
                pool = [j for j in range(len(ds)) if j != i and label_sets[j] and not (label_sets[j] & label_sets[i])]
                if not pool:
                    raise DataError(f"no image of {split!r} shares no class with {rec.image_id!r}: cannot corrupt")
                donor = ds.load_image(int(rng.choice(pool)))
            image, mask = apply_corruption(name, ds.load_image(i), mask, ds.num_classes, rng, donor)
            _write_png(dst / "JPEGImages" / f"{rec.image_id}.png", image)
            corrupted[rec.image_id] = name
        save_mask_png(dst / "SegmentationClass" / f"{rec.image_id}.png", mask)
        labels[rec.image_id] = labels_from_mask(mask, ds.num_classes)
    ids = [r.image_id for r in ds.records]
    atomic_write_bytes(dst / SPLIT_DIR / f"{split}.txt", ("\n".join(ids) + "\n").encode())
    for other in copy_splits:
        ods = open_dataset(src, other, fmt)
        shared = sorted({r.image_id for r in ods.records} & set(ids))
        if shared:
            raise DataError(f"splits {other!r} and {split!r} of {src} both hold {shared[:3]} ({len(shared)} ids): "
                            "a copy would overwrite the corrupted files; leave it out of copy_splits")  # fmt: skip
        for i, rec in enumerate(ods.records):
            shutil.copyfile(rec.image_path, dst / "JPEGImages" / f"{rec.image_id}{rec.image_path.suffix.lower()}")
            mask = _mask(ods, i)
            save_mask_png(dst / "SegmentationClass" / f"{rec.image_id}.png", mask)
            labels[rec.image_id] = labels_from_mask(mask, ods.num_classes)
        other_ids = "\n".join(r.image_id for r in ods.records) + "\n"
        atomic_write_bytes(dst / SPLIT_DIR / f"{other}.txt", other_ids.encode())
    write_cls_labels(dst / "cls_labels.csv", labels, ds.class_names)
    manifest = {
        "source": str(Path(src).resolve()),
        "split": split,
        "seed": seed,
        "per_type": per_type,
        "images": len(ds),
        "share": n_bad / len(ds),
        "types": {t: {"kind": CORRUPTIONS[t].kind, "what": CORRUPTIONS[t].describe} for t in types},
        "corrupted": dict(sorted(corrupted.items())),
    }
    save_json(dst / "corruptions.json", manifest)
    return manifest


def _mask(ds: SegDataset, i: int) -> np.ndarray:
    mask = ds.load_mask(i)
    if mask is None:
        raise DataError(f"image {ds[i].image_id!r} of {ds.root} has no mask; corruptions need (image, mask) pairs")
    return mask
