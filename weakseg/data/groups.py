"""Image groups for co-salient object detection (DCFM): sets of images that share one salient object.

A group is a :class:`Group` over a :class:`~weakseg.data.dataset.SegDataset`: a name, the *target* it
shares and its members. Its ground truth (:func:`target_mask`) is the target's mask in each member:

- ``by="class"``: images that share an image-level class (any labelled dataset: the synthetic benchmark,
  coco128-seg, VOC, ...); the co-salient mask of a member is its mask of that class, so the same image can
  sit in two groups with two different answers (an image showing a dog and a car is "dog" in the dog group).
- ``by="record"``: the records' :attr:`~weakseg.data.dataset.Record.group` field (a CoSOD folder, DAVIS
  frames); the mask's foreground (any non-zero, non-255 value) is the co-salient object.

Training groups (:class:`GroupSampler`) generalise MCIS's pair sampler (:mod:`weakseg.data.pairs`): every
labelled image is an anchor once per epoch, a random one of its classes is picked and ``group_size − 1``
other images of that class join it (drawn without replacement; fewer when the class has fewer images).
Everything is drawn from ``numpy.random.default_rng((seed, epoch))`` and sharded by rank like the pairs.
Evaluation groups (:func:`eval_groups`) are fixed: the images of each target in index order, cut into
groups of at most ``group_size``.

Readers for data that come as groups (records with ``group`` set):

- :func:`open_cosal_folder`: the CoSOD layout ``images/<group>/<name>.jpg`` + ``gts/<group>/<name>.png``
  (0 / 255 masks), as CoCA, CoSal2015 and CoSOD3k are distributed;
- :func:`open_davis_frames`: DAVIS ``JPEGImages/480p/<seq>/`` + ``Annotations/480p/<seq>/`` frames, grouped by
  sequence or by object category (:data:`DAVIS_CATEGORIES`), every ``every``-th frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from weakseg.data.dataset import IGNORE, Record, SegDataset
from weakseg.data.davis import list_sequences, open_sequence
from weakseg.data.extra import item_seed
from weakseg.data.images import display_path, load_mask
from weakseg.data.pairs import class_index
from weakseg.data.recipes import Recipe, shard
from weakseg.data.registry import open_dataset
from weakseg.data.scan import list_images
from weakseg.data.transforms import Jitter, color_jitter, resize_square, to_tensor
from weakseg.errors import ConfigError, DataError, unknown_name

GROUPINGS = ("class", "record")

DAVIS_CATEGORIES: dict[str, str] = {
    "bear": "bear", "blackswan": "bird", "bmx-bumps": "person", "bmx-trees": "person", "boat": "boat",
    "breakdance": "person", "breakdance-flare": "person", "bus": "bus", "camel": "camel",
    "car-roundabout": "car", "car-shadow": "car", "car-turn": "car", "cows": "cow", "dance-jump": "person",
    "dance-twirl": "person", "dog": "dog", "dog-agility": "dog", "drift-chicane": "car",
    "drift-straight": "car", "drift-turn": "car", "elephant": "elephant", "flamingo": "bird",
    "goat": "goat", "hike": "person", "hockey": "person", "horsejump-high": "horse",
    "horsejump-low": "horse", "kite-surf": "person", "kite-walk": "person", "libby": "dog",
    "lucia": "person", "mallard-fly": "bird", "mallard-water": "bird", "motocross-bumps": "motorbike",
    "motocross-jump": "motorbike", "motorbike": "motorbike", "paragliding": "person",
    "paragliding-launch": "person", "parkour": "person", "rhino": "rhino", "rollerblade": "person",
    "scooter-black": "person", "scooter-gray": "person", "soapbox": "person", "soccerball": "ball",
    "stroller": "person", "surf": "person", "swing": "person", "tennis": "person", "train": "train",
}  # fmt: skip
"""object category of each DAVIS-2016 sequence (the annotated foreground's main object)"""

DAVIS_SPLITS: dict[str, tuple[str, ...]] = {
    "cosal-train": ("blackswan", "bmx-trees", "car-roundabout", "cows", "dog", "goat"),
    "cosal-eval": ("drift-chicane", "kite-surf", "libby", "parkour"),
}
"""sequence splits of the shared ten DAVIS-2016 sequences for co-saliency: every evaluation category (car,
person, dog) also has a training sequence, but no evaluation sequence is seen in training"""


@dataclass(frozen=True)
class Group:
    """A group: its ``name``, the ``target`` its members share (a class or a record-group index) and members."""

    name: str
    target: int
    members: tuple[int, ...]


@dataclass(frozen=True)
class GroupLabels:
    """What each image can be grouped by: ``labels[i]`` = the targets of image ``i``; ``names[t]`` names them."""

    by: str
    labels: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]


