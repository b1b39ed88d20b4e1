"""PASCAL VOC 2012 layout (and the SBD "aug" masks); also the layout of the synthetic benchmark.

::

    <root>/JPEGImages/<id>.jpg
    <root>/SegmentationClass/<id>.png         palette PNGs (VOC 2012)
    <root>/SegmentationClassAug/<id>.png      grayscale PNGs (SBD, 10,582 train_aug images)
    <root>/ImageSets/Segmentation/<split>.txt train, val, trainval, train_aug: one id per line
    <root>/classes.txt                        optional; else the 20 VOC names
    <root>/cls_labels.csv                     optional image-level labels; else computed from masks
    <root>/Annotations/<id>.xml               optional VOC detection XML: the records' boxes

Split ``train_aug`` takes its masks from ``SegmentationClassAug``; other splits from
``SegmentationClass``, falling back to ``SegmentationClassAug`` for ids missing there. Split-file lines
of the DeepLab form ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` are accepted too.

Boxes: when ``Annotations/`` exists, each ``<object>``'s ``<bndbox>`` becomes a record box. VOC XML
counts pixels from 1 with both ends inclusive; records count from 0 with ``x1``/``y1`` exclusive, so
``xmin=1, xmax=10`` (ten columns) becomes ``x0=0, x1=10``. An image without an XML file has no boxes.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

from weakseg.data.boxes import scan_boxes
from weakseg.data.dataset import Box, MaskFileDataset, Record
from weakseg.data.images import IMAGE_EXTENSIONS, display_path, load_mask
from weakseg.data.labels import (
    CLASSES_TXT,
    CLS_LABELS,
    labels_from_mask,
    read_classes,
    scan_cls_labels,
    write_cls_labels,
)
from weakseg.data.scan import Entry, Problem, Scan, header_size, orphan_files, orphan_rows, raise_errors
from weakseg.errors import DataError

log = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
SPLIT_DIR = Path("ImageSets") / "Segmentation"
ANNOTATIONS = "Annotations"


def is_voc(root: Path) -> bool:
    return (root / SPLIT_DIR).is_dir() or (root / "JPEGImages").is_dir()


def available_splits(root: str | Path) -> list[str]:
    """Split names that have a split file."""
    d = Path(root) / SPLIT_DIR
    return sorted(p.stem for p in d.glob("*.txt")) if d.is_dir() else []


def class_names(root: Path) -> tuple[str, ...]:
    return read_classes(root / CLASSES_TXT) if (root / CLASSES_TXT).is_file() else VOC_CLASSES


def read_split_ids(split_file: Path) -> list[str]:
    """Ids of a split file (first token of each line; a path token is reduced to its stem)."""
    try:
        text = split_file.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"split file not found: {display_path(split_file)}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{display_path(split_file)} is not UTF-8 text ({e}); re-save it as UTF-8") from None
    ids = []
    for line in text.splitlines():
        tok = line.split()
        if not tok:
            continue
        ids.append(Path(tok[0]).stem if ("/" in tok[0] or "." in tok[0]) else tok[0])
    return ids


def _find_image(root: Path, image_id: str) -> Path:
    p = root / "JPEGImages" / f"{image_id}.jpg"
    if p.exists():
        return p
    for ext in IMAGE_EXTENSIONS:
        q = root / "JPEGImages" / f"{image_id}{ext}"
        if q.exists():
            return q
    return p


def _mask_dirs(root: Path, split: str) -> list[Path]:
    dirs = ["SegmentationClassAug", "SegmentationClass"] if split == "train_aug" else ["SegmentationClass"]
    if "SegmentationClassAug" not in dirs:
        dirs.append("SegmentationClassAug")
    return [root / d for d in dirs]


def scan(root: str | Path, split: str) -> Scan:
    """Index a VOC-layout split without decoding any image (problems collected, not raised)."""
    root = Path(root)
    split_file = root / SPLIT_DIR / f"{split}.txt"
    if not split_file.is_file():
        have = ", ".join(available_splits(root)) or "none"
        raise DataError(
            f"split file not found: {display_path(split_file)} (splits present: {have}); "
            f"create it with one image id per line, or pick an existing split"
        )
    names = class_names(root)
    ids = read_split_ids(split_file)
    problems: list[Problem] = []
    seen: set[str] = set()
    csv_labels: dict[str, tuple[int, ...]] = {}
    csv_path = root / CLS_LABELS
    if csv_path.is_file():
        csv_labels, issues = scan_cls_labels(csv_path, names)
        problems += [
            Problem(display_path(csv_path), f"labels_{i.kind}", i.message, "fix the row in the label file")
            for i in issues
        ]
    mask_dirs = [d for d in _mask_dirs(root, split) if d.is_dir()]
    has_xml = (root / ANNOTATIONS).is_dir()
    entries = []
    for image_id in ids:
        if image_id in seen:
            problems.append(
                Problem(
                    display_path(split_file),
                    "duplicate_id",
                    f"{image_id!r} is listed twice in {display_path(split_file)}",
                    "remove the repeated line",
                    "warning",
                )
            )
            continue
        seen.add(image_id)
        image = _find_image(root, image_id)
        if not image.exists():
            problems.append(
                Problem(
                    display_path(image),
                    "missing_file",
                    f"image {display_path(image)} (listed in {display_path(split_file)}) does not exist",
                    f"add the image or remove {image_id!r} from the split file",
                )
            )
            continue
        mask = next((d / f"{image_id}.png" for d in mask_dirs if (d / f"{image_id}.png").is_file()), None)
        labels = csv_labels.get(image_id)
        if labels is None and mask is None:
            problems.append(
                Problem(
                    display_path(image),
                    "no_labels",
                    f"image {image_id!r} has neither a row in {CLS_LABELS} nor a mask; it is left out",
                    f"add a row to {display_path(csv_path)} (empty labels = no object) or a mask PNG",
                    "warning",
                )
            )
            continue
        entry = Entry(image_id, image, mask, labels, display_path(split_file))
        xml = root / ANNOTATIONS / f"{image_id}.xml"
        if has_xml and xml.is_file():
            boxes, size, found = read_voc_xml(xml, names)
            size = size or header_size(image)
            problems += found
            if size is not None:
                entry.boxes, found = scan_boxes(boxes, size[1], size[0], xml, len(names))
                problems += found
        entries.append(entry)
    return Scan(names, entries, problems)


def orphans(root: str | Path) -> list[Problem]:
    """Masks, annotation XMLs and ``cls_labels.csv`` rows whose image is not in ``JPEGImages/``."""
    root = Path(root)
    folder = root / "JPEGImages"
    ids = {p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS} if folder.is_dir() else set()
    out = []
    for sub, pattern, kind, what in (
        ("SegmentationClass", "*.png", "orphan_mask", "mask"),
        ("SegmentationClassAug", "*.png", "orphan_mask", "mask"),
        (ANNOTATIONS, "*.xml", "orphan_annotation", "annotation"),
    ):
        files = [p for p in (root / sub).glob(pattern) if p.stem not in ids] if (root / sub).is_dir() else []
        out += orphan_files(files, kind, what, f"restore its image in JPEGImages/ or delete the {what}")
    return out + orphan_rows(root / CLS_LABELS, ids)


def read_voc_xml(path: Path, class_names: Sequence[str]) -> tuple[list[Box], tuple[int, int] | None, list[Problem]]:
    """The boxes of a VOC annotation XML (converted to 0-based, exclusive ends), its ``(width, height)``
    (None when the file gives none) and its problems (unreadable XML, unknown class names, bad numbers).
    """
    name = display_path(path)
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        return [], None, [Problem(name, "boxes_format", f"{name} is not readable XML ({e})", "fix or delete the file")]
    ann = tree.getroot()
    size = None
    try:
        w, h = int(float(ann.findtext("size/width", "0"))), int(float(ann.findtext("size/height", "0")))
        size = (w, h) if w > 0 and h > 0 else None
    except ValueError:
        pass
    lookup = {n: i for i, n in enumerate(class_names)}
    boxes: list[Box] = []
    problems: list[Problem] = []
    for k, obj in enumerate(ann.iter("object")):
        cls_name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if bb is None:
            continue
        if cls_name not in lookup:
            msg = (
                f"{name}: object {k + 1} has class name {cls_name!r}, not in the class list ({', '.join(class_names)})"
            )
            problems.append(Problem(name, "boxes_unknown_class", msg, "fix the name or classes.txt"))
            continue
        try:
            xmin, ymin, xmax, ymax = (round(float(bb.findtext(t) or "")) for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            msg = f"{name}: object {k + 1} ({cls_name}) has a bndbox without four numbers"
            problems.append(Problem(name, "boxes_format", msg, "fix the bndbox"))
            continue
        boxes.append(Box(xmin - 1, ymin - 1, xmax, ymax, lookup[cls_name]))  # 1-based inclusive -> 0-based exclusive
    return boxes, size, problems


class VOCDataset(MaskFileDataset):
    """A split of a VOC-layout dataset (VOC 2012, VOC + SBD aug, or the synthetic benchmark)."""

    def __init__(self, root: str | Path, split: str = "train"):
        root = Path(root)
        s = scan(root, split)
        raise_errors(s.problems, f"{display_path(root)} (VOC layout, split {split!r})", n_entries=len(s.entries))
        records = []
        computed = 0
        for e in s.entries:
            labels = e.labels
            if labels is None:
                labels = _labels_of_mask(e.mask_path, len(s.class_names))  # type: ignore[arg-type]
                computed += 1
            records.append(Record(e.image_id, e.image_path, labels, boxes=e.boxes))
        if computed > 200:
            log.info(
                "computed the labels of %d images from their masks; run `weakseg data build-labels %s` to cache them",
                computed,
                root,
            )
        super().__init__(root, split, s.class_names, records, [e.mask_path for e in s.entries])


def _labels_of_mask(path: Path, num_classes: int) -> tuple[int, ...]:
    try:
        return labels_from_mask(load_mask(path), num_classes)
    except ValueError as e:
        raise DataError(f"mask {display_path(path)}: {e}; fix the mask or the class list") from None


def build_labels(root: str | Path, splits: Iterable[str] | None = None) -> Path:
    """Write ``<root>/cls_labels.csv`` from the masks of the given splits (default: every split)."""
    root = Path(root)
    names = class_names(root)
    chosen = list(splits) if splits is not None else available_splits(root)
    if not chosen:
        raise DataError(f"no split files in {display_path(root / SPLIT_DIR)}; nothing to build labels for")
    labels: dict[str, tuple[int, ...]] = {}
    missing: list[str] = []
    for split in chosen:
        dirs = [d for d in _mask_dirs(root, split) if d.is_dir()]
        for image_id in read_split_ids(root / SPLIT_DIR / f"{split}.txt"):
            if image_id in labels:
                continue
            mask = next((d / f"{image_id}.png" for d in dirs if (d / f"{image_id}.png").is_file()), None)
            if mask is None:
                missing.append(image_id)
                continue
            labels[image_id] = _labels_of_mask(mask, len(names))
    if missing:
        raise DataError(
            f"{len(missing)} image(s) have no mask in SegmentationClass/SegmentationClassAug (e.g. "
            f"{', '.join(missing[:5])}); build labels only for splits with masks, or add the masks"
        )
    return write_cls_labels(root / CLS_LABELS, labels, names)
