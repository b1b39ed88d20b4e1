"""What every loader's ``scan`` shares: the scanned split, its problems, and the file-listing helpers.

Each format module has ``scan(root, split) -> Scan``, which indexes a split without decoding pixels and
*collects* problems (missing files, bad label rows, bad boxes). A loader raises on the scan's errors
with :func:`raise_errors`; ``weakseg data check`` (:mod:`weakseg.data.check`) instead keeps going and
then decodes every image and mask to find the rest. This module sits below the loaders and the check,
so neither has to import the other.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weakseg.data.dataset import Box
from weakseg.data.images import IMAGE_EXTENSIONS, display_path, image_size, is_utf8_name
from weakseg.errors import DataError

log = logging.getLogger(__name__)

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    """One finding. ``path`` is printable text even for non-UTF-8 names; ``severity`` error|warning."""

    path: str
    kind: str
    message: str
    fix: str
    severity: str = ERROR


@dataclass
class Entry:
    """One image of a scanned split. ``labels`` None = not given (computed from the mask).

    ``boxes`` and ``scribbles`` are the weak labels the format carries (copied into the
    :class:`~weakseg.data.dataset.Record`); the scan has already checked the boxes.
    """

    image_id: str
    image_path: Path
    mask_path: Path | None
    labels: tuple[int, ...] | None
    source: str  # the file that lists the image (split file, label file or folder)
    extra: Any = None  # format-specific: YOLO polygons, COCO annotations
    boxes: tuple[Box, ...] = ()
    scribbles: Path | None = None


@dataclass
class Scan:
    class_names: tuple[str, ...]
    entries: list[Entry]
    problems: list[Problem] = field(default_factory=list)


def raise_errors(problems: Sequence[Problem], what: str, limit: int = 10, n_entries: int | None = None) -> None:
    """Raise one DataError listing the error-severity problems (up to ``limit``), if there are any.

    Warnings are logged (one line). With ``n_entries == 0`` an empty split is an error too.
    """
    errors = [p for p in problems if p.severity == ERROR]
    warnings = [p for p in problems if p.severity != ERROR]
    if warnings:
        log.warning(
            "%d warning(s) in %s, e.g. %s (run `weakseg data check` to list all)",
            len(warnings),
            what,
            warnings[0].message,
        )
    if not errors and n_entries == 0:
        raise DataError(f"{what} has no usable image; add images (and their split / label files)")
    if not errors:
        return
    lines = "\n".join(f"  - {p.message}\n    fix: {p.fix}" for p in errors[:limit])
    more = ""
    if len(errors) > limit:
        more = f"\n  ... and {len(errors) - limit} more (run `weakseg data check` to list all)"
    raise DataError(f"{len(errors)} problem(s) in {what}:\n{lines}{more}")


# ---------------------------------------------------------------------------- listing image files


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files skipped)."""
    if not folder.is_dir():
        return []
    files = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)


def resolve_listed(root: Path, image_dir: Path, split_file: Path) -> tuple[list[Path], list[Problem]]:
    """Images named by a split file: a path relative to the root, a file name or a stem in ``image_dir``."""
    try:
        text = split_file.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(
            f"split file not found: {display_path(split_file)}; use split 'all' or create the file "
            "with one image name per line"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{display_path(split_file)} is not UTF-8 text ({e}); re-save it as UTF-8") from None
    by_stem: dict[str, Path] = {}
    for p in list_images(image_dir):
        by_stem.setdefault(p.stem, p)
    out, problems = [], []
    for line in text.splitlines():
        tok = line.strip()
        if not tok:
            continue
        cands = [root / tok, image_dir / tok, Path(tok)]
        hit = next((c for c in cands if c.suffix and c.is_file()), None) or by_stem.get(Path(tok).stem)
        if hit is None:
            missing = image_dir / (tok if Path(tok).suffix else f"{tok}.jpg")
            problems.append(
                Problem(
                    display_path(missing),
                    "missing_file",
                    f"image {tok!r} listed in {display_path(split_file)} does not exist in {display_path(image_dir)}",
                    f"add the image or remove the line from {display_path(split_file)}",
                )
            )
            continue
        out.append(hit)
    return out, problems


def non_utf8_problems(paths: list[Path]) -> tuple[list[Path], list[Problem]]:
    keep, problems = [], []
    for p in paths:
        if is_utf8_name(p):
            keep.append(p)
        else:
            name = display_path(p)
            problems.append(
                Problem(
                    name,
                    "non_utf8_name",
                    f"file name {name} is not valid UTF-8, so label and split files cannot name it",
                    "rename it to a UTF-8 name (e.g. `convmv -f latin1 -t utf8 --notest <file>`)",
                )
            )
    return keep, problems


def header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` of an image from its header (EXIF rotation applied), or None if unreadable.

    For checking boxes during a scan; an unreadable image is reported when it is loaded or checked.
    """
    try:
        return image_size(path)
    except DataError:
        return None


# ---------------------------------------------------------------------------- orphans (files without an image)


def images_under(folder: Path) -> list[Path]:
    """Image files in ``folder`` and its sub-folders, sorted (hidden files skipped)."""
    if not folder.is_dir():
        return []
    files = (p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)


def orphan_files(files: Iterable[Path], kind: str, what: str, fix: str) -> list[Problem]:
    """A warning per file of ``files`` (label files, masks, ... whose image is gone), e.g. ``what`` = 'label file'."""
    out = []
    for f in sorted(files):
        name = display_path(f)
        out.append(Problem(name, kind, f"{what} {name} belongs to no image (no image of that name)", fix, WARNING))
    return out


def csv_ids(path: Path) -> list[str]:
    """The first column of a CSV file (the image ids of a label or box file), header and blank rows skipped."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return []  # an unreadable file is reported by the format's scan
    ids = [row[0].strip() for row in csv.reader(io.StringIO(text, newline="")) if row and row[0].strip()]
    return ids[1:] if ids and ids[0].lower() == "image_id" else ids


def orphan_rows(path: Path, images: set[str], kind: str = "orphan_rows", limit: int = 10) -> list[Problem]:
    """One warning naming the rows of the CSV ``path`` whose image id is not in ``images``."""
    if not path.is_file():
        return []
    ids = list(dict.fromkeys(i for i in csv_ids(path) if i not in images))
    if not ids:
        return []
    name = display_path(path)
    shown = ", ".join(repr(i) for i in ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
    return [
        Problem(
            name,
            kind,
            f"{name} has rows for {len(ids)} image id(s) without an image: {shown}",
            "restore the images or delete their rows",
            WARNING,
        )
    ]