def group_labels(ds: SegDataset, by: str = "class") -> GroupLabels:
    """The targets of every image of ``ds``: its image-level classes (``by="class"``) or its record group."""
    if by == "class":
        return GroupLabels(by, tuple(tuple(r.labels) for r in ds.records), tuple(ds.class_names))
    if by == "record":
        missing = [r.image_id for r in ds.records if r.group is None]
        if missing:
            raise DataError(
                f"{display_path(ds.root)}: {len(missing)} records have no group (e.g. {missing[0]}); group by "
                "'class' instead, or use a layout with groups (images/<group>/ + gts/<group>/, DAVIS)"
            )
        names = tuple(sorted({str(r.group) for r in ds.records}))
        index = {n: t for t, n in enumerate(names)}
        return GroupLabels(by, tuple((index[str(r.group)],) for r in ds.records), names)
    raise unknown_name("grouping", by, GROUPINGS)


def target_mask(mask: np.ndarray, target: int, by: str) -> np.ndarray:
    """Co-salient ground truth ``uint8 [H, W]`` (0 / 1, 255 = ignore) of one member's mask for ``target``."""
    out = np.zeros(mask.shape, np.uint8)
    if by == "class":
        out[mask == target + 1] = 1
    else:
        out[(mask > 0) & (mask != IGNORE)] = 1
    out[mask == IGNORE] = IGNORE
    return out


