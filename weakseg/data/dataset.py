"""The dataset contract every loader implements.

Conventions (shared by every stage):
- ``class_names`` lists the *foreground* classes; image-level labels are 0-based indices into it.
- Masks are ``uint8 [H, W]``: 0 = background, ``c + 1`` = foreground class ``c``, 255 = ignore.
- Images are ``uint8 [H, W, 3]`` RGB, EXIF orientation applied (see ``weakseg.data.images``).
- Boxes and points are in pixel coordinates of that (EXIF-rotated) image, 0-based: ``x`` is the column,
  ``y`` the row.

This module is the bottom of ``weakseg.data``: it imports only :mod:`weakseg.data.images`, so every
loader, label reader and sampler can depend on it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weakseg.data.images import display_path, load_mask, load_rgb
from weakseg.errors import DataError

IGNORE = 255


@dataclass(frozen=True)
class Box:
    """An axis-aligned box of class ``cls`` in pixel coordinates, 0-based, ``x1`` / ``y1`` *exclusive*.

    The box covers columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``, i.e. ``mask[y0:y1, x0:x1]``;
    its width is ``x1 - x0``. A box from continuous coordinates (COCO ``[x, y, w, h]``, a polygon)
    is the smallest pixel box holding the shape: floor of the minimum, ceil of the maximum.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    cls: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        """Pixels inside the box (0 for an empty box)."""
        return max(self.width, 0) * max(self.height, 0)

    def clip(self, h: int, w: int) -> Box:
        """The box cut to an ``h x w`` image (it may come out empty: ``x1 == x0`` or ``y1 == y0``)."""
        x0, x1 = min(max(self.x0, 0), w), min(max(self.x1, 0), w)
        y0, y1 = min(max(self.y0, 0), h), min(max(self.y1, 0), h)
        return Box(x0, y0, max(x1, x0), max(y1, y0), self.cls)

    def problem(self, h: int, w: int, num_classes: int | None = None) -> str | None:
        """Why the box is unusable in an ``h x w`` image with ``num_classes`` classes, or None if it is fine."""
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            return f"box {self.as_tuple()} is empty (needs x1 > x0 and y1 > y0; x1, y1 are exclusive)"
        if self.x0 < 0 or self.y0 < 0 or self.x1 > w or self.y1 > h:
            return f"box {self.as_tuple()} lies outside the {w}x{h} image (x in 0..{w}, y in 0..{h})"
        if num_classes is not None and not 0 <= self.cls < num_classes:
            return f"box {self.as_tuple()} has class {self.cls} outside 0..{num_classes - 1}"
        return None

    def as_tuple(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``."""
        return (self.x0, self.y0, self.x1, self.y1)

    @classmethod
    def around(cls, x_min: float, y_min: float, x_max: float, y_max: float, c: int) -> Box:
        """The smallest pixel box holding the continuous extent ``[x_min, x_max] x [y_min, y_max]``.

        Continuous coordinates put pixel ``i`` at ``[i, i + 1)``: COCO's ``[x, y, w, h]`` gives
        ``around(x, y, x + w, y + h)``. Float noise of up to 1e-3 pixel is forgiven, so an extent
        ending at 640.0000001 ends the box at 640, not 641. A zero-width (or zero-height) extent
        still covers the pixel it lies in; a negative one gives an empty box (refused by the checks).
        """
        x0, x1 = _span(x_min, x_max)
        y0, y1 = _span(y_min, y_max)
        return cls(x0, y0, x1, y1, c)


def _span(lo: float, hi: float, eps: float = 1e-3) -> tuple[int, int]:
    """Pixel indices ``[a, b)`` holding the continuous interval ``[lo, hi]`` (see :meth:`Box.around`)."""
    a, b = math.floor(lo + eps), math.ceil(hi - eps)
    return (a, max(b, a + 1)) if hi >= lo else (a, b)


def check_boxes(
    boxes: Sequence[Box], h: int, w: int, path: str | Path, num_classes: int | None = None
) -> tuple[Box, ...]:
    """Return ``boxes`` if each is non-empty and inside an ``h x w`` image; else raise DataError naming ``path``.

    ``path`` is the file the boxes came from (an annotation file, ``boxes.csv``, ...).
    """
    bad = [msg for b in boxes if (msg := b.problem(h, w, num_classes)) is not None]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{display_path(path)}: {bad[0]}{more}; fix or delete the box")
    return tuple(boxes)


@dataclass(frozen=True)
class Point:
    """A clicked point of class ``cls``: column ``x``, row ``y`` (0-based pixel indices)."""

    x: int
    y: int
    cls: int


@dataclass(frozen=True)
class Record:
    """One image of a split: its id, its file, its image-level labels and whatever weak labels its format has.

    Only the first three fields are required; a loader fills the others where its format carries them.
    """

    image_id: str
    image_path: Path
    labels: tuple[int, ...]
    """Image-level labels: sorted foreground class indices."""
    boxes: tuple[Box, ...] = ()
    """Object boxes (see :class:`Box`), in the order of the annotation file."""
    scribbles: Path | None = None
    """A partial-label PNG ``uint8 [H, W]``: 255 = unknown, 0 = background, ``c + 1`` = class ``c``."""
    points: tuple[Point, ...] = ()
    """Point labels (see :class:`Point`)."""
    group: str | None = None
    """Co-saliency group id: images of one group share the salient object's class."""
    sequence: str | None = None
    """Video id; the record is frame ``frame`` of it."""
    frame: int | None = None
    """0-based frame index in ``sequence``."""
    volume: str | None = None
    """3D scan id (medical volumes); the record is slice ``slice_index`` of it."""
    slice_index: int | None = None
    """0-based slice index in ``volume``."""


class SegDataset(ABC):
    """A split of a dataset: records plus loaders for pixels and masks."""

    def __init__(self, root: Path, split: str, class_names: Sequence[str], records: Sequence[Record]):
        self.root = Path(root)
        self.split = split
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.records: list[Record] = list(records)
        self._index = {r.image_id: i for i, r in enumerate(self.records)}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]

    def index_of(self, image_id: str) -> int:
        return self._index[image_id]

    def load_image(self, i: int) -> np.ndarray:
        return load_rgb(self.records[i].image_path)

    @abstractmethod
    def load_mask(self, i: int) -> np.ndarray | None:
        """The ground-truth mask ``uint8 [H, W]`` (see conventions), or None where none exists."""

    @property
    def has_masks(self) -> bool:
        return True

    def label_vector(self, i: int) -> np.ndarray:
        """Multi-hot ``float32 [K]`` image-level labels."""
        v = np.zeros(self.num_classes, dtype=np.float32)
        v[list(self.records[i].labels)] = 1.0
        return v

    def label_matrix(self) -> np.ndarray:
        """``float32 [N, K]`` labels of every record."""
        m = np.zeros((len(self), self.num_classes), dtype=np.float32)
        for i, r in enumerate(self.records):
            m[i, list(r.labels)] = 1.0
        return m


