"""Image pairs for MCIS: partners that share a class, sampled reproducibly and sharded across ranks.

Training (:class:`PairSampler`): each epoch, every *labelled* image is an anchor once, in a random
order; its partner is drawn by picking one of the anchor's classes at random, then a random other
image with that class (the anchor itself only when no other image has the class). Images without
labels are skipped: they have no class to share, so they cannot form a pair.

Everything is drawn from ``numpy.random.default_rng((seed, epoch))``, so the pairs depend only on
``(seed, epoch)``; each rank computes the whole epoch's list and keeps every ``world_size``-th pair
starting at ``rank``, so the ranks together produce exactly the single-process pairs.

Inference (:func:`sample_partners`): ``k`` partners per positive class, drawn with replacement (as in
the reference) from ``(seed, image index)``, so they do not depend on sharding or order.

:class:`PairDataset` loads a pair (anchor and partner jittered, plus the anchor's un-jittered
self-pair copies) and :func:`collate_pairs` stacks pairs into a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from weakseg.data.dataset import SegDataset
from weakseg.data.transforms import Jitter, color_jitter, load_square, resize_square, to_tensor


def class_index(labels: Sequence[Sequence[int]], num_classes: int) -> list[np.ndarray]:
    """For each class, the sorted indices of the images that carry it."""
    members: list[list[int]] = [[] for _ in range(num_classes)]
    for i, ls in enumerate(labels):
        for c in ls:
            members[c].append(i)
    return [np.asarray(m, dtype=np.int64) for m in members]


def _draw_partner(rng: np.random.Generator, anchor: int, members: np.ndarray) -> int:
    """A uniformly random image of ``members`` (sorted) other than ``anchor`` (``anchor`` if it is the only one)."""
    pos = int(np.searchsorted(members, anchor))
    if pos == len(members) or members[pos] != anchor:
        return int(members[rng.integers(len(members))])
    if len(members) == 1:
        return anchor
    r = int(rng.integers(len(members) - 1))
    return int(members[r + 1 if r >= pos else r])  # skip the anchor's own position


class PairSampler:
    """Epoch-wise anchor/partner pairs; deterministic in ``(seed, epoch)``; sharded by ``(rank, world_size)``.

    ``even=True`` pads each rank's share (repeating the epoch's first pairs) so that all ranks run the
    same number of steps, as DDP training needs; with ``even=False`` the shares partition the epoch.
    """

    def __init__(
        self,
        labels: Sequence[Sequence[int]],
        num_classes: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        even: bool = False,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.labels = [tuple(int(c) for c in ls) for ls in labels]
        self.members = class_index(self.labels, num_classes)
        self.anchors = np.asarray([i for i, ls in enumerate(self.labels) if ls], dtype=np.int64)
        self.seed, self.rank, self.world_size, self.even = seed, rank, world_size, even

    def all_pairs(self, epoch: int) -> list[tuple[int, int]]:
        """Every pair of the epoch (all ranks), in order."""
        rng = np.random.default_rng((self.seed, epoch))
        order = rng.permutation(self.anchors)
        pairs = []
        for a in order.tolist():
            ls = self.labels[a]
            c = ls[int(rng.integers(len(ls)))]
            pairs.append((a, _draw_partner(rng, a, self.members[c])))
        return pairs

    def pairs(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's pairs of the epoch."""
        every = self.all_pairs(epoch)
        if self.even and self.world_size > 1 and every:
            per_rank = -(-len(every) // self.world_size)
            every = every + every[: per_rank * self.world_size - len(every)]
        return every[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self.anchors)
        if self.even:
            return -(-n // self.world_size)
        return len(range(self.rank, n, self.world_size))


def sample_partners(
    labels: Sequence[Sequence[int]],
    members: Sequence[np.ndarray],
    index: int,
    k: int,
    seed: int = 0,
    include_self: bool = False,
) -> dict[int, list[int]]:
    """For each class of image ``index``: ``k`` partner indices carrying that class (with replacement).

    The anchor itself is excluded unless it is the only image of the class, or ``include_self`` is set
    (any image of the class, the anchor included, as the reference's ``random.choices`` in
    ``Classifier/utils/LoadData.py`` draws). ``members`` comes from :func:`class_index`. Deterministic in
    ``(seed, index)``.
    """
    rng = np.random.default_rng((seed, 1, index))
    out: dict[int, list[int]] = {}
    for c in labels[index]:
        if include_self:
            out[int(c)] = [int(j) for j in members[c][rng.integers(len(members[c]), size=k)]]
        else:
            out[int(c)] = [_draw_partner(rng, index, members[c]) for _ in range(k)]
    return out


SelfView = tuple[float, bool]
"""A self-pair copy of the anchor: (scale of the input size, horizontally flipped)."""


class PairDataset(torch.utils.data.Dataset):
    """Loads the pairs of one epoch: jittered anchor and partner at ``size``, plus self-pair copies.

    Item: ``{"anchor": [3,S,S], "partner": [3,S,S], "label_a": [K], "label_p": [K], "views": [...]}``
    where ``views[v]`` is the anchor (not jittered, as in the reference) resized to
    ``round(S * scale_v)`` and flipped when ``flip_v``.
    """

    def __init__(
        self,
        ds: SegDataset,
        pairs: Sequence[tuple[int, int]],
        size: int,
        self_views: Sequence[SelfView] = (),
        jitter: Jitter = Jitter(),
    ):
        self.ds, self.pairs, self.size, self.self_views, self.jitter = ds, list(pairs), size, tuple(self_views), jitter

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict:
        a, p = self.pairs[k]
        raw = self.ds.load_image(a)
        anchor = color_jitter(to_tensor(resize_square(raw, self.size)), self.jitter)
        partner = color_jitter(load_square(self.ds, p, self.size), self.jitter)
        views = []
        for scale, flip in self.self_views:
            v = to_tensor(resize_square(raw, max(8, int(round(self.size * scale)))))
            views.append(v.flip(-1) if flip else v)
        return {
            "anchor": anchor,
            "partner": partner,
            "label_a": torch.from_numpy(self.ds.label_vector(a)),
            "label_p": torch.from_numpy(self.ds.label_vector(p)),
            "views": views,
        }


def collate_pairs(items: Sequence[dict]) -> dict:
    """Stack pair items: tensors ``[B, ...]``; ``views`` a list (one per self view) of ``[B, 3, s_v, s_v]``."""
    out = {k: torch.stack([it[k] for it in items]) for k in ("anchor", "partner", "label_a", "label_p")}
    n_views = len(items[0]["views"])
    out["views"] = [torch.stack([it["views"][v] for it in items]) for v in range(n_views)]
    return out
