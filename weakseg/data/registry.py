"""Dataset formats by name, and ``open_dataset`` that picks the right one from the files present."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from weakseg.data import coco, folder, voc, yolo
from weakseg.data.dataset import SegDataset
from weakseg.data.images import display_path
from weakseg.data.scan import Problem, Scan
from weakseg.errors import DataError, unknown_name


@dataclass(frozen=True)
class Format:
    """A dataset format: its loader, how to recognise its folder, list its splits and scan one without decoding."""

    dataset: Callable[[Path, str], SegDataset]
    """``dataset(root, split)``: the loader"""
    detect: Callable[[Path], bool]
    """``detect(root)``: whether a folder has this layout"""
    splits: Callable[[Path], list[str]]
    """``splits(root)``: the split names present"""
    scan: Callable[[Path, str], Scan]
    """``scan(root, split)``: the split indexed without decoding pixels, problems collected (``weakseg data check``)"""
    layout: str
    """one line describing the files it expects (shown when no format matches)"""
    orphans: Callable[[Path], list[Problem]] | None = None
    """``orphans(root)``: files of the dataset that belong to no image (label files, masks, label rows), as
    warnings for ``weakseg data check`` (errors with ``--strict``)"""


FORMATS: dict[str, Format] = {
    "coco": Format(coco.COCODataset, coco.is_coco, coco.available_splits, coco.scan,
                   "annotations/instances_<split>2014.json, <split>2014/"),
    "voc": Format(voc.VOCDataset, voc.is_voc, voc.available_splits, voc.scan,
                  "JPEGImages/, SegmentationClass/, ImageSets/Segmentation/<split>.txt", voc.orphans),
    "yolo": Format(yolo.YOLODataset, yolo.is_yolo, yolo.available_splits, yolo.scan,
                   "images/, labels/*.txt (polygons), classes.txt", yolo.orphans),
    "folder": Format(folder.FolderDataset, folder.is_folder, folder.available_splits, folder.scan,
                     "images/, labels.csv and/or masks/, classes.txt", folder.orphans),
}  # fmt: skip
"""Every dataset format by name; ``auto`` tries them in this order (the most specific layouts first)."""


def register_format(name: str, fmt: Format, *, first: bool = False) -> Format:
    """Add a format (``first``: try it before the others in ``auto`` detection)."""
    if name in FORMATS or name == "auto":
        raise DataError(f"dataset format {name!r} is already registered")
    items = [(name, fmt), *FORMATS.items()] if first else [*FORMATS.items(), (name, fmt)]
    FORMATS.clear()
    FORMATS.update(items)
    return fmt


def detect_format(root: str | Path) -> str:
    """The format of a dataset folder, from the files present (the first of :data:`FORMATS` that matches)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {display_path(root)}; check the path (or download/generate it)")
    for name, fmt in FORMATS.items():
        if fmt.detect(root):
            return name
    layouts = "\n".join(f"  {name + ':':<8}{fmt.layout}" for name, fmt in FORMATS.items())
    raise DataError(f"cannot tell the format of {display_path(root)}; expected one of these layouts:\n{layouts}")


def open_dataset(root: str | Path, split: str = "train", fmt: str = "auto") -> SegDataset:
    """Open one split of a dataset. ``fmt``: auto or a name of :data:`FORMATS` (voc, coco, yolo, folder)."""
    root = Path(root)
    if fmt != "auto" and fmt not in FORMATS:
        raise unknown_name("dataset format", fmt, [*FORMATS, "auto"])
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {display_path(root)}; check the path (or download/generate it)")
    name = detect_format(root) if fmt == "auto" else fmt
    return FORMATS[name].dataset(root, split)
