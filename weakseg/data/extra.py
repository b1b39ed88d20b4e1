"""Extra training data for MCIS settings 2 and 3, and the epoch plan that mixes it with the main set.

Why and how the extra data are used is documented in :mod:`weakseg.methods.extra`; this module holds
the data side only:

- :func:`parse_extra` reads one ``--extra`` entry, ``KIND:DIR[:RATIO]`` (kinds: :data:`EXTRA_KINDS`);
- :func:`open_extra` opens the folder with any loader format (its ``train`` split, else ``all``)
  and maps its class names onto the main set's by name;
- :class:`MixedPairSampler` plans an epoch as a list of *global batches*, each holding pairs of one
  source only (main, or one extra set), deterministic in ``(seed, epoch)`` and sharded by rank;
- :class:`MixedPairDataset` loads the planned pairs; :func:`collate_mixed` stacks one batch.

Pairs. A main pair is what :class:`weakseg.data.pairs.PairSampler` draws (anchor and partner from the
main set, sharing a class). An extra pair is an extra image (the anchor) with a *query* class drawn from
its labels, and a partner drawn uniformly from the main-set images that carry that class, so every
extra pair shares at least the query class. Each epoch has ``round(RATIO × main anchors)`` pairs of
each extra set (at least one); the set's images are taken in a random order, cycling when there are
fewer images than pairs, so every image is used equally often. Extra images whose classes no main
image carries cannot be paired and are skipped (with a warning).

Distribution. Every rank computes the whole epoch plan from ``numpy.random.default_rng`` seeded with
``(seed, epoch, ...)``; each global batch is padded to a multiple of ``world_size`` (repeating its
first pairs) and rank ``r`` keeps its items ``r::world_size``. So the ranks' local batches together
are exactly the single-process batch (padding aside), and all ranks run the same number of steps.
Colour jitter is seeded per item from ``(seed, epoch, position in the epoch)``, so an item looks the
same whichever rank or worker loads it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from weakseg.data.dataset import SegDataset
from weakseg.data.pairs import PairDataset, PairSampler, SelfView, collate_pairs
from weakseg.data.registry import FORMATS, detect_format, open_dataset
from weakseg.data.transforms import Jitter, color_jitter, load_square
from weakseg.errors import ConfigError, WeaksegError, unknown_name

log = logging.getLogger(__name__)

EXTRA_KINDS: dict[str, str] = {
    "single": "extra simple single-label images (clean labels): MCIS setting 2",
    "web": "extra web images labelled by their search query (noisy labels): MCIS setting 3",
}
DEFAULT_RATIO = 0.5
MAIN = "main"


@dataclass(frozen=True)
class ExtraSpec:
    """One ``--extra`` entry: the kind of data, its folder, and extra pairs per main pair in each epoch."""

    kind: str
    root: Path
    ratio: float = DEFAULT_RATIO


def parse_extra(entry: str) -> ExtraSpec:
    """``KIND:DIR[:RATIO]`` → :class:`ExtraSpec` (``RATIO`` defaults to 0.5).

    A trailing ``:NUMBER`` is the ratio; a folder whose name itself ends in ``:text`` is taken whole
    when it exists.
    """
    usage = "expected KIND:DIR[:RATIO], e.g. single:data/extra_single or web:data/extra_web:0.5"
    kind, sep, rest = entry.partition(":")
    if not sep or not kind:
        raise ConfigError(f"malformed --extra entry {entry!r}: {usage}")
    if kind not in EXTRA_KINDS:
        raise ConfigError(f"unknown --extra kind {kind!r} in {entry!r}; valid kinds: {', '.join(EXTRA_KINDS)}")
    root, ratio = rest, DEFAULT_RATIO
    head, sep, tail = rest.rpartition(":")
    if sep:
        try:
            ratio = float(tail)
            root = head
        except ValueError:
            if not Path(rest).is_dir():
                msg = f"malformed --extra entry {entry!r}: ratio {tail!r} is not a number; {usage}"
                raise ConfigError(msg) from None
    if not root:
        raise ConfigError(f"malformed --extra entry {entry!r}: no folder given; {usage}")
    if not (math.isfinite(ratio) and ratio > 0):
        raise ConfigError(f"--extra entry {entry!r}: the ratio must be a positive number, got {ratio}")
    return ExtraSpec(kind, Path(root), ratio)


def _train_split(root: Path, fmt: str) -> tuple[str, str]:
    """(format, split) of an extra folder: its ``train`` split (``train*`` for COCO), else ``all``."""
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise unknown_name("dataset format", fmt, [*FORMATS, "auto"])
    splits = FORMATS[fmt].splits(root)
    for split in ["train", *(s for s in splits if s.startswith("train")), "all"]:
        if split in splits:
            return fmt, split
    raise ConfigError(f"no 'train' split (nor 'all') in this {fmt}-format folder; found: {', '.join(splits) or '-'}")


@dataclass
class ExtraSet:
    """An opened extra set: its dataset and each image's labels as *main-set* class indices."""

    spec: ExtraSpec
    ds: SegDataset
    split: str
    labels: list[tuple[int, ...]]
    num_classes: int
    """classes of the main set (the label vectors' length)"""

    @property
    def kind(self) -> str:
        return self.spec.kind

    def label_vector(self, i: int) -> np.ndarray:
        v = np.zeros(self.num_classes, dtype=np.float32)
        v[list(self.labels[i])] = 1.0
        return v

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "root": str(self.spec.root),
            "ratio": self.spec.ratio,
            "split": self.split,
            "images": len(self.ds),
            "labelled_images": sum(1 for ls in self.labels if ls),
        }


