"""Image-level label files shared by the VOC layout, the synthetic benchmark and the folder format.

``cls_labels.csv``::

    image_id,labels
    2007_000032,aeroplane person
    2007_000039,tvmonitor
    2007_000063,                 <- empty: the image shows no object of any class

``labels`` holds space-separated class *names*; a name that itself contains spaces (COCO's
"traffic light") is written with underscores ("traffic_light") and read back either way.
The reader accepts a UTF-8 BOM and Windows newlines; duplicate image ids and unknown class names are
errors naming the file, the line numbers and (for names) the valid names.

``classes.txt``: one foreground class name per line, in index order.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weakseg.data.dataset import IGNORE
from weakseg.data.dataset import bad_mask_values as bad_mask_values  # re-exported from their old home
from weakseg.data.dataset import load_checked_mask as load_checked_mask
from weakseg.data.images import display_path
from weakseg.engine.artifacts import atomic_write_bytes
from weakseg.errors import DataError

CLS_LABELS = "cls_labels.csv"
CLASSES_TXT = "classes.txt"
HEADER = ("image_id", "labels")


def _text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"label file not found: {display_path(path)}") from None
    try:
        return raw.decode("utf-8-sig")  # strips a BOM written by Excel / Notepad
    except UnicodeDecodeError as e:
        raise DataError(f"{display_path(path)} is not UTF-8 text ({e}); re-save it as UTF-8") from None


def csv_name(name: str) -> str:
    """How a class name is written in the labels column (spaces become underscores)."""
    return name.replace(" ", "_")


# ---------------------------------------------------------------------------- classes.txt


def read_classes(path: str | Path) -> tuple[str, ...]:
    """Read ``classes.txt`` (one name per line; blank lines and surrounding spaces ignored)."""
    path = Path(path)
    names = [line.strip() for line in _text(path).splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DataError(f"{display_path(path)} lists no class names; write one foreground class name per line")
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise DataError(
                f"{display_path(path)}: class name {n!r} appears twice (entries {seen[n] + 1} and {i + 1}); "
                "each class must be listed once"
            )
        seen[n] = i
    return tuple(names)


def write_classes(path: str | Path, names: Sequence[str]) -> Path:
    return atomic_write_bytes(path, ("\n".join(names) + "\n").encode("utf-8"))


# ---------------------------------------------------------------------------- cls_labels.csv


@dataclass(frozen=True)
class LabelIssue:
    """One problem found in a label CSV: ``kind`` is 'header', 'duplicate', 'unknown_class' or 'format'."""

    kind: str
    line: int
    message: str


def scan_cls_labels(
    path: str | Path, class_names: Sequence[str]
) -> tuple[dict[str, tuple[int, ...]], list[LabelIssue]]:
    """Parse a label CSV, collecting every problem instead of stopping at the first.

    Returns the labels of the rows that parsed (the first row of a duplicated id) and the issues.
    """
    path = Path(path)
    text = _text(path)
    lookup: dict[str, int] = {}
    for i, n in enumerate(class_names):
        lookup[n] = i
        lookup[csv_name(n)] = i
    valid = ", ".join(csv_name(n) for n in class_names)
    issues: list[LabelIssue] = []
    out: dict[str, tuple[int, ...]] = {}
    first_line: dict[str, int] = {}
    dup_lines: dict[str, list[int]] = {}
    rows = csv.reader(io.StringIO(text, newline=""))
    header_seen = False
    for row in rows:
        lineno = rows.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if not header_seen:
            header_seen = True
            if tuple(c.strip().lower() for c in row[:2]) == HEADER:
                continue
            issues.append(
                LabelIssue("header", lineno, f"first line is {','.join(row)!r}, expected the header 'image_id,labels'")
            )
            continue
        if len(row) > 2:
            issues.append(
                LabelIssue(
                    "format",
                    lineno,
                    f"line {lineno} has {len(row)} columns; expected 'image_id,labels' with labels separated "
                    "by spaces (not commas)",
                )
            )
            continue
        image_id = row[0].strip()
        names = row[1].split() if len(row) > 1 else []
        if not image_id:
            issues.append(LabelIssue("format", lineno, f"line {lineno} has an empty image_id"))
            continue
        if image_id in first_line:
            dup_lines.setdefault(image_id, [first_line[image_id]]).append(lineno)
            continue
        first_line[image_id] = lineno
        idx: set[int] = set()
        for n in names:
            if n in lookup:
                idx.add(lookup[n])
            else:
                issues.append(
                    LabelIssue(
                        "unknown_class",
                        lineno,
                        f"{display_path(path)} line {lineno}: unknown class name {n!r} (image {image_id!r}); "
                        f"valid names: {valid}",
                    )
                )
        out[image_id] = tuple(sorted(idx))
    for image_id, lines in dup_lines.items():
        issues.append(
            LabelIssue(
                "duplicate",
                lines[1],
                f"{display_path(path)}: image {image_id!r} appears on several rows (lines "
                f"{', '.join(map(str, lines))}); keep one row per image",
            )
        )
    if not header_seen:
        issues.append(LabelIssue("header", 1, f"{display_path(path)} is empty; expected the header 'image_id,labels'"))
    return out, issues


def read_cls_labels(path: str | Path, class_names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Read ``cls_labels.csv`` -> ``{image_id: sorted class indices}``; any problem raises DataError."""
    labels, issues = scan_cls_labels(path, class_names)
    if issues:
        shown = "\n  ".join(i.message for i in issues[:20])
        more = f"\n  ... and {len(issues) - 20} more" if len(issues) > 20 else ""
        raise DataError(f"{len(issues)} problem(s) in {display_path(Path(path))}:\n  {shown}{more}")
    return labels


def write_cls_labels(path: str | Path, labels: Mapping[str, Sequence[int]], class_names: Sequence[str]) -> Path:
    """Write ``cls_labels.csv`` atomically, rows in the mapping's order, LF newlines, no BOM."""
    lines = [",".join(HEADER)]
    k = len(class_names)
    for image_id, idx in labels.items():
        if "," in image_id or "\n" in image_id:
            raise DataError(f"image id {image_id!r} contains a comma or newline; rename the file")
        bad = [i for i in idx if not 0 <= int(i) < k]
        if bad:
            raise ValueError(f"labels {bad} of image {image_id!r} are outside 0..{k - 1}")
        lines.append(f"{image_id}," + " ".join(csv_name(class_names[int(i)]) for i in sorted(set(idx))))
    return atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


# ---------------------------------------------------------------------------- from masks


def labels_from_mask(mask: np.ndarray, num_classes: int, min_pixels: int = 1) -> tuple[int, ...]:
    """Classes present in a mask (value ``c + 1`` with at least ``min_pixels`` pixels); 0 and 255 ignored.

    Raises ValueError on values that are not 0, 1..num_classes or 255 (the caller names the file).
    """
    counts = np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=256)
    bad = [v for v in np.flatnonzero(counts).tolist() if v > num_classes and v != IGNORE]
    if bad:
        raise ValueError(f"mask values {bad} are outside 0..{num_classes} and not {IGNORE} (ignore)")
    return tuple(int(c) for c in np.flatnonzero(counts[1 : num_classes + 1] >= max(min_pixels, 1)))
