"""Image-id lists (``kept.txt`` of ``weakseg select``) and a dataset restricted to the ids of such a list.

A list is UTF-8 text, one image id per line; blank lines and lines starting with ``#`` are skipped; an id listed
twice counts once. ``weakseg train-seg --keep LIST`` trains on the listed images of its split only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from weakseg.data.dataset import SegDataset
from weakseg.data.images import display_path
from weakseg.errors import DataError


def read_id_list(path: str | Path) -> list[str]:
    """The ids of an id-list file, in file order, without repeats; a missing, non-UTF-8 or empty file is a
    :class:`DataError` naming it."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(
            f"id list not found: {display_path(path)}; give e.g. the kept.txt of `weakseg select`"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{display_path(path)} is not UTF-8 text ({e}); re-save it as UTF-8") from None
    ids = list(dict.fromkeys(s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")))
    if not ids:
        raise DataError(f"{display_path(path)} lists no image ids (one id per line expected)")
    return ids


def id_list_digest(ids: Sequence[str]) -> str:
    """blake2b digest of a list of ids (order-independent), for stage records."""
    return hashlib.blake2b("\n".join(sorted(ids)).encode(), digest_size=12).hexdigest()


class SubsetDataset(SegDataset):
    """The records of ``base`` at ``indices`` (in that order); pixels and masks are read through ``base``."""

    def __init__(self, base: SegDataset, indices: Sequence[int]):
        super().__init__(base.root, base.split, base.class_names, [base.records[i] for i in indices])
        self.base = base
        self.indices = list(indices)

    @property
    def has_masks(self) -> bool:
        return self.base.has_masks

    def load_image(self, i: int) -> np.ndarray:
        return self.base.load_image(self.indices[i])

    def load_mask(self, i: int) -> np.ndarray | None:
        return self.base.load_mask(self.indices[i])


def keep_subset(ds: SegDataset, path: str | Path) -> SegDataset:
    """``ds`` restricted to the ids listed in ``path``; an id that is not in the split is a :class:`DataError`."""
    ids = read_id_list(path)
    index = {r.image_id: i for i, r in enumerate(ds.records)}
    unknown = [i for i in ids if i not in index]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise DataError(
            f"{display_path(Path(path))} lists {len(unknown)} id(s) not in split {ds.split!r} of {ds.root}: {shown}; "
            "was the list made for another dataset or split?"
        )
    return SubsetDataset(ds, [index[i] for i in ids])
