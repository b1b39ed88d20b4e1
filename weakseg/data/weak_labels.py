"""Weak-label readers: boxes, scribbles and point clicks, all turned into one canonical in-memory form.

The canonical form is :class:`WeakLabel`: a dense partial map ``uint8 [H, W]`` (255 = unknown, 0 = background,
``c + 1`` = foreground class ``c``, as every mask in weakseg) plus the image's boxes
(:class:`~weakseg.data.dataset.Box`, 0-based, ``x1``/``y1`` exclusive). Box supervision gives a map that is 0
outside every box and 255 inside (the box says nothing about which of its pixels are the object).

Sources and their readers:

- **Boxes** of VOC XML, COCO JSON, YOLO and ``boxes.csv`` are already in ``Record.boxes`` (the format loaders
  convert them): :func:`from_boxes` / :func:`from_record`.
- **ScribbleSup XML** (Lin et al., CVPR 2016; one file per image): ``<annotation><size><width/><height/></size>``
  and repeated ``<polygon><tag>NAME</tag><point><X/><Y/></point>...</polygon>``, each polygon a polyline
  drawn with a given width (rloss draws width 3): :func:`read_scribblesup_xml`. Tags are the short VOC names
  (``plane``, ``bike``, ``table``, ``plant``, ``monitor``, ...) or the class names themselves; ``background``
  is 0. Points outside the image are clipped by the drawing.
- **Scribble PNGs** with a declared encoding (:data:`SCRIBBLE_ENCODINGS`): ``voc`` (rloss's
  ``pascal_2012_scribble``: 0 = background, ``c + 1`` = class ``c``, 255 = unlabelled; the same as the folder
  format's ``scribbles/``) and ``sduts`` (S-DUTS saliency scribbles: 1 = foreground, 2 = background,
  0 = unknown; the foreground becomes class 0, value 1): :func:`read_scribble_png`.
- **Point clicks JSON** (:func:`read_points_json`), one object keyed by image id::

      {"2007_000032": [{"x": 120, "y": 80, "cls": "aeroplane"}, {"x": 3, "y": 5, "cls": "background"}],
       "2007_000039": [{"x": 50, "y": 61, "cls": 4, "rank": 1}]}

  ``x`` is the column and ``y`` the row, 0-based pixels; ``cls`` is a class name, ``"background"``, or an
  integer 0-based foreground index (``-1`` = background). Other keys (What's-the-Point's ``rank``) are ignored.
  Background clicks become :class:`~weakseg.data.dataset.Point` with ``cls == -1``.

Every bad file raises :class:`~weakseg.errors.DataError` naming the file and the fix.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from weakseg.data.dataset import IGNORE, Box, Point, Record, check_boxes
from weakseg.data.images import display_path, load_mask
from weakseg.errors import DataError

BACKGROUND = -1
"""Class of a background click (:class:`~weakseg.data.dataset.Point`)."""

SCRIBBLE_ENCODINGS = {
    "voc": "0 = background, c+1 = class c, 255 = unlabelled (rloss pascal_2012_scribble, folder scribbles/)",
    "sduts": "1 = foreground, 2 = background, 0 = unknown (S-DUTS saliency scribbles)",
}

SCRIBBLESUP_TAGS: dict[str, str] = {
    "plane": "aeroplane",
    "bike": "bicycle",
    "motorbike": "motorbike",
    "table": "diningtable",
    "plant": "pottedplant",
    "monitor": "tvmonitor",
    "tv": "tvmonitor",
}
"""ScribbleSup's short tags → VOC class names (tags equal to a class name need no entry)."""


@dataclass(frozen=True)
class WeakLabel:
    """The canonical weak label of one image.

    ``dense``: ``uint8 [H, W]``, 255 = unknown, 0 = background, ``c + 1`` = class ``c``.
    ``boxes``: the object boxes (empty for scribbles and points).
    """

    dense: np.ndarray
    boxes: tuple[Box, ...] = ()

    @property
    def labelled_fraction(self) -> float:
        """Fraction of pixels whose label is known (not 255)."""
        return float((self.dense != IGNORE).mean()) if self.dense.size else 0.0


