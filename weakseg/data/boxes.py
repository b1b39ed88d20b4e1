"""Box labels: the ``boxes.csv`` file of the folder format, boxes from masks, and box checks for scans.

``boxes.csv`` (folder format; one box per row, any number of rows per image)::

    image_id,x0,y0,x1,y1,class_name
    dog_01,12,30,140,200,dog
    dog_01,150,40,210,120,traffic_light

Coordinates are integer pixels of the image as loaded (EXIF rotation applied), 0-based, ``x1`` and
``y1`` exclusive (the box is ``mask[y0:y1, x0:x1]``, see :class:`~weakseg.data.dataset.Box`).
``class_name`` is written as in ``cls_labels.csv`` (spaces may be underscores).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from weakseg.data.dataset import IGNORE, Box
from weakseg.data.images import display_path
from weakseg.data.labels import csv_name
from weakseg.data.scan import Problem

BOXES_CSV = "boxes.csv"
BOXES_HEADER = ("image_id", "x0", "y0", "x1", "y1", "class_name")
_FIX_BOX = "fix or delete the box (x0, y0 inclusive, x1, y1 exclusive, 0-based pixels inside the image)"


def boxes_from_mask(mask: np.ndarray, num_classes: int | None = None) -> tuple[Box, ...]:
    """One tight box per class present in a mask, in class order.

    ``mask`` is ``uint8 [H, W]`` (0 = background, ``c + 1`` = class ``c``, 255 = ignore). The box of
    class ``c`` holds *every* pixel of ``c``: two separate objects of one class get one box around
    both (per class, not per connected instance). Values above ``num_classes`` are skipped when it is
    given; 0 and 255 always are.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    counts = np.bincount(mask.astype(np.uint8, copy=False).ravel(), minlength=256)
    out = []
    for v in np.flatnonzero(counts).tolist():
        if v == 0 or v == IGNORE or (num_classes is not None and v > num_classes):
            continue
        rows = np.flatnonzero((mask == v).any(axis=1))
        cols = np.flatnonzero((mask == v).any(axis=0))
        out.append(Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1, v - 1))
    return tuple(out)


def scan_boxes(
    boxes: Sequence[Box], h: int, w: int, path: Path | str, num_classes: int, what: str = ""
) -> tuple[tuple[Box, ...], list[Problem]]:
    """Split ``boxes`` into the usable ones and a ``bad_box`` error for each of the others.

    ``path`` is the file the boxes came from (named in each problem); ``what`` says where in it
    (e.g. "annotation 12 of image 5").
    """
    name = display_path(path)
    good, problems = [], []
    for b in boxes:
        msg = b.problem(h, w, num_classes)
        if msg is None:
            good.append(b)
        else:
            where = f" ({what})" if what else ""
            problems.append(Problem(name, "bad_box", f"{name}{where}: {msg}", _FIX_BOX))
    return tuple(good), problems


def read_boxes_csv(path: Path, class_names: Sequence[str]) -> tuple[dict[str, list[Box]], list[Problem]]:
    """Parse ``boxes.csv`` (see module docstring) -> ``{image_id: boxes in row order}`` and the problems.

    Rows that cannot be read are left out with a problem naming the file and line; whether a box lies
    inside its image is checked by the caller (it knows the image size).
    """
    name = display_path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return {}, [Problem(name, "boxes_format", f"{name} is not UTF-8 text ({e})", "re-save it as UTF-8")]
    lookup = {n: i for i, n in enumerate(class_names)} | {csv_name(n): i for i, n in enumerate(class_names)}
    out: dict[str, list[Box]] = {}
    problems: list[Problem] = []
    rows = csv.reader(io.StringIO(text, newline=""))
    header_seen = False
    for row in rows:
        lineno = rows.line_num
        if not row or all(not c.strip() for c in row):
            continue
        cells = [c.strip() for c in row]
        if not header_seen:
            header_seen = True
            if tuple(c.lower() for c in cells) != BOXES_HEADER:
                fix = f"make the first line '{','.join(BOXES_HEADER)}'"
                problems.append(Problem(name, "boxes_header", f"{name}: first line is {','.join(row)!r}", fix))
                return {}, problems
            continue
        if len(cells) != len(BOXES_HEADER):
            msg = f"{name} line {lineno}: {len(cells)} columns, expected {len(BOXES_HEADER)} ({','.join(BOXES_HEADER)})"
            problems.append(Problem(name, "boxes_format", msg, "fix the row"))
            continue
        image_id, *coords, cls_name = cells
        try:
            x0, y0, x1, y1 = (int(c) for c in coords)
        except ValueError:
            msg = f"{name} line {lineno}: coordinates {coords} are not whole numbers of pixels"
            problems.append(Problem(name, "boxes_format", msg, "write integer pixel coordinates"))
            continue
        if cls_name not in lookup:
            valid = ", ".join(csv_name(n) for n in class_names)
            msg = f"{name} line {lineno}: unknown class name {cls_name!r} (image {image_id!r}); valid names: {valid}"
            problems.append(Problem(name, "boxes_unknown_class", msg, "fix the class name or classes.txt"))
            continue
        out.setdefault(image_id, []).append(Box(x0, y0, x1, y1, lookup[cls_name]))
    return out, problems
