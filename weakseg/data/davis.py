"""DAVIS video object segmentation sequences (DAVIS 2016 and 2017 layouts) for box-initialised VOS.

Layout (the official one; ``resolution`` is ``480p`` unless told)::

    <root>/JPEGImages/<resolution>/<sequence>/<frame>.jpg
    <root>/Annotations/<resolution>/<sequence>/<frame>.png
    <root>/ImageSets/{2016,2017}/{train,val}.txt      optional: sequence lists per split

Masks: DAVIS 2017 palette PNGs hold object ids 1..N (0 background, 255 void); DAVIS 2016 masks hold
0 / 255 for one object. A sequence whose masks hold only the values 0 and 255 is read as DAVIS 2016
(255 → object 1, no void); otherwise 255 is void. :class:`DavisDataset` gives one
:class:`~weakseg.data.dataset.Record` per frame with ``sequence``/``frame`` set and the frame-0 boxes of
every object (from the first mask) on frame 0's record.

Frames can be read downscaled (``width``: frames area-averaged, masks nearest) and subsampled
(``step``: every ``step``-th frame); the object ids of the first read frame define the targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from weakseg.data.dataset import IGNORE, Box, Record, SegDataset
from weakseg.data.images import IMAGE_EXTENSIONS, display_path, load_mask, load_rgb
from weakseg.errors import DataError, unknown_name

RESOLUTION = "480p"


@dataclass(frozen=True)
class DavisSequence:
    """One sequence: its name and its frame / annotation files in frame order."""

    name: str
    frames: tuple[Path, ...]
    masks: tuple[Path, ...]


@dataclass(frozen=True)
class VideoClip:
    """A loaded sequence: ``frames uint8 [T, H, W, 3]``, ``masks uint8 [T, H, W]`` (object ids, 255 = void)."""

    name: str
    frames: np.ndarray
    masks: np.ndarray
    frame_ids: tuple[int, ...]
    """index in the full sequence of each loaded frame"""

    @property
    def objects(self) -> tuple[int, ...]:
        """Object ids present on the first loaded frame (the targets of box-initialised VOS)."""
        return tuple(int(v) for v in np.unique(self.masks[0]) if v not in (0, IGNORE))

    def first_box(self, obj: int) -> np.ndarray:
        """Object ``obj``'s tight frame-0 box ``float [4]`` = ``(x0, y0, x1, y1)``, ends exclusive."""
        ys, xs = np.nonzero(self.masks[0] == obj)
        if len(xs) == 0:
            raise DataError(f"sequence {self.name}: object {obj} is not on the first frame")
        return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def is_davis(root: str | Path, resolution: str = RESOLUTION) -> bool:
    root = Path(root)
    return (root / "JPEGImages" / resolution).is_dir() and (root / "Annotations" / resolution).is_dir()


def list_sequences(root: str | Path, split: str = "all", resolution: str = RESOLUTION) -> list[str]:
    """Sequence names of ``split``: ``all`` = every folder under JPEGImages, else ``ImageSets/*/<split>.txt``."""
    root = Path(root)
    if not is_davis(root, resolution):
        raise DataError(
            f"{display_path(root)} is not a DAVIS folder: expected JPEGImages/{resolution}/<sequence>/ and "
            f"Annotations/{resolution}/<sequence>/; point --data at the folder that holds JPEGImages"
        )
    names = sorted(p.name for p in (root / "JPEGImages" / resolution).iterdir() if p.is_dir())
    if split == "all":
        return names
    for year in ("2017", "2016"):
        path = root / "ImageSets" / year / f"{split}.txt"
        if path.is_file():
            listed = [ln.split()[0].strip("/").split("/")[-1] for ln in path.read_text().splitlines() if ln.strip()]
            return list(dict.fromkeys(n for n in listed if n in names))
    raise DataError(f"{display_path(root)} has no ImageSets/2017/{split}.txt or ImageSets/2016/{split}.txt; "
                    "use split 'all' or name the sequences")  # fmt: skip


