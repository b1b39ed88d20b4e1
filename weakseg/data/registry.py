"""Dataset formats by name, and ``open_dataset`` that picks the right one from the files present."""

from __future__ import annotations

from pathlib import Path

from weakseg.data.coco import COCODataset, is_coco
from weakseg.data.dataset import SegDataset
from weakseg.data.folder import FolderDataset, is_folder
from weakseg.data.images import display_path
from weakseg.data.voc import VOCDataset, is_voc
from weakseg.data.yolo import YOLODataset, is_yolo
from weakseg.errors import DataError, unknown_name

FORMATS: dict[str, type[SegDataset]] = {
    "voc": VOCDataset,
    "coco": COCODataset,
    "yolo": YOLODataset,
    "folder": FolderDataset,
}

_LAYOUTS = """\
  voc:    JPEGImages/, SegmentationClass/, ImageSets/Segmentation/<split>.txt
  coco:   annotations/instances_<split>2014.json, <split>2014/
  yolo:   images/, labels/*.txt (polygons), classes.txt
  folder: images/, labels.csv and/or masks/, classes.txt"""


def detect_format(root: str | Path) -> str:
    """The format of a dataset folder, from the files present (order: coco, voc, yolo, folder)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {display_path(root)}; check the path (or download/generate it)")
    for name, test in (("coco", is_coco), ("voc", is_voc), ("yolo", is_yolo), ("folder", is_folder)):
        if test(root):
            return name
    raise DataError(f"cannot tell the format of {display_path(root)}; expected one of these layouts:\n{_LAYOUTS}")


def open_dataset(root: str | Path, split: str = "train", fmt: str = "auto") -> SegDataset:
    """Open one split of a dataset. ``fmt``: auto, voc, coco, yolo or folder."""
    root = Path(root)
    if fmt != "auto" and fmt not in FORMATS:
        raise unknown_name("dataset format", fmt, [*FORMATS, "auto"])
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {display_path(root)}; check the path (or download/generate it)")
    name = detect_format(root) if fmt == "auto" else fmt
    return FORMATS[name](root, split)
