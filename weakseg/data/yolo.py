"""YOLO segmentation folders (Ultralytics format)::

    <root>/images/<name>.jpg            or images/<split>/<name>.jpg
    <root>/labels/<name>.txt            or labels/<split>/<name>.txt; one object per line:
                                        ``class x1 y1 x2 y2 ...`` (polygon, coordinates normalised to 0..1)
    <root>/classes.txt                  one class name per line (the ``names`` of data.yaml, in order)

Split ``all`` = every image in ``images/``; a split ``s`` is ``images/s/`` when that folder exists,
else the list file ``<root>/s.txt`` or ``<root>/splits/s.txt`` (image paths relative to the root, or
names). An image without a label file shows no object (empty label set). Masks are rasterised with
PIL in file order, later polygons over earlier ones; a 5-number line (a detection box) is drawn as
its rectangle.

Each record's ``boxes`` are the bounding boxes of its polygons, in file order, in pixels of the
EXIF-rotated image (:meth:`~weakseg.data.dataset.Box.around` of the scaled polygon, cut to the
image; like the polygons themselves). PIL also fills the pixels a polygon edge only touches, so where an
edge lies exactly on a pixel boundary the drawn mask reaches one pixel past the box. Scanning reads the
header of each labelled image for its size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from weakseg.data.dataset import Box, Record, SegDataset
from weakseg.data.images import display_path, image_size
from weakseg.data.labels import CLASSES_TXT, read_classes
from weakseg.data.scan import (
    Entry,
    Problem,
    Scan,
    header_size,
    images_under,
    list_images,
    non_utf8_problems,
    orphan_files,
    raise_errors,
    resolve_listed,
)
from weakseg.errors import DataError

Polygon = tuple[int, np.ndarray]  # (class, float32 [N, 2] normalised x, y)


_LIST_NAMES = ("train", "val", "test", "trainval")  # list files at the root that name a split


def is_yolo(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "labels").is_dir()


def available_splits(root: str | Path) -> list[str]:
    root = Path(root)
    subs = sorted(p.name for p in (root / "images").iterdir() if p.is_dir()) if (root / "images").is_dir() else []
    files = sorted(p.stem for p in root.glob("*.txt") if p.stem in _LIST_NAMES)
    files += sorted(p.stem for p in (root / "splits").glob("*.txt")) if (root / "splits").is_dir() else []
    return (["all"] if list_images(root / "images") else []) + subs + [f for f in files if f not in subs]


def label_path(root: Path, image: Path) -> Path:
    """``images/.../x.jpg`` -> ``labels/.../x.txt`` (the Ultralytics convention)."""
    try:
        rel = image.relative_to(root / "images")
    except ValueError:
        parts = list(image.parts)
        if "images" in parts:
            i = len(parts) - 1 - parts[::-1].index("images")
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
        return root / "labels" / f"{image.stem}.txt"
    return (root / "labels" / rel).with_suffix(".txt")


def parse_label_file(path: Path, num_classes: int) -> tuple[list[Polygon], list[Problem]]:
    """Polygons of a label file, and a problem for every line that cannot be used."""
    name = display_path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return [], [Problem(name, "labels_format", f"{name} is not UTF-8 text ({e})", "re-save it as UTF-8")]
    polys: list[Polygon] = []
    problems: list[Problem] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        tok = line.split()
        if not tok:
            continue
        try:
            cls = int(tok[0])
            xy = np.array([float(t) for t in tok[1:]], dtype=np.float32)
        except ValueError:
            problems.append(
                Problem(name, "labels_format", f"{name} line {lineno}: not numbers: {line[:60]!r}", _FIX_LINE)
            )
            continue
        if not 0 <= cls < num_classes:
            problems.append(
                Problem(
                    name,
                    "labels_unknown_class",
                    f"{name} line {lineno}: class index {cls} outside 0..{num_classes - 1} (classes.txt lists "
                    f"{num_classes} names)",
                    "fix the class index or add the class to classes.txt",
                )
            )
            continue
        if len(xy) == 4:  # detection box: cx cy w h
            cx, cy, w, h = xy
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            xy = np.array([x0, y0, x1, y0, x1, y1, x0, y1], dtype=np.float32)
        if len(xy) < 6 or len(xy) % 2:
            problems.append(
                Problem(
                    name,
                    "labels_format",
                    f"{name} line {lineno}: {len(xy)} coordinates; a polygon needs an even number, at least 6",
                    _FIX_LINE,
                )
            )
            continue
        polys.append((cls, np.clip(xy.reshape(-1, 2), 0.0, 1.0)))
    return polys, problems


_FIX_LINE = "write 'class x1 y1 x2 y2 ...' with normalised coordinates, or delete the line"


def scan(root: str | Path, split: str = "all") -> Scan:
    root = Path(root)
    if not (root / CLASSES_TXT).is_file():
        raise DataError(
            f"{display_path(root / CLASSES_TXT)} not found; create it with one class name per line "
            "(the `names` list of your data.yaml, in index order)"
        )
    names = read_classes(root / CLASSES_TXT)
    if split == "all":
        images, problems, source = list_images(root / "images"), [], display_path(root / "images")
    elif (root / "images" / split).is_dir():
        images, problems, source = list_images(root / "images" / split), [], display_path(root / "images" / split)
    else:
        split_file = root / f"{split}.txt"
        if not split_file.is_file():
            split_file = root / "splits" / f"{split}.txt"
        if not split_file.is_file():
            raise DataError(
                f"split {split!r} not found in {display_path(root)}: no images/{split}/ folder, {split}.txt or "
                f"splits/{split}.txt; use split 'all' or create the list file (one image path per line)"
            )
        images, problems = resolve_listed(root, root / "images", split_file)
        source = display_path(split_file)
    images, bad = non_utf8_problems(images)
    problems += bad
    entries = []
    for img in images:
        lp = label_path(root, img)
        polys: list[Polygon] = []
        if lp.is_file():
            polys, found = parse_label_file(lp, len(names))
            problems += found
        labels = tuple(sorted({c for c, _ in polys}))
        size = header_size(img) if polys else None
        boxes = polygon_boxes(polys, *size) if size is not None else ()
        entries.append(Entry(img.stem, img, None, labels, source, extra=polys, boxes=boxes))
    return Scan(names, entries, problems)


def orphans(root: str | Path) -> list[Problem]:
    """Label files under ``labels/`` whose image (same path under ``images/``, any image extension) is gone."""
    root = Path(root)
    if not (root / "labels").is_dir():
        return []
    expected = {label_path(root, img) for img in images_under(root / "images")}
    files = [p for p in (root / "labels").rglob("*.txt") if p not in expected and not p.name.startswith(".")]
    return orphan_files(files, "orphan_label", "label file", "restore its image under images/ or delete the label file")


def polygon_boxes(polys: list[Polygon], width: int, height: int) -> tuple[Box, ...]:
    """The pixel bounding box of each normalised polygon, in order; a polygon with no pixel inside the
    image (squashed onto its right or bottom edge) has none."""
    out = []
    for cls, xy in polys:
        xs, ys = xy[:, 0] * width, xy[:, 1] * height
        box = Box.around(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()), cls).clip(height, width)
        if box.area > 0:
            out.append(box)
    return tuple(out)


def rasterise(polys: list[Polygon], width: int, height: int) -> np.ndarray:
    """``uint8 [H, W]`` mask of normalised polygons, drawn in order (later ones on top)."""
    im = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(im)
    scale = np.array([width, height], dtype=np.float32)
    for cls, xy in polys:
        pts = [tuple(p) for p in (xy * scale).tolist()]
        draw.polygon(pts, fill=cls + 1)
    return np.asarray(im, dtype=np.uint8).copy()


class YOLODataset(SegDataset):
    """A split of a YOLO segmentation folder (see module docstring)."""

    def __init__(self, root: str | Path, split: str = "all"):
        root = Path(root)
        s = scan(root, split)
        raise_errors(s.problems, f"{display_path(root)} (YOLO format, split {split!r})", n_entries=len(s.entries))
        records = [Record(e.image_id, e.image_path, e.labels, boxes=e.boxes) for e in s.entries]
        super().__init__(root, split, s.class_names, records)
        self._polys = [e.extra for e in s.entries]

    def load_mask(self, i: int) -> np.ndarray:
        w, h = image_size(self.records[i].image_path)  # coordinates refer to the EXIF-rotated image
        return rasterise(self._polys[i], w, h)
