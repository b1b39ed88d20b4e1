"""The dataset contract every loader implements.

Conventions (shared by every stage):
- ``class_names`` lists the *foreground* classes; image-level labels are 0-based indices into it.
- Masks are ``uint8 [H, W]``: 0 = background, ``c + 1`` = foreground class ``c``, 255 = ignore.
- Images are ``uint8 [H, W, 3]`` RGB, EXIF orientation applied (see ``weakseg.data.images``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IGNORE = 255


@dataclass(frozen=True)
class Record:
    """One image of a split: its id, its file and its image-level labels (sorted class indices)."""

    image_id: str
    image_path: Path
    labels: tuple[int, ...]


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
        from weakseg.data.images import load_rgb

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
        from weakseg.data.labels import load_checked_mask

        path = self._masks[i]
        return None if path is None else load_checked_mask(path, self.num_classes)