def open_sequence(root: str | Path, name: str, resolution: str = RESOLUTION) -> DavisSequence:
    """The files of sequence ``name``; a frame without its annotation is a DataError naming it."""
    root = Path(root)
    img_dir, ann_dir = root / "JPEGImages" / resolution / name, root / "Annotations" / resolution / name
    if not img_dir.is_dir():
        raise unknown_name("DAVIS sequence", name, list_sequences(root, "all", resolution))
    frames = tuple(sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS))
    if not frames:
        raise DataError(f"{display_path(img_dir)} holds no frames (.jpg/.png); add them or remove the folder")
    masks = tuple(ann_dir / f"{f.stem}.png" for f in frames)
    missing = [m for m in masks if not m.is_file()]
    if missing:
        raise DataError(f"DAVIS annotation {display_path(missing[0])} is missing ({len(missing)} of {len(masks)} "
                        "frames lack one); every frame needs its PNG of object ids")  # fmt: skip
    return DavisSequence(name, frames, masks)


def davis_mask(mask: np.ndarray, binary: bool) -> np.ndarray:
    """A raw DAVIS mask → object ids with 255 = void; ``binary`` (DAVIS 2016): 255 is the object (id 1)."""
    if binary:
        return (mask > 127).astype(np.uint8)
    return mask


def _is_binary(paths: Sequence[Path]) -> bool:
    values = np.unique(load_mask(paths[0]))
    return bool(set(values.tolist()) <= {0, 255})


def load_clip(seq: DavisSequence, width: int | None = None, step: int = 1, max_frames: int | None = None) -> VideoClip:
    """Read every ``step``-th frame of ``seq`` (at most ``max_frames``), resized to ``width`` px wide if given."""
    ids = list(range(0, len(seq.frames), max(1, step)))[: max_frames or None]
    binary = _is_binary(seq.masks)
    frames, masks = [], []
    for t in ids:
        img, m = load_rgb(seq.frames[t]), davis_mask(load_mask(seq.masks[t]), binary)
        if img.shape[:2] != m.shape:
            raise DataError(f"{display_path(seq.masks[t])} is {m.shape[1]}x{m.shape[0]} but its frame is "
                            f"{img.shape[1]}x{img.shape[0]}; annotations must match their frames")  # fmt: skip
        if width is not None and width != img.shape[1]:
            h = max(1, round(img.shape[0] * width / img.shape[1]))
            img = np.asarray(Image.fromarray(img).resize((width, h), Image.BOX))
            m = np.asarray(Image.fromarray(m).resize((width, h), Image.NEAREST))
        frames.append(img)
        masks.append(m)
    return VideoClip(seq.name, np.stack(frames), np.stack(masks), tuple(ids))


class DavisDataset(SegDataset):
    """Every frame of the chosen sequences as records (``sequence``, ``frame``); one class, ``object``.

    ``load_mask`` gives the binary foreground (every object id → 1, void stays 255), the semantic view; the
    object ids are in :func:`load_clip`. Frame 0's record carries each object's box.
    """

    def __init__(
        self, root: str | Path, split: str = "all", sequences: Sequence[str] = (), resolution: str = RESOLUTION
    ):
        root = Path(root)
        names = list(sequences) or list_sequences(root, split, resolution)
        self.sequences = [open_sequence(root, n, resolution) for n in names]
        records, self._masks, self._binary = [], [], []
        for seq in self.sequences:
            binary = _is_binary(seq.masks)
            first = davis_mask(load_mask(seq.masks[0]), binary)
            boxes = tuple(
                Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, 0)
                for obj in np.unique(first)
                if obj not in (0, IGNORE)
                for ys, xs in [np.nonzero(first == obj)]
            )
            for t, (f, m) in enumerate(zip(seq.frames, seq.masks, strict=True)):
                records.append(Record(f"{seq.name}/{f.stem}", f, (0,), boxes=boxes if t == 0 else (),
                                      sequence=seq.name, frame=t))  # fmt: skip
                self._masks.append(m)
                self._binary.append(binary)
        super().__init__(root, split, ("object",), records)

    def load_mask(self, i: int) -> np.ndarray:
        m = davis_mask(load_mask(self._masks[i]), self._binary[i])
        return np.where(m == IGNORE, IGNORE, (m > 0).astype(np.uint8)).astype(np.uint8)
