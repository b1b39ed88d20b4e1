"""MS-COCO from its instance annotations (the WSSS "COCO-2014" benchmark)::

    <root>/annotations/instances_train2014.json, instances_val2014.json
    <root>/train2014/*.jpg, <root>/val2014/*.jpg

Split ``train`` / ``val`` (or ``train2014``, ``val2017``, ...). The 80 category ids (1..90 with gaps)
map to contiguous classes 0..79 in id order. Masks are rasterised from polygons / RLE with
pycocotools (optional: ``pip install 'weakseg[coco]'``), larger objects first so small ones stay
visible; crowd regions become 255 (ignore) where no other object lies. Image-level labels include
crowd annotations (the objects are in the image).

Each record's ``boxes`` are the ``bbox`` of its non-crowd annotations, in file order: COCO's float
``[x, y, w, h]`` becomes the smallest pixel box holding it (:meth:`~weakseg.data.dataset.Box.around`:
``x0 = floor(x)``, ``x1 = ceil(x + w)``, exclusive). Crowd boxes surround a group, not one object, so
they are left out (as box-supervised methods do), and so is an annotation without a ``bbox``. A box
outside its image is an error naming the file.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from weakseg.data.boxes import scan_boxes
from weakseg.data.dataset import IGNORE, Box, Record, SegDataset
from weakseg.data.images import display_path
from weakseg.data.scan import Entry, Problem, Scan, raise_errors
from weakseg.errors import DataError, missing_extra


def is_coco(root: Path) -> bool:
    return any((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else False


def available_splits(root: str | Path) -> list[str]:
    d = Path(root) / "annotations"
    return sorted(p.stem[len("instances_") :] for p in d.glob("instances_*.json")) if d.is_dir() else []


def _paths(root: Path, split: str) -> tuple[Path, Path]:
    names = [split] if split[-4:].isdigit() else [f"{split}2014", f"{split}2017", split]
    for n in names:
        ann = root / "annotations" / f"instances_{n}.json"
        if ann.is_file():
            return ann, root / n
    tried = ", ".join(display_path(root / "annotations" / f"instances_{n}.json") for n in names)
    raise DataError(
        f"no COCO annotation file for split {split!r} (tried {tried}); download annotations_trainval2014.zip "
        f"and unzip it into {display_path(root)} (`weakseg data download coco --dest {display_path(root)}`)"
    )


def scan(root: str | Path, split: str = "train") -> Scan:
    root = Path(root)
    ann_path, image_dir = _paths(root, split)
    try:
        data = json.loads(ann_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{display_path(ann_path)} is not valid JSON ({e}); download it again") from None
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{display_path(ann_path)} has no {key!r} list; is it an instances_*.json file?")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    names = tuple(c["name"] for c in cats)
    by_image: dict[int, list[dict]] = {}
    problems: list[Problem] = []
    src = display_path(ann_path)
    for a in data["annotations"]:
        if a.get("category_id") not in cat_index:
            problems.append(
                Problem(
                    src,
                    "labels_unknown_class",
                    f"annotation {a.get('id')} of image {a.get('image_id')} has category_id {a.get('category_id')} "
                    "that is not in 'categories'",
                    "fix or remove the annotation",
                )
            )
            continue
        by_image.setdefault(a["image_id"], []).append(a)
    entries = []
    for im in sorted(data["images"], key=lambda m: m["file_name"]):
        path = image_dir / im["file_name"]
        if not path.is_file():
            problems.append(
                Problem(
                    display_path(path),
                    "missing_file",
                    f"image {display_path(path)} (listed in {src}) does not exist",
                    f"unzip the {image_dir.name} images into {display_path(image_dir)}",
                )
            )
            continue
        anns = by_image.get(im["id"], [])
        labels = tuple(sorted({cat_index[a["category_id"]] for a in anns}))
        h, w = int(im["height"]), int(im["width"])
        boxes, found = _boxes(anns, cat_index, h, w, src, im["id"])
        problems += found
        extra = (h, w, anns, cat_index)
        entries.append(Entry(Path(im["file_name"]).stem, path, None, labels, src, extra=extra, boxes=boxes))
    return Scan(names, entries, problems)


def _boxes(
    anns: list[dict], cat_index: dict[int, int], h: int, w: int, src: str, image_id: int
) -> tuple[tuple[Box, ...], list[Problem]]:
    """The checked pixel boxes of an image's non-crowd annotations (see module docstring)."""
    out: list[Box] = []
    problems: list[Problem] = []
    for a in anns:
        if a.get("iscrowd") or "bbox" not in a:
            continue
        bbox = a["bbox"]
        what = f"annotation {a.get('id')} of image {image_id}"
        try:
            x, y, bw, bh = (float(v) for v in bbox)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            msg = f"{src} ({what}): bbox {bbox!r} is not [x, y, width, height]"
            problems.append(Problem(src, "bad_box", msg, "fix or remove the annotation"))
            continue
        good, found = scan_boxes(
            [Box.around(x, y, x + bw, y + bh, cat_index[a["category_id"]])], h, w, src, len(cat_index), what
        )
        out += good
        problems += found
    return tuple(out), problems


def rasterise(anns: list[dict], height: int, width: int, cat_index: dict[int, int]) -> np.ndarray:
    """``uint8 [H, W]`` semantic mask of COCO annotations (see module docstring)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise missing_extra("pycocotools", "coco", "Rasterising COCO masks") from None

    def decode(seg) -> np.ndarray:
        if isinstance(seg, list):  # polygons
            seg = [p for p in seg if len(p) >= 6]
            if not seg:
                return np.zeros((height, width), dtype=bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools vs numpy 2 copy= keyword
            m = mask_utils.decode(rle)
        return (m if m.ndim == 2 else m.max(axis=2)).astype(bool)

    out = np.zeros((height, width), dtype=np.uint8)
    objects = sorted((a for a in anns if not a.get("iscrowd")), key=lambda a: -float(a.get("area", 0)))
    for a in objects:
        out[decode(a["segmentation"])] = cat_index[a["category_id"]] + 1
    for a in anns:
        if a.get("iscrowd"):
            m = decode(a["segmentation"])
            out[m & (out == 0)] = IGNORE
    return out


class COCODataset(SegDataset):
    """A split of MS-COCO read from its instance JSON (see module docstring)."""

    def __init__(self, root: str | Path, split: str = "train"):
        root = Path(root)
        s = scan(root, split)
        raise_errors(s.problems, f"{display_path(root)} (COCO, split {split!r})", n_entries=len(s.entries))
        records = [Record(e.image_id, e.image_path, e.labels, boxes=e.boxes) for e in s.entries]
        super().__init__(root, split, s.class_names, records)
        self._anns = [e.extra for e in s.entries]

    def load_mask(self, i: int) -> np.ndarray:
        h, w, anns, cat_index = self._anns[i]
        return rasterise(anns, h, w, cat_index)
