"""Few-shot segmentation episodes: class folds (PASCAL-5i, COCO-20i, synthetic), a seeded sampler, fold hygiene.

An *episode* is a query image, ``K`` support images and one target class (1-way; ``ways > 1`` samples several
classes, each with its own ``K`` supports). The model sees the supports' binary masks of the target class and
predicts the query's. Protocol of PFENet / SCL (Zhang, Xiao, Qin, "Self-Guided and Cross-Guided Learning for
Few-Shot Segmentation", CVPR 2021; the facts below as read in their ``util/dataset.py`` / ``test.py``):

- **Folds.** PASCAL-5i: 4 folds of 5 classes, fold ``i`` holds VOC classes ``5i+1 … 5i+5`` (1-based). COCO-20i
  has two variants: ``coco-20i`` (SCL/PFENet's ``use_split_coco``: fold ``i`` holds the 1-based classes
  ``i+1, i+5, …, i+77``, i.e. 0-based ``c % 4 == i``) and ``coco-20i-contiguous`` (fold ``i``: 1-based
  ``20i+1 … 20i+20``). ``synthetic-5i``: the 20-class synthetic benchmark (``weakseg data synth --n-classes 20``),
  fold ``i`` = classes ``5i … 5i+4`` (0-based), as PASCAL-5i. A JSON file (a list of 4 lists of 0-based class
  indices) defines any other split: the fold definition is data, not code.
- **Area filter.** An image lists a class for episodes only if the class covers at least ``min_area`` of it
  (Shaban et al.'s ``2·32·32`` px at 473², i.e. 0.915 % of the image, scaled to any image size).
- **Sampling.** The query image is drawn uniformly from the images that list a fold class, the class uniformly
  among its listed fold classes, the ``K`` supports from the *other* images listing that class. Test episodes
  are a fixed list drawn once from a seed (1,000 per fold by default, as PI-CLIP; SCL uses 5,000).

**Fold hygiene (training never sees a test-fold class).** Training and validation episodes draw their target
classes from the training classes only. A training image may still *show* a test-fold class in its background;
``novel_pixels`` says what happens to it:

- ``"exclude"`` (default): the image is left out of training (the ``filter_intersection`` option of later FSS code);
- ``"ignore"``: the image is kept and those pixels are 255 in its binary target (never a training target,
  never counted as background);
- ``"background"``: kept, those pixels are background — what PFENet/SCL's list building does (it keeps every
  image listing a training class; binarisation makes all other classes background). Not hygienic; offered
  only to reproduce the official numbers.

The *validation* split used for checkpoint selection is carved from the training split's images
(``val_fraction``) and uses the training classes only: a checkpoint is never picked on the test fold (the
official SCL ``train.py`` keeps the best epoch on the test fold).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weakseg.data.dataset import IGNORE, SegDataset
from weakseg.engine.artifacts import save_json
from weakseg.errors import ConfigError, DataError, unknown_name

SHABAN_AREA = 2 * 32 * 32 / (473 * 473)
"""Smallest class area (fraction of the image) for a class to be listed: 2·32·32 px at PASCAL's 473² crops."""
NOVEL_PIXELS = ("exclude", "ignore", "background")


# ---------------------------------------------------------------------------------------------------- folds


@dataclass(frozen=True)
class FoldSpec:
    """A class split: ``folds[i]`` are the 0-based (foreground) classes held out in fold ``i``."""

    name: str
    folds: tuple[tuple[int, ...], ...]
    num_classes: int

    def __post_init__(self) -> None:
        seen: set[int] = set()
        for fold in self.folds:
            for c in fold:
                if not 0 <= c < self.num_classes:
                    raise ConfigError(f"fold split {self.name!r}: class {c} outside 0..{self.num_classes - 1}")
                if c in seen:
                    raise ConfigError(f"fold split {self.name!r}: class {c} is in two folds")
                seen.add(c)

    def check_fold(self, fold: int) -> None:
        if not 0 <= fold < len(self.folds):
            raise ConfigError(f"fold {fold} does not exist in {self.name!r}: use 0..{len(self.folds) - 1}")

    def test_classes(self, fold: int) -> tuple[int, ...]:
        """The held-out (novel) classes of ``fold``."""
        self.check_fold(fold)
        return self.folds[fold]

    def train_classes(self, fold: int) -> tuple[int, ...]:
        """Every other class of the dataset (the base classes of ``fold``)."""
        test = set(self.test_classes(fold))
        return tuple(c for c in range(self.num_classes) if c not in test)


def _contiguous(num_classes: int, per_fold: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(range(i * per_fold, (i + 1) * per_fold)) for i in range(4))