# ---------------------------------------------------------------------------- boxes


def boxes_to_dense(boxes: Sequence[Box], h: int, w: int) -> np.ndarray:
    """``uint8 [h, w]``: 0 (certain background) outside every box, 255 (unknown) inside any box."""
    out = np.zeros((h, w), dtype=np.uint8)
    for b in boxes:
        c = b.clip(h, w)
        out[c.y0 : c.y1, c.x0 : c.x1] = IGNORE
    return out


def from_boxes(
    boxes: Sequence[Box], h: int, w: int, path: str | Path = "<boxes>", num_classes: int | None = None
) -> WeakLabel:
    """The :class:`WeakLabel` of checked boxes (``DataError`` naming ``path`` if one is empty or outside)."""
    boxes = check_boxes(boxes, h, w, path, num_classes)
    return WeakLabel(boxes_to_dense(boxes, h, w), boxes)


# ---------------------------------------------------------------------------- scribbles


def _class_lookup(class_names: Sequence[str], aliases: Mapping[str, str]) -> dict[str, int]:
    lookup = {n.lower(): i for i, n in enumerate(class_names)}
    lookup |= {n.lower().replace(" ", ""): i for i, n in enumerate(class_names)}
    for tag, name in aliases.items():
        if name.lower() in lookup:
            lookup.setdefault(tag.lower(), lookup[name.lower()])
    lookup["background"] = BACKGROUND
    return lookup


def read_scribblesup_xml(
    path: str | Path,
    class_names: Sequence[str],
    width: int = 3,
    size: tuple[int, int] | None = None,
    aliases: Mapping[str, str] = SCRIBBLESUP_TAGS,
    unknown: str = "error",
) -> WeakLabel:
    """Rasterise a ScribbleSup XML file: each polyline drawn ``width`` pixels wide, later ones over earlier ones.

    ``size`` is ``(width, height)`` of the image; when None the XML's ``<size>`` is used. ``unknown`` says what
    a tag that is neither a class, an alias nor ``background`` becomes: ``"error"`` (DataError), ``"background"``
    (e.g. PASCAL-Context's ``sky``) or ``"ignore"`` (not drawn). Returns a :class:`WeakLabel` without boxes.
    """
    path = Path(path)
    name = display_path(path)
    if unknown not in ("error", "background", "ignore"):
        raise ValueError(f"unknown={unknown!r}; use 'error', 'background' or 'ignore'")
    if width < 1:
        raise ValueError(f"width must be >= 1 pixel, got {width}")
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise DataError(f"{name} is not readable XML ({e}); fix or re-download the ScribbleSup file") from None
    if size is None:
        try:
            size = (int(float(root.findtext("size/width", "0"))), int(float(root.findtext("size/height", "0"))))
        except ValueError:
            size = (0, 0)
        if size[0] <= 0 or size[1] <= 0:
            raise DataError(f"{name} has no valid <size><width/><height/>; add it or pass size=(width, height)")
    w, h = size
    lookup = _class_lookup(class_names, aliases)
    canvas = Image.new("L", (w, h), IGNORE)
    draw = ImageDraw.Draw(canvas)
    for k, poly in enumerate(root.iter("polygon")):
        tag = (poly.findtext("tag") or "").strip()
        cls = lookup.get(tag.lower())
        if cls is None:
            if unknown == "error":
                raise DataError(
                    f"{name}: scribble {k + 1} has tag {tag!r}, which is no class of ({', '.join(class_names)}); "
                    f"add it to aliases=, or pass unknown='background' or unknown='ignore'"
                )
            if unknown == "ignore":
                continue
            cls = BACKGROUND
        try:
            pts = [(float(p.findtext("X") or ""), float(p.findtext("Y") or "")) for p in poly.iter("point")]
        except ValueError:
            raise DataError(f"{name}: scribble {k + 1} ({tag}) has a point without numeric <X>/<Y>; fix it") from None
        if not pts:
            continue
        value = 0 if cls == BACKGROUND else cls + 1
        if len(pts) == 1:
            (x, y), r = pts[0], (width - 1) / 2
            if width == 1:
                draw.point((x, y), fill=value)
            else:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=value)
        else:
            draw.line(pts, fill=value, width=width, joint="curve")
    return WeakLabel(np.asarray(canvas, dtype=np.uint8).copy())


