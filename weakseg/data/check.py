"""``weakseg data check``: every problem of a dataset in one pass, each with the file and the fix.

Loaders share the first half of the work: each format module has ``scan(root, split) -> Scan``, which
indexes a split without decoding pixels and *collects* problems (missing files, bad label rows, bad
boxes; see :mod:`weakseg.data.scan`). A loader raises on the scan's errors; :func:`check_dataset`
instead keeps going and then decodes every image and mask to find the rest (corrupt files, odd modes,
size mismatches, bad mask values, ...). This module sits on top of the loaders and the registry.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from weakseg.data.dataset import bad_mask_values
from weakseg.data.images import display_path, expected_format, load_mask, probe_image
from weakseg.data.labels import labels_from_mask
from weakseg.data.registry import FORMATS, detect_format
from weakseg.data.scan import ERROR, WARNING, Problem
from weakseg.data.scan import Entry as Entry  # re-exported: loaders imported these from here before
from weakseg.data.scan import Scan as Scan
from weakseg.data.scan import raise_errors as raise_errors
from weakseg.data.weak_labels import read_scribble_png
from weakseg.errors import DataError, unknown_name

# ---------------------------------------------------------------------------- the full check


def _non_utf8_names(root: Path) -> list[Problem]:
    out = []
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        dirnames[:] = [d for d in dirnames if not d.startswith(b".")]
        for name in dirnames + filenames:
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                p = os.path.join(dirpath, name).decode("utf-8", "backslashreplace")
                out.append(
                    Problem(
                        p,
                        "non_utf8_name",
                        f"file name {p} is not valid UTF-8; label files, split files and logs cannot name it",
                        "rename it to a UTF-8 name (e.g. `convmv -f latin1 -t utf8 --notest <file>`)",
                    )
                )
    return out


def _check_image(path: Path) -> tuple[list[Problem], tuple[int, int] | None]:
    name = display_path(path)
    try:
        info = probe_image(path)
    except DataError as e:
        msg = str(e)
        kind = "empty_file" if "0 bytes" in msg else "truncated_image" if "truncated" in msg else "corrupt_image"
        return [Problem(name, kind, msg, "re-export the image as JPEG or PNG, or remove it from the dataset")], None
    out = []
    want = expected_format(path)
    if want is not None and info.format is not None and info.format != want:
        out.append(
            Problem(
                name,
                "wrong_extension",
                f"{name} is a {info.format} file with a {path.suffix} extension (it still loads)",
                f"rename it to .{info.format.lower()} or re-encode it as {want}",
                WARNING,
            )
        )
    if info.mode != "RGB":
        how = {
            "CMYK": "CMYK (print colours)",
            "RGBA": "RGBA (with transparency; composited on white)",
            "LA": "grayscale with transparency (composited on white)",
            "P": "palette",
            "L": "grayscale",
            "1": "1-bit black and white",
        }.get(info.mode, f"{info.mode} (16/32-bit or float)" if info.mode.startswith(("I", "F")) else info.mode)
        out.append(
            Problem(
                name,
                "image_mode",
                f"{name} is {how}; it is converted to 8-bit RGB on loading",
                "nothing required; re-export as 8-bit RGB to make the conversion explicit",
                WARNING,
            )
        )
    w, h = info.size
    if min(w, h) < 8 or max(w, h) > 16 * min(w, h):
        out.append(
            Problem(
                name,
                "odd_size",
                f"{name} is {w}x{h} pixels (tiny or extreme aspect ratio); crops and resizes may distort it",
                "check the image is what you meant to include",
                WARNING,
            )
        )
    return out, (w, h)


def _check_mask(path: Path, size: tuple[int, int] | None, num_classes: int) -> tuple[list[Problem], np.ndarray | None]:
    name = display_path(path)
    try:
        mask = load_mask(path)
    except DataError as e:
        return [Problem(name, "bad_mask", str(e), "re-save the mask as an 8-bit palette or grayscale PNG")], None
    out = []
    if size is not None and (mask.shape[1], mask.shape[0]) != size:
        out.append(
            Problem(
                name,
                "mask_size",
                f"mask {name} is {mask.shape[1]}x{mask.shape[0]} but its image is {size[0]}x{size[1]}",
                "re-export the mask at the image's size (or fix a rotated/resized image)",
            )
        )
    bad = bad_mask_values(mask, num_classes)
    if bad:
        out.append(
            Problem(
                name,
                "mask_values",
                f"mask {name} holds values {bad[:10]} outside 0..{num_classes} (classes) and 255 (ignore)",
                f"use 0 = background, c+1 = class c (c < {num_classes}), 255 = ignore; or fix classes.txt",
            )
        )
    return out, mask


def _check_scribbles(path: Path, size: tuple[int, int] | None, num_classes: int) -> list[Problem]:
    """A scribble PNG (folder format ``scribbles/``: 255 = unknown, 0 = background, c+1 = class c) that does not
    load, holds values outside that encoding (an S-DUTS 0/1/2 file, say) or has another size than its image."""
    try:
        read_scribble_png(path, "voc", num_classes, size)
    except DataError as e:
        msg = str(e)
        kind = "scribble_size" if "but the image is" in msg else "scribble_values" if "hold values" in msg else ""
        fix = {
            "scribble_size": "re-export the scribbles at the image's size",
            "scribble_values": f"use 255 = unknown, 0 = background, c+1 = class c (c < {num_classes}); convert "
            "S-DUTS files (1 = fg, 2 = bg, 0 = unknown) with weakseg.data.weak_labels.decode_scribbles",
        }.get(kind, "re-save the scribbles as an 8-bit palette or grayscale PNG")
        return [Problem(display_path(path), kind or "bad_scribbles", msg, fix)]
    return []


def check_dataset(root: str | Path, fmt: str = "auto", split: str | None = None, strict: bool = False) -> list[Problem]:
    """All problems of a dataset (every split when ``split`` is None), errors and warnings, in one pass.

    Files that belong to no image (a label file, mask or label row whose image is gone: the format's
    ``orphans``) are warnings, or errors when ``strict``; they are looked for over the whole dataset
    whatever ``split`` is.
    """
    root = Path(root)
    if not root.is_dir():
        return [Problem(display_path(root), "missing_root", f"{display_path(root)} is not a folder", "check the path")]
    if fmt == "auto":
        try:
            fmt = detect_format(root)
        except DataError as e:
            return [Problem(display_path(root), "unknown_format", str(e), "lay the dataset out in a supported format")]
    elif fmt not in FORMATS:
        raise unknown_name("dataset format", fmt, FORMATS)
    problems: list[Problem] = _non_utf8_names(root)
    chosen = [split] if split is not None else FORMATS[fmt].splits(root)
    if not chosen:
        problems.append(
            Problem(display_path(root), "no_splits", f"{display_path(root)} has no split ({fmt} format)", "add one")
        )
    orphans = FORMATS[fmt].orphans(root) if FORMATS[fmt].orphans is not None else []
    problems += [dataclasses.replace(p, severity=ERROR) for p in orphans] if strict else orphans
    sizes: dict[Path, tuple[int, int] | None] = {}
    masks_done: set[Path] = set()
    positives: dict[int, int] = {}
    n_entries = 0
    names: tuple[str, ...] = ()
    for sp in chosen:
        try:
            s = FORMATS[fmt].scan(root, sp)
        except DataError as e:
            problems.append(Problem(display_path(root), "split", str(e), "fix the split or the layout"))
            continue
        seen = set(problems)
        problems += [p for p in s.problems if p not in seen]  # label-file problems repeat in every split
        names = s.class_names
        n_entries += len(s.entries)
        for e in s.entries:
            if e.image_path not in sizes:
                found, sizes[e.image_path] = _check_image(e.image_path)
                problems += found
            labels = e.labels
            if e.scribbles is not None and e.scribbles not in masks_done:
                masks_done.add(e.scribbles)
                problems += _check_scribbles(e.scribbles, sizes[e.image_path], len(names))
            if e.mask_path is not None and e.mask_path not in masks_done:
                masks_done.add(e.mask_path)
                found, mask = _check_mask(e.mask_path, sizes[e.image_path], len(names))
                problems += found
                if mask is not None and not any(p.kind == "mask_values" for p in found):
                    from_mask = labels_from_mask(mask, len(names))
                    if labels is None:
                        labels = from_mask
                    elif set(from_mask) - set(labels):
                        extra = ", ".join(names[c] for c in sorted(set(from_mask) - set(labels)))
                        problems.append(
                            Problem(
                                display_path(e.mask_path),
                                "labels_vs_mask",
                                f"mask of {e.image_id!r} shows {extra}, missing from its image-level labels",
                                "fix the label row or the mask",
                                WARNING,
                            )
                        )
            if labels is not None:
                if not labels:
                    problems.append(
                        Problem(
                            display_path(e.image_path),
                            "no_object",
                            f"image {e.image_id!r} has no class label (used as background only)",
                            "fine if it shows no object; otherwise add its labels",
                            WARNING,
                        )
                    )
                for c in labels:
                    positives[c] = positives.get(c, 0) + 1
    if n_entries == 0:
        problems.append(
            Problem(
                display_path(root),
                "empty_dataset",
                f"no usable image found in {display_path(root)} ({fmt} format, splits: {', '.join(chosen) or '-'})",
                "add images (and their split/label files)",
            )
        )
    else:
        for c, name in enumerate(names):
            if positives.get(c, 0) == 0:
                problems.append(
                    Problem(
                        display_path(root),
                        "class_without_images",
                        f"class {name!r} has no positive image in the checked split(s)",
                        "add images of it or remove it from the class list",
                        WARNING,
                    )
                )
    return problems


def format_problems(problems: Sequence[Problem], root: str | Path | None = None) -> str:
    """A plain-text table of problems, errors first, with a one-line summary."""
    if not problems:
        return "no problems found"
    prefix = (str(root).rstrip("/") + "/") if root is not None else None
    rows = sorted(problems, key=lambda p: (p.severity != ERROR, p.kind, p.path))
    kw = max(len("kind"), *(len(p.kind) for p in rows))
    lines = []
    n_err = sum(p.severity == ERROR for p in rows)
    lines.append(f"{n_err} error(s), {len(rows) - n_err} warning(s)")
    lines.append(f"{'SEVERITY':<8}  {'KIND':<{kw}}  FILE / MESSAGE / FIX")
    for p in rows:
        path = p.path[len(prefix) :] if prefix and p.path.startswith(prefix) else p.path
        lines.append(f"{p.severity.upper():<8}  {p.kind:<{kw}}  {path}")
        pad = " " * (8 + 2 + kw + 2)
        lines.append(f"{pad}{p.message}")
        lines.append(f"{pad}fix: {p.fix}")
    return "\n".join(lines)