def open_extra(spec: ExtraSpec, main_class_names: Sequence[str], fmt: str = "auto") -> ExtraSet:
    """Open ``spec.root`` and map its classes onto ``main_class_names`` by name.

    Raises ConfigError for a missing folder, foreign class names or no labelled image, and the
    loader's DataError (prefixed with the entry) for a broken folder.
    """
    what = f"--extra {spec.kind}:{spec.root}"
    if not spec.root.is_dir():
        raise ConfigError(f"{what}: folder not found; check the path")
    try:
        fmt, split = _train_split(spec.root, fmt)
        ds = open_dataset(spec.root, split, fmt)
    except WeaksegError as e:  # name the entry; a broken folder stays a DataError
        raise type(e)(f"{what}: {e}") from None
    main = list(main_class_names)
    unknown = [n for n in ds.class_names if n not in main]
    if unknown:
        raise ConfigError(
            f"{what}: classes {unknown} are not classes of the main set ({', '.join(main)}); an extra set must use "
            "the main set's class names (the same list, or a subset of it, mapped by name)"
        )
    to_main = [main.index(n) for n in ds.class_names]
    labels = [tuple(sorted(to_main[c] for c in r.labels)) for r in ds.records]
    if not any(labels):
        raise ConfigError(f"{what}: split {split!r} has no labelled image (image-level labels are needed to pair it)")
    return ExtraSet(spec, ds, split, labels, len(main))


class PairRef(NamedTuple):
    """One planned pair: ``source`` 0 = main, s ≥ 1 = extra set s−1; ``anchor`` indexes that source's
    images and ``partner`` the main set's; ``query`` the shared class drawn for an extra pair (−1 for a
    main pair); ``key`` its position in the epoch (seeds its jitter)."""

    source: int
    anchor: int
    partner: int
    query: int
    key: int


