"""Dataset formats by name, and ``open_dataset`` that picks the right one from the files present."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from weakseg.data import coco, folder, voc, yolo
from weakseg.data.dataset import SegDataset
from weakseg.data.images import display_path
from weakseg.data.scan import Scan
from weakseg.errors import DataError, unknown_name

FORMATS: dict[str, type[SegDataset]] = {
    "voc": voc.VOCDataset,
    "coco": coco.COCODataset,
    "yolo": yolo.YOLODataset,
    "folder": folder.FolderDataset,
}
SPLITS: dict[str, Callable[[Path], list[str]]] = {
    "voc": voc.available_splits,
    "coco": coco.available_splits,
    "yolo": yolo.available_splits,
    "folder": folder.available_splits,
}
"""Each format's ``available_splits(root)``: the split names present in a folder."""
SCANS: dict[str, Callable[[Path, str], Scan]] = {
    "voc": voc.scan,
    "coco": coco.scan,
    "yolo": yolo.scan,
    "folder": folder.scan,
}
"""Each format's ``scan(root, split)``: the split indexed without decoding pixels, problems collected."""

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
    for name, test in (
        ("coco", coco.is_coco),
        ("voc", voc.is_voc),
        ("yolo", yolo.is_yolo),
        ("folder", folder.is_folder),
    ):
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