def bad_mask_values(mask: np.ndarray, num_classes: int) -> list[int]:
    """Values in a mask that are neither background, a class (1..K) nor ignore (255)."""
    counts = np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=256)
    return [v for v in np.flatnonzero(counts).tolist() if v > num_classes and v != IGNORE]


def load_checked_mask(path: Path, num_classes: int) -> np.ndarray:
    """Read a label mask and refuse values outside 0..num_classes and 255, naming the file."""
    mask = load_mask(path)
    bad = bad_mask_values(mask, num_classes)
    if bad:
        raise DataError(
            f"mask {display_path(path)} holds values {bad[:10]} outside 0..{num_classes} and 255; "
            f"fix the mask or the class list ({num_classes} classes)"
        )
    return mask


class MaskFileDataset(SegDataset):
    """A dataset whose ground truth is one mask file per record (or None where an image has none)."""

    def __init__(
        self,
        root: Path,
        split: str,
        class_names: Sequence[str],
        records: Sequence[Record],
        mask_paths: Sequence[Path | None],
    ):
        super().__init__(root, split, class_names, records)
        self._masks = list(mask_paths)

    @property
    def has_masks(self) -> bool:
        return any(m is not None for m in self._masks)

    def load_mask(self, i: int) -> np.ndarray | None:
        path = self._masks[i]
        return None if path is None else load_checked_mask(path, self.num_classes)