class MixedPairSampler:
    """The epoch plan: global batches of ``batch_size`` pairs, each from one source; sharded by rank.

    ``extras``: per extra set, ``(labels as main-class indices, ratio)``; ``names`` name them in
    messages. Deterministic in ``(seed, epoch)``. With no extras the plan is the main pairs of
    :class:`PairSampler`, in its order.
    """

    def __init__(
        self,
        labels: Sequence[Sequence[int]],
        num_classes: int,
        extras: Sequence[tuple[Sequence[Sequence[int]], float]] = (),
        batch_size: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        names: Sequence[str] = (),
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.main = PairSampler(labels, num_classes, seed=seed)
        self.members = self.main.members
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        n_main = len(self.main.anchors)
        self.extras: list[tuple[list[tuple[int, ...]], np.ndarray, int]] = []
        for s, (ex_labels, ratio) in enumerate(extras, start=1):
            # per image, the classes it can be paired on: those some main image carries
            pairable = [tuple(int(c) for c in ls if len(self.members[c])) for ls in ex_labels]
            anchors = np.asarray([i for i, cs in enumerate(pairable) if cs], dtype=np.int64)
            name = names[s - 1] if names else f"extra set {s}"
            if len(anchors) == 0:
                raise ConfigError(f"{name}: none of its labelled images has a class that a main-set image carries")
            skipped = sum(1 for ls in ex_labels if ls) - len(anchors)
            if skipped:
                log.warning("%s: %d labelled image(s) skipped: no main-set image has their classes", name, skipped)
            self.extras.append((pairable, anchors, max(1, round(ratio * n_main))))

    def extra_pairs(self, s: int, epoch: int) -> list[tuple[int, int, int]]:
        """The ``(anchor, partner, query class)`` pairs of extra set ``s`` (1-based) in ``epoch``."""
        pairable, anchors, n = self.extras[s - 1]
        rng = np.random.default_rng((self.seed, epoch, 1, s))
        order = np.concatenate([rng.permutation(anchors) for _ in range(-(-n // len(anchors)))])[:n]
        out = []
        for a in order.tolist():
            classes = pairable[a]
            c = classes[int(rng.integers(len(classes)))]
            members = self.members[c]
            out.append((a, int(members[rng.integers(len(members))]), c))
        return out

    def global_batches(self, epoch: int) -> list[list[PairRef]]:
        """Every batch of the epoch (all ranks), in order; each holds pairs of one source."""
        b = self.batch_size
        main = [(0, a, p, -1) for a, p in self.main.all_pairs(epoch)]
        batches = [main[i : i + b] for i in range(0, len(main), b)]
        for s in range(1, len(self.extras) + 1):
            pairs = [(s, a, p, c) for a, p, c in self.extra_pairs(s, epoch)]
            batches += [pairs[i : i + b] for i in range(0, len(pairs), b)]
        if self.extras:  # interleave the sources over the epoch
            order = np.random.default_rng((self.seed, epoch, 2)).permutation(len(batches))
            batches = [batches[i] for i in order.tolist()]
        out, key = [], 0
        for batch in batches:
            out.append([PairRef(*t, key=key + j) for j, t in enumerate(batch)])
            key += len(batch)
        return out

    def batches(self, epoch: int) -> list[list[PairRef]]:
        """This rank's share of every global batch (padded so that all ranks get the same size)."""
        w = self.world_size
        out = []
        for batch in self.global_batches(epoch):
            if w > 1:  # pad (cycling over the batch, which may be smaller than w) to a multiple of w
                batch = batch + [batch[i % len(batch)] for i in range(-len(batch) % w)]
            out.append(batch[self.rank :: w])
        return out

    def __len__(self) -> int:
        """Batches (steps) per epoch, the same on every rank."""
        b = self.batch_size
        return -(-len(self.main.anchors) // b) + sum(-(-n // b) for _, _, n in self.extras)


@contextlib.contextmanager
def item_seed(*key: int) -> Iterator[None]:
    """Run the block with torch's CPU RNG seeded from ``key`` (the global RNG is restored after)."""
    seed = int(np.random.SeedSequence([int(k) % 2**63 for k in key]).generate_state(1, np.uint64)[0] % 2**63)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class MixedPairDataset(torch.utils.data.Dataset):
    """Loads planned pairs (:class:`PairRef`). Main pairs as :class:`PairDataset` items (with the
    anchor's self-pair views); extra pairs: the extra anchor and its main partner, jittered, no views,
    plus ``query``. Every item has ``source`` (``"main"`` or the extra set's kind)."""

    def __init__(
        self,
        main: SegDataset,
        extras: Sequence[ExtraSet],
        refs: Sequence[PairRef],
        size: int,
        self_views: Sequence[SelfView] = (),
        jitter: Jitter = Jitter(),
        seed: tuple[int, ...] = (0,),
    ):
        self.main, self.extras, self.refs = main, list(extras), list(refs)
        self.size, self.jitter, self.seed = size, jitter, tuple(seed)
        main_refs = [r for r in self.refs if r.source == 0]
        self._pairs = PairDataset(main, [(r.anchor, r.partner) for r in main_refs], size, self_views, jitter)
        self._pos = {r.key: j for j, r in enumerate(main_refs)}

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, k: int) -> dict:
        ref = self.refs[k]
        with item_seed(*self.seed, ref.key):
            if ref.source == 0:
                return {**self._pairs[self._pos[ref.key]], "source": MAIN, "query": -1}
            ex = self.extras[ref.source - 1]
            return {
                "anchor": color_jitter(load_square(ex.ds, ref.anchor, self.size), self.jitter),
                "partner": color_jitter(load_square(self.main, ref.partner, self.size), self.jitter),
                "label_a": torch.from_numpy(ex.label_vector(ref.anchor)),
                "label_p": torch.from_numpy(self.main.label_vector(ref.partner)),
                "views": [],
                "source": ex.kind,
                "query": ref.query,
            }


def collate_mixed(items: Sequence[dict]) -> dict:
    """Stack one batch (all items from one source): :func:`collate_pairs` plus ``source`` and ``query [B]``."""
    sources = {it["source"] for it in items}
    if len(sources) != 1:
        raise ValueError(f"a batch mixes sources {sorted(sources)}")
    out = collate_pairs(items)
    out["source"] = items[0]["source"]
    out["query"] = torch.tensor([it["query"] for it in items], dtype=torch.long)
    return out
