"""Loader recipes: how a method's training batches are drawn from a dataset.

Each recipe returns ``(make_loader(epoch) -> DataLoader, steps per epoch)`` for *this* process: under
torchrun every process takes its share of every global batch, and each item's randomness is seeded by
its place in the epoch, so ``W`` processes follow the single-process run (up to float rounding).

- :func:`image_batches`: single images with multi-hot labels (plain CAM training).
- :func:`pair_batches`: image pairs sharing a class, with optional extra sets (MCIS, settings 1-3).
- :func:`two_stream_batches`: labelled + unlabelled items in every batch (semi-supervised, ABD).

Episodes, groups and clips are further recipes of the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from weakseg.data.dataset import SegDataset
from weakseg.data.extra import ExtraSet, MixedPairDataset, MixedPairSampler, collate_mixed, item_seed
from weakseg.data.transforms import Jitter, LabelledImages
from weakseg.errors import ConfigError

Recipe = tuple[Callable[[int], torch.utils.data.DataLoader], int]


def local_batch_size(batch_size: int, world: int) -> int:
    """Each process's share of the global ``batch_size`` under ``world`` processes (must divide)."""
    if batch_size % world:
        lo, hi = batch_size - batch_size % world, batch_size + world - batch_size % world
        raise ConfigError(
            f"batch size {batch_size} (the global batch) does not split evenly over {world} processes; "
            f"use batch_size={lo or hi} or {hi}"
        )
    return batch_size // world


def shard(items: list, rank: int, world: int) -> list:
    """Every ``world``-th item from ``rank``, padded so that all ranks get the same count."""
    if world == 1 or not items:
        return items
    per_rank = -(-len(items) // world)
    items = items + items[: per_rank * world - len(items)]
    return items[rank::world]


class Seeded(torch.utils.data.Dataset):
    """Item ``k`` of ``inner`` loaded with the RNG seeded from ``(*seed, keys[k])`` (jitter independent of rank)."""

    def __init__(self, inner: torch.utils.data.Dataset, keys: list[int], seed: tuple[int, ...]):
        self.inner, self.keys, self.seed = inner, keys, seed

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, k: int):
        with item_seed(*self.seed, self.keys[k]):
            return self.inner[k]