def decode_scribbles(raw: np.ndarray, encoding: str, num_classes: int, path: str | Path = "<array>") -> np.ndarray:
    """Map a scribble array of ``encoding`` (see :data:`SCRIBBLE_ENCODINGS`) to the canonical ``uint8 [H, W]``.

    Refuses values the encoding does not define (DataError naming ``path`` and the encoding), so an S-DUTS file
    read as ``voc`` (or the reverse) fails loudly instead of turning unknown pixels into background.
    """
    if encoding not in SCRIBBLE_ENCODINGS:
        valid = ", ".join(SCRIBBLE_ENCODINGS)
        raise ValueError(f"unknown scribble encoding {encoding!r}; valid: {valid}")
    raw = np.asarray(raw)
    values = np.flatnonzero(np.bincount(raw.astype(np.uint8, copy=False).ravel(), minlength=256)).tolist()
    if encoding == "voc":
        bad = [v for v in values if v > num_classes and v != IGNORE]
        allowed = f"0..{num_classes} and 255"
    else:
        bad = [v for v in values if v not in (0, 1, 2)]
        allowed = "0, 1, 2"
    if bad:
        other = "sduts" if encoding == "voc" else "voc"
        raise DataError(
            f"scribbles {display_path(path)} hold values {bad[:10]} outside {allowed} (encoding {encoding!r}: "
            f"{SCRIBBLE_ENCODINGS[encoding]}); fix the file, the class list, or declare encoding {other!r}"
        )
    if encoding == "voc":
        return raw.astype(np.uint8, copy=True)
    out = np.full(raw.shape, IGNORE, dtype=np.uint8)
    out[raw == 1] = 1
    out[raw == 2] = 0
    return out


def read_scribble_png(
    path: str | Path, encoding: str, num_classes: int, size: tuple[int, int] | None = None
) -> WeakLabel:
    """Read a scribble PNG of a declared ``encoding`` into a :class:`WeakLabel` (no boxes).

    ``size`` ``(width, height)``, when given, is the image's size: a scribble map of another size is refused.
    """
    path = Path(path)
    raw = load_mask(path)
    if size is not None and (raw.shape[1], raw.shape[0]) != tuple(size):
        raise DataError(
            f"scribbles {display_path(path)} are {raw.shape[1]}x{raw.shape[0]} but the image is {size[0]}x{size[1]}; "
            "re-export the scribbles at the image's size"
        )
    return WeakLabel(decode_scribbles(raw, encoding, num_classes, path))


# ---------------------------------------------------------------------------- points