def _draw_others(rng: np.random.Generator, anchor: int, members: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` distinct random images of ``members`` other than ``anchor`` (all of them when fewer)."""
    others = members[members != anchor]
    if len(others) <= k:
        return rng.permutation(others).tolist()
    return rng.choice(others, size=k, replace=False).tolist()


class GroupSampler:
    """Epoch-wise training groups (see the module docstring); deterministic in ``(seed, epoch)``, sharded.

    Only targets with at least ``min_members`` images form groups; an image with none of them is no anchor.
    ``max_groups`` cuts each epoch to its first groups (None: one group per anchor).
    """

    def __init__(
        self,
        labels: Sequence[Sequence[int]],
        num_targets: int,
        group_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        min_members: int = 2,
        max_groups: int | None = None,
    ):
        if group_size < 1:
            raise ConfigError(f"group_size must be at least 1, got {group_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        members = class_index(labels, num_targets)
        self.usable = [t for t in range(num_targets) if len(members[t]) >= min_members]
        if not self.usable:
            raise ConfigError(f"no target has {min_members} images or more: no group can be formed")
        self.members = members
        ok = set(self.usable)
        self.labels = [tuple(t for t in ls if t in ok) for ls in labels]
        self.anchors = np.asarray([i for i, ls in enumerate(self.labels) if ls], dtype=np.int64)
        self.group_size, self.seed, self.rank, self.world_size = group_size, seed, rank, world_size
        self.max_groups = max_groups

    def all_groups(self, epoch: int) -> list[Group]:
        """Every group of the epoch (all ranks), in order; the anchor is the first member."""
        rng = np.random.default_rng((self.seed, epoch))
        order = rng.permutation(self.anchors)
        if self.max_groups is not None:
            order = order[: self.max_groups]
        groups = []
        for a in order.tolist():
            ls = self.labels[a]
            t = ls[int(rng.integers(len(ls)))]
            others = _draw_others(rng, a, self.members[t], self.group_size - 1)
            groups.append(Group(f"e{epoch}_{len(groups)}", t, (a, *others)))
        return groups

    def groups(self, epoch: int) -> list[Group]:
        """This rank's groups of the epoch (padded so that every rank runs the same number of steps)."""
        return shard(self.all_groups(epoch), self.rank, self.world_size)

    def __len__(self) -> int:
        n = len(self.anchors) if self.max_groups is None else min(len(self.anchors), self.max_groups)
        return -(-n // self.world_size)


def eval_groups(gl: GroupLabels, group_size: int, min_size: int = 2, max_per_target: int | None = None) -> list[Group]:
    """Fixed evaluation groups: per target (in order), its images in index order cut into chunks.

    Chunks are as even as possible with at most ``group_size`` images each; a target with fewer than
    ``min_size`` images forms no group; ``max_per_target`` keeps only its first groups.
    """
    members = class_index(gl.labels, len(gl.names))
    out = []
    for t, m in enumerate(members):
        if len(m) < min_size:
            continue
        n_chunks = -(-len(m) // group_size)
        chunks = [c for c in np.array_split(m, n_chunks) if len(c)]
        for j, chunk in enumerate(chunks[:max_per_target]):
            out.append(Group(f"{gl.names[t]}_{j}", t, tuple(int(i) for i in chunk)))
    return out


class GroupDataset(torch.utils.data.Dataset):
    """Item ``k`` = group ``k`` at ``size × size``: ``{"image": [N, 3, S, S], "gt": [N, 1, S, S], "valid": ...}``.

    ``gt`` is the co-salient mask (0 / 1) and ``valid`` 0 on its ignore pixels. With ``augment`` each image
    is flipped horizontally with probability 1/2 and colour-jittered (torch's RNG, seeded by the recipe).
    """

    def __init__(self, ds: SegDataset, gl: GroupLabels, groups: Sequence[Group], size: int,
                 augment: bool = False, jitter: Jitter = Jitter()):  # fmt: skip
        self.ds, self.gl, self.groups, self.size = ds, gl, list(groups), size
        self.augment, self.jitter = augment, jitter

    def __len__(self) -> int:
        return len(self.groups)

    def member(self, i: int, target: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image ``i`` and its co-salient mask for ``target``: ``[3, S, S]``, ``gt [1, S, S]``, ``valid [1, S, S]``."""
        image = to_tensor(resize_square(self.ds.load_image(i), self.size))
        mask = self.ds.load_mask(i)
        if mask is None:
            raise DataError(f"image {self.ds.records[i].image_id} has no mask: co-saliency training needs them")
        gt = target_mask(mask, target, self.gl.by)
        gt = torch.from_numpy(np.array(_resize_nearest(gt, self.size)))[None]
        valid = (gt != IGNORE).float()
        gt = (gt == 1).float()
        if self.augment:
            if bool(torch.rand(()) < 0.5):
                image, gt, valid = image.flip(-1), gt.flip(-1), valid.flip(-1)
            image = color_jitter(image, self.jitter)
        return image, gt, valid

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        g = self.groups[k]
        parts = [self.member(i, g.target) for i in g.members]
        return {
            "image": torch.stack([p[0] for p in parts]),
            "gt": torch.stack([p[1] for p in parts]),
            "valid": torch.stack([p[2] for p in parts]),
        }


def _resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))


class _SeededGroups(torch.utils.data.Dataset):
    def __init__(self, inner: GroupDataset, keys: list[int], seed: tuple[int, ...]):
        self.inner, self.keys, self.seed = inner, keys, seed

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        with item_seed(*self.seed, self.keys[k]):
            return self.inner[k]


def group_batches(
    ds: SegDataset,
    gl: GroupLabels,
    *,
    input_size: int,
    group_size: int,
    jitter: Jitter,
    seed: int,
    max_groups: int | None = None,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
) -> Recipe:
    """One group per step (``{"image": [N, 3, S, S], "gt", "valid": [N, 1, S, S]}``), as DCFM trains."""
    sampler = GroupSampler(gl.labels, len(gl.names), group_size, seed, rank, world, max_groups=max_groups)

    def make(epoch: int) -> torch.utils.data.DataLoader:
        groups = sampler.groups(epoch)
        keys = list(range(rank, rank + world * len(groups), world))  # each group's place in the epoch
        data = _SeededGroups(GroupDataset(ds, gl, groups, input_size, augment=True, jitter=jitter), keys, (seed, epoch))
        return torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=workers)

    return make, len(sampler)


# ---------------------------------------------------------------------------- data that come as groups


class GroupedFrames(SegDataset):
    """Records that carry their ``group``, one binary mask file each (0 background, > 0 object; 255 kept
    as ignore only when the file also holds other non-zero values)."""

    def __init__(self, root: Path, split: str, records: Sequence[Record], masks: Sequence[Path | None]):
        super().__init__(root, split, ("object",), records)
        self._masks = list(masks)

    @property
    def has_masks(self) -> bool:
        return any(m is not None for m in self._masks)

    def load_mask(self, i: int) -> np.ndarray | None:
        path = self._masks[i]
        if path is None:
            return None
        m = load_mask(path)
        return (m > (127 if m.max(initial=0) > 1 else 0)).astype(np.uint8)  # 0/255 or 0/1 object masks → 0/1


def open_cosal_folder(root: str | Path) -> GroupedFrames:
    """A CoSOD folder: ``images/<group>/<name>.<ext>`` and ``gts/<group>/<name>.png`` (masks may be absent)."""
    root = Path(root)
    if not (root / "images").is_dir():
        raise DataError(f"{display_path(root)} has no images/ folder; a co-saliency folder holds "
                        "images/<group>/<name>.jpg and gts/<group>/<name>.png")  # fmt: skip
    records, masks = [], []
    for folder in sorted(p for p in (root / "images").iterdir() if p.is_dir()):
        for path in list_images(folder):
            gt = root / "gts" / folder.name / f"{path.stem}.png"
            records.append(Record(f"{folder.name}/{path.stem}", path, (0,), group=folder.name))
            masks.append(gt if gt.is_file() else None)
    if not records:
        raise DataError(f"{display_path(root / 'images')} holds no group folder with images")
    return GroupedFrames(root, "all", records, masks)


def davis_sequences(root: Path, split: str) -> tuple[str, ...]:
    """Sequences of a DAVIS split: a name of :data:`DAVIS_SPLITS`, ``all``, or a comma-separated list."""
    present = tuple(list_sequences(root))
    if split == "all":
        return present
    names = DAVIS_SPLITS.get(split) or tuple(s for s in split.split(",") if s)
    missing = [s for s in names if s not in present]
    if missing:
        raise DataError(f"DAVIS sequences {missing} are not in {display_path(root)}; present: {', '.join(present)}"
                        f"; splits: all, {', '.join(DAVIS_SPLITS)} or a comma-separated list")  # fmt: skip
    return names


def open_davis_frames(root: str | Path, split: str = "all", by: str = "category", every: int = 1) -> GroupedFrames:
    """DAVIS frames of ``split``'s sequences, every ``every``-th, grouped by ``category`` or ``sequence``."""
    root = Path(root)
    if by not in ("category", "sequence"):
        raise unknown_name("DAVIS grouping", by, ("category", "sequence"))
    records, masks = [], []
    for seq in davis_sequences(root, split):
        group = DAVIS_CATEGORIES.get(seq, seq) if by == "category" else seq
        frames = open_sequence(root, seq)
        for j, (path, gt) in enumerate(zip(frames.frames, frames.masks, strict=True)):
            if j % every:
                continue
            records.append(Record(f"{seq}/{path.stem}", path, (0,), group=group, sequence=seq, frame=j))
            masks.append(gt)
    return GroupedFrames(root, split, records, masks)


FORMATS = ("auto", "cosal", "davis")


def open_group_data(root: str | Path, split: str, fmt: str = "auto", *, by: str = "class", images: str = "all",
                    davis_by: str = "category", davis_every: int = 1) -> tuple[SegDataset, GroupLabels]:  # fmt: skip
    """A dataset and what its images are grouped by.

    ``fmt``: ``davis`` (``JPEGImages/480p/``), ``cosal`` (``images/<group>/`` + ``gts/<group>/``) or any
    :func:`~weakseg.data.registry.open_dataset` format (grouped by ``by``; ``auto`` tries DAVIS and CoSOD
    folders first). ``images``: ``all``, or ``even`` / ``odd`` to keep only the records of even / odd index
    (two disjoint halves of a small set, e.g. coco128-seg's one split).
    """
    root = Path(root)
    if fmt == "auto":
        if (root / "JPEGImages" / "480p").is_dir():
            fmt = "davis"
        elif (root / "images").is_dir() and (root / "gts").is_dir():
            fmt = "cosal"
    if fmt == "davis":
        ds: SegDataset = open_davis_frames(root, split, davis_by, davis_every)
        by = "record"
    elif fmt == "cosal":
        ds, by = open_cosal_folder(root), "record"
    else:
        ds = open_dataset(root, split, fmt)
    if images != "all":
        if images not in ("even", "odd"):
            raise unknown_name("image subset", images, ("all", "even", "odd"))
        keep = [r for i, r in enumerate(ds.records) if i % 2 == (0 if images == "even" else 1)]
        ds = _Subset(ds, keep)
    return ds, group_labels(ds, by)


class _Subset(SegDataset):
    """Some records of another dataset (images and masks read through it)."""

    def __init__(self, inner: SegDataset, records: Sequence[Record]):
        super().__init__(inner.root, inner.split, inner.class_names, records)
        self.inner = inner

    @property
    def has_masks(self) -> bool:
        return self.inner.has_masks

    def load_image(self, i: int) -> np.ndarray:
        return self.inner.load_image(self.inner.index_of(self.records[i].image_id))

    def load_mask(self, i: int) -> np.ndarray | None:
        return self.inner.load_mask(self.inner.index_of(self.records[i].image_id))