def image_batches(
    ds: SegDataset,
    *,
    input_size: int,
    jitter: Jitter,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
) -> Recipe:
    """Single images ``{"image": [B, 3, S, S], "label": [B, K]}``, shuffled per epoch by ``(seed, epoch)``."""
    local = local_batch_size(batch_size, world)
    n_items = -(-len(ds) // world)

    def make(epoch: int) -> torch.utils.data.DataLoader:
        order = np.random.default_rng((seed, epoch)).permutation(len(ds)).tolist()
        positions = shard(list(range(len(ds))), rank, world)  # each item's place in the epoch seeds its jitter
        data = Seeded(LabelledImages(ds, [order[k] for k in positions], input_size, jitter), positions, (seed, epoch))
        return torch.utils.data.DataLoader(data, batch_size=local, shuffle=False, num_workers=workers)

    return make, math.ceil(n_items / local)


def pair_batches(
    ds: SegDataset,
    *,
    input_size: int,
    jitter: Jitter,
    batch_size: int,
    self_pairs: Sequence[tuple[float, bool]],
    seed: int,
    extras: Sequence[ExtraSet] = (),
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
) -> Recipe:
    """Pairs sharing a class (:class:`weakseg.data.extra.MixedPairSampler`), each batch of one source."""
    sampler = MixedPairSampler(
        [r.labels for r in ds.records],
        ds.num_classes,
        [(ex.labels, ex.spec.ratio) for ex in extras],
        batch_size=batch_size,
        seed=seed,
        rank=rank,
        world_size=world,
        names=[f"extra {ex.kind}:{ex.spec.root}" for ex in extras],
    )

    def make(epoch: int) -> torch.utils.data.DataLoader:
        batches = sampler.batches(epoch)
        refs = [r for b in batches for r in b]
        starts = np.cumsum([0] + [len(b) for b in batches]).tolist()
        index = [list(range(a, b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]
        data = MixedPairDataset(ds, list(extras), refs, input_size, tuple(self_pairs), jitter, (seed, epoch))
        return torch.utils.data.DataLoader(data, batch_sampler=index, num_workers=workers, collate_fn=collate_mixed)

    return make, len(sampler)


class TwoStreamSteps(torch.utils.data.Dataset):
    """Item ``k`` = step ``k`` of an epoch: its planned labelled items, then its unlabelled ones, collated.

    ``plan[k]``: ``(stream, index, key)`` triples (stream 0 = labelled, 1 = unlabelled); each item is loaded
    with torch's RNG seeded from ``(*seed, stream, key)``, so its augmentation does not depend on the rank.
    """

    def __init__(self, streams: Sequence[torch.utils.data.Dataset], plan: list[list[tuple[int, int, int]]],
                 seed: tuple[int, ...], first_iteration: int):  # fmt: skip
        self.streams, self.plan, self.seed, self.first_iteration = list(streams), plan, seed, first_iteration

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        items = []
        for stream, index, key in self.plan[k]:
            with item_seed(*self.seed, stream, key):
                items.append(self.streams[stream][index])
        batch = {name: torch.stack([it[name] for it in items]) for name in items[0]}
        batch["n_labelled"] = torch.tensor(sum(1 for s, _, _ in self.plan[k] if s == 0))
        batch["iteration"] = torch.tensor(self.first_iteration + k)
        return batch


def _endless(n: int, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` indices of ``0..n-1``: whole shuffled passes, one after another (the last one cut)."""
    out: list[int] = []
    while len(out) < count:
        out += rng.permutation(n).tolist()
    return out[:count]


def two_stream_batches(
    labelled: torch.utils.data.Dataset,
    unlabelled: torch.utils.data.Dataset | None,
    *,
    labelled_bs: int,
    unlabelled_bs: int,
    steps_per_epoch: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
) -> Recipe:
    """Labelled + unlabelled streams (semi-supervised training): each step ``labelled_bs`` labelled items, then
    ``unlabelled_bs`` unlabelled ones, of the same keys, stacked into one batch.

    Each stream walks through shuffled passes of its set (a new permutation when one is used up; seeded by
    ``(seed, epoch, stream)``), so a small labelled set is repeated while a large unlabelled one is not.
    An epoch is ``steps_per_epoch`` steps. The batch adds ``n_labelled`` (the labelled items come first) and
    ``iteration`` (``epoch * steps_per_epoch + step``, for ramp-ups). ``unlabelled`` None or ``unlabelled_bs``
    0: labelled items only. Under torchrun each process takes its share of both streams.
    """
    if labelled_bs < 1 or unlabelled_bs < 0 or steps_per_epoch < 1:
        raise ConfigError(f"need labelled_bs >= 1, unlabelled_bs >= 0 and steps_per_epoch >= 1; got {labelled_bs}, "
                          f"{unlabelled_bs}, {steps_per_epoch}")  # fmt: skip
    if len(labelled) == 0:  # type: ignore[arg-type]
        raise ConfigError("the labelled stream is empty")
    local_l = local_batch_size(labelled_bs, world)
    use_u = unlabelled is not None and unlabelled_bs > 0 and len(unlabelled) > 0  # type: ignore[arg-type]
    local_u = local_batch_size(unlabelled_bs, world) if use_u else 0
    streams = [labelled] + ([unlabelled] if use_u else [])

    def make(epoch: int) -> torch.utils.data.DataLoader:
        draws = [_endless(len(labelled), labelled_bs * steps_per_epoch, np.random.default_rng((seed, epoch, 0)))]  # type: ignore[arg-type]
        if use_u:
            n_u = len(unlabelled)  # type: ignore[arg-type]
            draws.append(_endless(n_u, unlabelled_bs * steps_per_epoch, np.random.default_rng((seed, epoch, 1))))
        plan = []
        for k in range(steps_per_epoch):
            step = []
            for s, (bs, local) in enumerate([(labelled_bs, local_l), (unlabelled_bs, local_u)][: len(streams)]):
                keys = range(k * bs + rank * local, k * bs + (rank + 1) * local)  # this rank's share of the step
                step += [(s, draws[s][key], key) for key in keys]
            plan.append(step)
        data = TwoStreamSteps(streams, plan, (seed, epoch), epoch * steps_per_epoch)
        return torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=workers)

    return make, steps_per_epoch