def read_points_json(path: str | Path, class_names: Sequence[str]) -> dict[str, tuple[Point, ...]]:
    """Parse a clicks JSON (module docstring) into ``{image_id: points in file order}``; bg clicks have cls -1."""
    path = Path(path)
    name = display_path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{name} is not a readable UTF-8 JSON file ({e}); fix or re-export it") from None
    if not isinstance(data, dict):
        raise DataError(f'{name} must hold one object {{"<image_id>": [{{"x": .., "y": .., "cls": ..}}, ...]}}')
    lookup = _class_lookup(class_names, {})
    out: dict[str, tuple[Point, ...]] = {}
    for image_id, clicks in data.items():
        if not isinstance(clicks, list):
            raise DataError(f"{name}: image {image_id!r} maps to {type(clicks).__name__}, not a list of clicks")
        pts = []
        for k, c in enumerate(clicks):
            where = f"{name}: click {k + 1} of image {image_id!r}"
            if not isinstance(c, dict) or not {"x", "y", "cls"} <= c.keys():
                raise DataError(f'{where} is {c!r}; write {{"x": column, "y": row, "cls": class name or index}}')
            try:
                x, y = float(c["x"]), float(c["y"])
            except (TypeError, ValueError):
                raise DataError(f"{where}: x, y = {c['x']!r}, {c['y']!r} are not numbers") from None
            cls = c["cls"]
            if isinstance(cls, str):
                if cls.lower() not in lookup:
                    raise DataError(
                        f"{where}: unknown class {cls!r}; valid: background, {', '.join(class_names)}; "
                        "fix the name or the class list"
                    )
                idx = lookup[cls.lower()]
            elif isinstance(cls, int) and not isinstance(cls, bool) and -1 <= cls < len(class_names):
                idx = cls
            else:
                raise DataError(
                    f"{where}: cls {cls!r} is neither a class name nor an index in -1..{len(class_names) - 1} "
                    "(0-based foreground classes, -1 = background); fix it"
                )
            pts.append(Point(int(round(x)), int(round(y)), idx))
        out[str(image_id)] = tuple(pts)
    return out


def points_to_dense(
    points: Sequence[Point], h: int, w: int, radius: int = 0, path: str | Path = "<points>"
) -> np.ndarray:
    """``uint8 [h, w]``: 255 everywhere except a disc of ``radius`` px around each click (0 = bg, ``c + 1``).

    A click outside the image raises DataError naming ``path``. Later clicks overwrite earlier ones.
    """
    out = np.full((h, w), IGNORE, dtype=np.uint8)
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = xx**2 + yy**2 <= radius**2
    for p in points:
        if not (0 <= p.x < w and 0 <= p.y < h):
            raise DataError(
                f"{display_path(path)}: click ({p.x}, {p.y}) lies outside the {w}x{h} image "
                f"(x in 0..{w - 1}, y in 0..{h - 1}); fix or delete it"
            )
        ys, xs = yy[disc] + p.y, xx[disc] + p.x
        keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        out[ys[keep], xs[keep]] = 0 if p.cls == BACKGROUND else p.cls + 1
    return out


# ---------------------------------------------------------------------------- records


def merge_dense(*maps: np.ndarray) -> np.ndarray:
    """Combine partial maps ``uint8 [H, W]``: a pixel takes the first known (non-255) value, in argument order."""
    out = np.full(maps[0].shape, IGNORE, dtype=np.uint8)
    for m in reversed(maps):
        known = m != IGNORE
        out[known] = m[known]
    return out


def from_record(
    record: Record, h: int, w: int, num_classes: int, scribble_encoding: str = "voc", point_radius: int = 0
) -> WeakLabel:
    """The :class:`WeakLabel` of whatever weak labels a record carries, for an ``h x w`` image.

    Scribbles come first, then points, then boxes' background (a pixel labelled by a scribble or a click keeps
    that label; only the unknown pixels outside every box become background). A record with none of them
    gives an all-255 map.
    """
    maps = []
    if record.scribbles is not None:
        maps.append(read_scribble_png(record.scribbles, scribble_encoding, num_classes, (w, h)).dense)
    if record.points:
        maps.append(points_to_dense(record.points, h, w, point_radius, record.image_id))
    if record.boxes:
        maps.append(boxes_to_dense(check_boxes(record.boxes, h, w, record.image_id, num_classes), h, w))
    dense = merge_dense(*maps) if maps else np.full((h, w), IGNORE, dtype=np.uint8)
    return WeakLabel(dense, tuple(record.boxes))
