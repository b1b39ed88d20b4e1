"""Salient-object data for scribble SOD (SCWSSOD): images, binary ground truth, S-DUTS-style scribbles.

One in-memory form, :class:`SaliencySet` (a split of :class:`SalientItem` records), from three layouts
(``fmt``):

- ``folder`` — your own data, the S-DUTS / SCWSSOD layout::

      <root>/images/<name>.<jpg|png>     RGB
      <root>/scribbles/<name>.png        S-DUTS encoding: 1 = salient, 2 = background, 0 = unknown (optional)
      <root>/masks/<name>.png            ground truth, 0 / 255 (optional; read only to score, or by sod-full)
      <root>/splits/<split>.txt          optional list of names; split ``all`` = every image

- ``davis`` — DAVIS 2016 (``JPEGImages/480p/<seq>/<frame>.jpg`` + ``Annotations/480p/<seq>/<frame>.png``,
  0 / 255), read in place. The annotated object is the salient one. Splits are *temporal*, per sequence:
  ``train`` = the first half of each sequence's frames, ``val`` = the second half, ``all`` = both;
  ``frame_step`` keeps every n-th frame of the split and ``sequences`` picks sequences (default: all).
- ``voc`` — any VOC-layout class-mask set (the synthetic benchmark): the **salient object is the union of
  every labelled object** (mask values ``1..K``); the 255 band on object boundaries takes the label of the
  nearest non-ignore pixel, so the binary ground truth has no holes. Unlabelled clutter (the synthetic
  benchmark's distractor blobs, which reuse class textures) is background: a saliency model must learn
  that "textured" is not "salient". ``weakseg/data/synthetic.py`` is not changed.

Scribbles: read from ``scribbles/`` where the layout has them, else **simulated** from the ground truth by
:func:`weakseg.data.simulate.simulate_scribbles` (seeded per image; one stroke per object and per background
component, width 3 px at the size asked for). A simulated scribble is the only thing a weak method learns
from; the mask it is drawn from is not passed on. Scribble maps use weakseg's partial-label encoding:
``1`` = salient, ``0`` = background, ``255`` = unknown (:func:`weakseg.data.weak_labels.decode_scribbles`
for S-DUTS files).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from weakseg.data.dataset import IGNORE
from weakseg.data.davis import list_sequences, open_sequence
from weakseg.data.images import IMAGE_EXTENSIONS, display_path, load_mask, load_rgb
from weakseg.data.registry import open_dataset
from weakseg.data.simulate import simulate_scribbles
from weakseg.data.weak_labels import decode_scribbles
from weakseg.errors import ConfigError, DataError, unknown_name

SALIENCY_FORMATS = ("auto", "folder", "davis", "voc")


@dataclass(frozen=True)
class SalientItem:
    """One image: its id, its file, and where its ground truth / scribbles come from."""

    image_id: str
    image_path: Path
    mask_path: Path | None = None
    """binary ground truth (0 / 255, > 127 = salient) or, for ``voc``, the class-index mask"""
    scribble_path: Path | None = None
    """an S-DUTS-encoded scribble PNG; None = simulated from the ground truth"""
    sequence: str | None = None
    frame: int | None = None


def _union_of_objects(mask: np.ndarray) -> np.ndarray:
    """``bool [H, W]``: pixels of any labelled object (1..K); 255 pixels take their nearest labelled neighbour's."""
    known = mask != IGNORE
    if not known.any():
        return np.zeros(mask.shape, dtype=bool)
    fg = (mask != 0) & known
    if known.all():
        return fg
    nearest = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)
    return fg[tuple(nearest)]


def _resize(a: np.ndarray, size: tuple[int, int] | None, resample: int) -> np.ndarray:
    """``a`` resized to ``size = (H, W)`` (unchanged when None or equal)."""
    if size is None or tuple(a.shape[:2]) == tuple(size):
        return a
    return np.asarray(Image.fromarray(a).resize((size[1], size[0]), resample))


def scribble_seed(seed: int, image_id: str) -> int:
    """The simulator's seed for one image: stable across runs, processes and image order."""
    return zlib.crc32(f"{seed}:{image_id}".encode()) & 0x7FFFFFFF