def _interleaved(num_classes: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(c for c in range(num_classes) if c % 4 == i) for i in range(4))


FOLD_SPLITS: dict[str, tuple[int | None, str]] = {
    "pascal-5i": (20, "contiguous"),
    "synthetic-5i": (20, "contiguous"),
    "coco-20i": (80, "interleaved"),
    "coco-20i-contiguous": (80, "contiguous"),
    "interleaved": (None, "interleaved"),
    "contiguous": (None, "contiguous"),
}
"""Built-in splits: name → (required class count or None for any multiple of 4, layout)."""


def fold_spec(name: str, num_classes: int) -> FoldSpec:
    """The fold split ``name`` (a key of :data:`FOLD_SPLITS` or a JSON file of 4 lists) for a ``num_classes``-class
    dataset. ``interleaved`` / ``contiguous`` work for any class count (contiguous needs a multiple of 4)."""
    path = Path(name)
    if name.endswith(".json"):
        if not path.is_file():
            raise ConfigError(f"fold file {path} does not exist; give a JSON list of 4 lists of 0-based class indices")
        try:
            folds = json.loads(path.read_text())
            folds = tuple(tuple(int(c) for c in fold) for fold in folds)
        except (ValueError, TypeError) as e:
            raise DataError(f"{path}: not a JSON list of lists of class indices ({e}); fix the file") from None
        return FoldSpec(path.name, folds, num_classes)
    if name not in FOLD_SPLITS:
        raise unknown_name("fold split", name, [*FOLD_SPLITS, "<file>.json"])
    need, layout = FOLD_SPLITS[name]
    if need is not None and num_classes != need:
        raise ConfigError(
            f"fold split {name!r} needs a {need}-class dataset, this one has {num_classes} classes; "
            "use 'interleaved' or 'contiguous' (any class count) or a JSON fold file"
        )
    if layout == "contiguous":
        if num_classes % 4:
            raise ConfigError(f"'contiguous' folds need a class count divisible by 4, got {num_classes}")
        return FoldSpec(name, _contiguous(num_classes, num_classes // 4), num_classes)
    return FoldSpec(name, _interleaved(num_classes), num_classes)


# ---------------------------------------------------------------------------------------------------- index


@dataclass(frozen=True)
class ClassIndex:
    """Which classes each image of a split shows: ``present[i]`` every class with a pixel in image ``i``,
    ``listed[i]`` those covering at least ``min_area`` of it (the ones episodes may target)."""

    present: tuple[frozenset[int], ...]
    listed: tuple[frozenset[int], ...]
    min_area: float


def class_areas(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels of each class ``int64 [num_classes]`` in a mask (0 = background, c+1 = class c, 255 ignored)."""
    counts = np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=256)
    return counts[1 : num_classes + 1].astype(np.int64)


def build_class_index(masks: Sequence[np.ndarray], num_classes: int, min_area: float = SHABAN_AREA) -> ClassIndex:
    """:class:`ClassIndex` from the masks of a split (``min_area``: fraction of the image's pixels)."""
    present, listed = [], []
    for mask in masks:
        areas = class_areas(mask, num_classes)
        total = mask.size
        present.append(frozenset(int(c) for c in np.flatnonzero(areas)))
        listed.append(frozenset(int(c) for c in np.flatnonzero(areas >= max(1.0, min_area * total))))
    return ClassIndex(tuple(present), tuple(listed), min_area)


def dataset_class_index(ds: SegDataset, min_area: float = SHABAN_AREA) -> ClassIndex:
    """:func:`build_class_index` of every mask of ``ds`` (raises DataError when the split has no masks)."""
    masks = []
    for i in range(len(ds)):
        mask = ds.load_mask(i)
        if mask is None:
            raise DataError(
                f"{ds.root} split {ds.split!r}: image {ds.records[i].image_id} has no mask; few-shot episodes need "
                "the masks of every image (support masks are the supervision)"
            )
        masks.append(mask)
    return build_class_index(masks, ds.num_classes, min_area)


def class_pool(
    index: ClassIndex,
    classes: Sequence[int],
    images: Sequence[int] | None = None,
    forbidden: Sequence[int] = (),
    novel_pixels: str = "exclude",
) -> dict[int, list[int]]:
    """Images that may serve an episode of each class: ``{class: sorted image indices}``.

    Only ``classes`` are targets and only ``images`` (default: all) are used. ``forbidden`` are classes that must
    never be seen in training (the test fold); with ``novel_pixels="exclude"`` an image showing any of them (one
    pixel is enough) is dropped. Classes listed by fewer than 2 images are left out (no support besides the query).
    """
    if novel_pixels not in NOVEL_PIXELS:
        raise unknown_name("novel_pixels convention", novel_pixels, NOVEL_PIXELS)
    bad = set(forbidden) & set(classes)
    if bad:
        raise ConfigError(f"classes {sorted(bad)} are both episode targets and forbidden (test-fold) classes")
    allowed = range(len(index.listed)) if images is None else images
    forbid = frozenset(forbidden)
    pool: dict[int, list[int]] = {c: [] for c in classes}
    for i in sorted(set(allowed)):
        if novel_pixels == "exclude" and index.present[i] & forbid:
            continue
        for c in index.listed[i]:
            if c in pool:
                pool[c].append(i)
    return {c: v for c, v in pool.items() if len(v) >= 2}


# ---------------------------------------------------------------------------------------------------- episodes


@dataclass(frozen=True)
class Episode:
    """One episode: ``query`` image, target ``classes`` (one per way) and ``supports[w]`` (K images) of way ``w``."""

    query: int
    classes: tuple[int, ...]
    supports: tuple[tuple[int, ...], ...]

    @property
    def cls(self) -> int:
        """The target class of a 1-way episode."""
        if len(self.classes) != 1:
            raise ConfigError(f"this episode has {len(self.classes)} ways; only 1-way episodes have one class")
        return self.classes[0]

    def to_json(self) -> dict:
        return {"query": self.query, "classes": list(self.classes), "supports": [list(s) for s in self.supports]}


def sample_episodes(
    pool: Mapping[int, Sequence[int]], n: int, shots: int = 1, ways: int = 1, seed: int = 0
) -> list[Episode]:
    """``n`` episodes from a class pool (:func:`class_pool`), deterministic for a seed.

    PFENet's sampling: the query is drawn uniformly among the images listing a pool class, its first target class
    uniformly among the pool classes it lists; further ways (``ways > 1``) are other pool classes drawn uniformly.
    Each way's ``shots`` supports are distinct images other than the query listing that class. Classes with fewer
    than ``shots + 1`` images cannot be targets.
    """
    if shots < 1 or ways < 1 or n < 0:
        raise ConfigError(f"need shots >= 1, ways >= 1 and n >= 0, got shots={shots}, ways={ways}, n={n}")
    usable = {c: list(v) for c, v in sorted(pool.items()) if len(v) >= shots + 1}
    if len(usable) < ways:
        raise DataError(
            f"only {len(usable)} classes have {shots + 1}+ images (a query and {shots} supports); "
            f"{ways}-way {shots}-shot episodes need {ways}; use fewer shots, a lower min_area or more images"
        )
    by_image: dict[int, list[int]] = {}
    for c, imgs in usable.items():
        for i in imgs:
            by_image.setdefault(i, []).append(c)
    queries = sorted(by_image)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = queries[rng.randrange(len(queries))]
        first = by_image[q][rng.randrange(len(by_image[q]))]
        others = [c for c in usable if c != first]
        classes = (first, *rng.sample(others, ways - 1)) if ways > 1 else (first,)
        supports = tuple(tuple(rng.sample([i for i in usable[c] if i != q], shots)) for c in classes)
        out.append(Episode(q, classes, supports))
    return out


def split_images(n_images: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``range(n_images)`` into (train, val) image indices; ``val_fraction`` in [0, 0.9]."""
    if not 0.0 <= val_fraction <= 0.9:
        raise ConfigError(f"val_fraction must lie in [0, 0.9], got {val_fraction}")
    order = list(range(n_images))
    random.Random(seed).shuffle(order)
    n_val = int(round(val_fraction * n_images))
    return sorted(order[n_val:]), sorted(order[:n_val])


def binary_target(
    mask: np.ndarray, cls: int, forbidden: Sequence[int] = (), novel_pixels: str = "exclude"
) -> np.ndarray:
    """The episode's binary mask ``uint8 [H, W]`` of class ``cls`` (0-based): 1 on the class, 0 elsewhere, 255 where
    the mask ignores. With ``novel_pixels="ignore"`` the pixels of ``forbidden`` classes are 255 as well."""
    mask = np.asarray(mask)
    out = (mask == cls + 1).astype(np.uint8)
    out[mask == IGNORE] = IGNORE
    if novel_pixels == "ignore" and len(forbidden):
        out[np.isin(mask, [c + 1 for c in forbidden])] = IGNORE
    return out


def save_episodes(path: str | Path, episodes: Sequence[Episode]) -> None:
    """Episodes as JSON (what a test run evaluated, so others can rerun exactly those)."""
    save_json(path, [e.to_json() for e in episodes])
