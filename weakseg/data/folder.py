"""A plain folder format for your own data::

    <root>/images/<name>.<jpg|png|...>
    <root>/masks/<name>.png        optional class-index masks (same stem as the image)
    <root>/labels.csv              image-level labels in the cls_labels.csv format (image_id = stem)
    <root>/classes.txt             one foreground class name per line
    <root>/splits/<split>.txt      optional; one image name (or stem) per line. Split "all" = every image
    <root>/boxes.csv               optional object boxes: image_id,x0,y0,x1,y1,class_name (0-based pixels,
                                   x1/y1 exclusive; see weakseg.data.boxes)
    <root>/scribbles/<name>.png    optional partial labels: 255 = unknown, 0 = background, c+1 = class c

An image needs a row in ``labels.csv`` (an empty row = no object) or a mask to get its labels.
"""

from __future__ import annotations

from pathlib import Path

from weakseg.data.boxes import BOXES_CSV, read_boxes_csv, scan_boxes
from weakseg.data.dataset import Box, MaskFileDataset, Record
from weakseg.data.images import display_path, load_mask
from weakseg.data.labels import CLASSES_TXT, labels_from_mask, read_classes, scan_cls_labels
from weakseg.data.scan import (
    Entry,
    Problem,
    Scan,
    header_size,
    list_images,
    non_utf8_problems,
    orphan_files,
    orphan_rows,
    raise_errors,
    resolve_listed,
)
from weakseg.errors import DataError

LABELS_CSV = "labels.csv"


def is_folder(root: Path) -> bool:
    return (root / "images").is_dir() and ((root / LABELS_CSV).is_file() or (root / "masks").is_dir())


def available_splits(root: str | Path) -> list[str]:
    d = Path(root) / "splits"
    return ["all"] + (sorted(p.stem for p in d.glob("*.txt") if p.stem != "all") if d.is_dir() else [])


def scan(root: str | Path, split: str = "all") -> Scan:
    root = Path(root)
    if not (root / CLASSES_TXT).is_file():
        raise DataError(f"{display_path(root / CLASSES_TXT)} not found; write one foreground class name per line")
    names = read_classes(root / CLASSES_TXT)
    image_dir, mask_dir = root / "images", root / "masks"
    if split == "all":
        images, problems = list_images(image_dir), []
        source = display_path(image_dir)
    else:
        split_file = root / "splits" / f"{split}.txt"
        images, problems = resolve_listed(root, image_dir, split_file)
        source = display_path(split_file)
    images, bad = non_utf8_problems(images)
    problems += bad
    labels: dict[str, tuple[int, ...]] = {}
    csv_path = root / LABELS_CSV
    if csv_path.is_file():
        labels, issues = scan_cls_labels(csv_path, names)
        problems += [
            Problem(display_path(csv_path), f"labels_{i.kind}", i.message, "fix the row in the label file")
            for i in issues
        ]
    boxes: dict[str, list[Box]] = {}
    if (root / BOXES_CSV).is_file():
        boxes, found = read_boxes_csv(root / BOXES_CSV, names)
        problems += found
    scribble_dir = root / "scribbles"
    has_scribbles = scribble_dir.is_dir()
    entries: list[Entry] = []
    stems: dict[str, Path] = {}
    for img in images:
        if img.stem in stems and stems[img.stem] != img:
            problems.append(
                Problem(
                    display_path(img),
                    "duplicate_id",
                    f"{display_path(img)} and {display_path(stems[img.stem])} share the id {img.stem!r}",
                    "rename one of them; image ids are file names without extension",
                )
            )
            continue
        stems[img.stem] = img
        mask = mask_dir / f"{img.stem}.png"
        mask = mask if mask.is_file() else None
        lab = labels.get(img.stem)
        if lab is None and mask is None:
            problems.append(
                Problem(
                    display_path(img),
                    "no_labels",
                    f"image {img.name!r} has no row in {LABELS_CSV} and no mask; it is left out",
                    f"add a row '{img.stem},<class names>' to {display_path(csv_path)} (empty = no object)",
                    "warning",
                )
            )
            continue
        entry = Entry(img.stem, img, mask, lab, source)
        if boxes.get(img.stem) and (size := header_size(img)) is not None:
            what = f"image {img.stem!r}"
            entry.boxes, found = scan_boxes(boxes[img.stem], size[1], size[0], root / BOXES_CSV, len(names), what)
            problems += found
        scribbles = scribble_dir / f"{img.stem}.png"
        entry.scribbles = scribbles if has_scribbles and scribbles.is_file() else None
        entries.append(entry)
    return Scan(names, entries, problems)


def orphans(root: str | Path) -> list[Problem]:
    """Masks, scribbles and rows of ``labels.csv`` / ``boxes.csv`` whose image is not in ``images/``."""
    root = Path(root)
    stems = {p.stem for p in list_images(root / "images")}
    out = []
    for sub, kind in (("masks", "orphan_mask"), ("scribbles", "orphan_scribble")):
        files = [p for p in (root / sub).glob("*.png") if p.stem not in stems] if (root / sub).is_dir() else []
        out += orphan_files(files, kind, sub[:-1], f"restore its image in images/ or delete the {sub[:-1]}")
    return out + orphan_rows(root / LABELS_CSV, stems) + orphan_rows(root / BOXES_CSV, stems)


class FolderDataset(MaskFileDataset):
    """A split of a plain folder dataset (see module docstring)."""

    def __init__(self, root: str | Path, split: str = "all"):
        root = Path(root)
        s = scan(root, split)
        raise_errors(s.problems, f"{display_path(root)} (folder format, split {split!r})", n_entries=len(s.entries))
        records = []
        for e in s.entries:
            labels = e.labels
            if labels is None:
                try:
                    labels = labels_from_mask(load_mask(e.mask_path), len(s.class_names))  # type: ignore[arg-type]
                except ValueError as err:
                    raise DataError(f"mask {display_path(e.mask_path)}: {err}; fix the mask or classes.txt") from None
            records.append(Record(e.image_id, e.image_path, labels, boxes=e.boxes, scribbles=e.scribbles))
        super().__init__(root, split, s.class_names, records, [e.mask_path for e in s.entries])