class SaliencySet:
    """A split of a salient-object dataset (module docstring): items + loaders of image, ground truth, scribbles."""

    def __init__(self, root: Path, fmt: str, split: str, items: Sequence[SalientItem], seed: int = 0):
        self.root, self.fmt, self.split = Path(root), fmt, split
        self.items = list(items)
        self.seed = seed
        """seed of the scribble simulator (images without a scribble file)"""

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> SalientItem:
        return self.items[i]

    @property
    def has_masks(self) -> bool:
        return any(it.mask_path is not None for it in self.items)

    def load_image(self, i: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """``uint8 [H, W, 3]``, resized (bilinear) to ``size = (H, W)`` when given."""
        return _resize(load_rgb(self.items[i].image_path), size, Image.BILINEAR)

    def load_gt(self, i: int, size: tuple[int, int] | None = None) -> np.ndarray | None:
        """Binary ground truth ``bool [H, W]`` (nearest-resized to ``size``), or None where the item has none."""
        it = self.items[i]
        if it.mask_path is None:
            return None
        raw = load_mask(it.mask_path)
        gt = _union_of_objects(raw) if self.fmt == "voc" else raw > 127
        if size is None:
            return gt
        return _resize(gt.astype(np.uint8) * 255, size, Image.NEAREST) > 127

    def load_scribbles(self, i: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Scribbles ``uint8 [H, W]``: 1 = salient, 0 = background, 255 = unknown (at ``size`` when given).

        A scribble file is decoded (S-DUTS) and nearest-resized; otherwise the scribbles are simulated from the
        ground truth at ``size`` (so a 3 px stroke stays 3 px at the training resolution).
        """
        it = self.items[i]
        if it.scribble_path is not None:
            return _resize(decode_scribbles(load_mask(it.scribble_path), "sduts", 1, it.scribble_path), size,
                           Image.NEAREST)  # fmt: skip
        gt = self.load_gt(i, size)
        if gt is None:
            raise DataError(f"image {it.image_id!r} ({display_path(it.image_path)}) has neither a scribble file nor a "
                            "ground-truth mask to simulate scribbles from; add scribbles/<name>.png")  # fmt: skip
        return simulate_scribbles(gt.astype(np.uint8), seed=scribble_seed(self.seed, it.image_id))


# ---------------------------------------------------------------------------- layouts


def detect_saliency_format(root: Path) -> str:
    if (root / "JPEGImages" / "480p").is_dir() and (root / "Annotations" / "480p").is_dir():
        return "davis"
    if (root / "images").is_dir() and ((root / "scribbles").is_dir() or (root / "masks").is_dir()):
        return "folder"
    if (root / "JPEGImages").is_dir() and (root / "ImageSets" / "Segmentation").is_dir():
        return "voc"
    raise DataError(f"{display_path(root)} is not a salient-object dataset: expected DAVIS (JPEGImages/480p + "
                    "Annotations/480p), images/ + scribbles/ or masks/ (folder), or a VOC layout")  # fmt: skip


def _folder(root: Path, split: str) -> list[SalientItem]:
    image_dir = root / "images"
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
    if split == "all":
        names = sorted(images)
    else:
        listing = root / "splits" / f"{split}.txt"
        if not listing.is_file():
            raise DataError(f"split file {display_path(listing)} not found; write one image name per line or use "
                            "split 'all'")  # fmt: skip
        names = [Path(n.strip()).stem for n in listing.read_text().splitlines() if n.strip()]
        missing = [n for n in names if n not in images]
        if missing:
            raise DataError(f"{display_path(listing)} lists images not in {display_path(image_dir)}: {missing[:5]}")
    items = []
    for n in names:
        mask, scrib = root / "masks" / f"{n}.png", root / "scribbles" / f"{n}.png"
        items.append(SalientItem(n, images[n], mask if mask.is_file() else None, scrib if scrib.is_file() else None))
    return items


def _davis(root: Path, split: str, sequences: Sequence[str], frame_step: int) -> list[SalientItem]:
    available = list_sequences(root)
    chosen = list(sequences) or available
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise unknown_name("DAVIS sequence", unknown[0], available)
    if split not in ("train", "val", "all"):
        raise unknown_name("DAVIS split", split, ("train", "val", "all"))
    items = []
    for seq in chosen:
        files = open_sequence(root, seq)
        frames = list(zip(files.frames, files.masks, strict=True))
        half = len(frames) // 2
        picked = {"train": frames[:half], "val": frames[half:], "all": frames}[split][::frame_step]
        items += [SalientItem(f"{seq}_{f.stem}", f, ann, None, seq, int(f.stem)) for f, ann in picked]
    return items


def _voc(root: Path, split: str) -> list[SalientItem]:
    ds = open_dataset(root, split=split, fmt="voc")
    items = []
    for r in ds.records:
        mask = root / "SegmentationClass" / f"{r.image_id}.png"
        items.append(SalientItem(r.image_id, r.image_path, mask if mask.is_file() else None))
    return items


def open_saliency(
    root: str | Path,
    split: str = "train",
    fmt: str = "auto",
    *,
    sequences: Sequence[str] = (),
    frame_step: int = 1,
    seed: int = 0,
) -> SaliencySet:
    """Open a split of a salient-object dataset (module docstring). ``sequences``/``frame_step``: DAVIS only
    (``frame_step`` also thins the other layouts); ``seed``: the scribble simulator's seed."""
    root = Path(root)
    if fmt not in SALIENCY_FORMATS:
        raise unknown_name("saliency data format", fmt, SALIENCY_FORMATS)
    if frame_step < 1:
        raise ConfigError(f"frame_step must be >= 1, got {frame_step}")
    if not root.is_dir():
        raise DataError(f"dataset root {display_path(root)} does not exist")
    fmt = detect_saliency_format(root) if fmt == "auto" else fmt
    if fmt == "davis":
        items = _davis(root, split, sequences, frame_step)
    else:
        if sequences:
            raise ConfigError(f"sequences only select DAVIS sequences; the {fmt!r} layout has none")
        items = (_folder(root, split) if fmt == "folder" else _voc(root, split))[::frame_step]
    if not items:
        raise DataError(f"split {split!r} of {display_path(root)} ({fmt}) holds no image")
    return SaliencySet(root, fmt, split, items, seed)
