"""Stage ``weak``: the partial labels (scribbles or point clicks) a ``scribble``-task run trains on, as PNGs.

Each image of the split gets ``<out>/<image_id>.png`` (palette PNG: 0 = background, ``c + 1`` = class ``c``,
255 = unknown), taken from the dataset when its records carry that kind of label (``Record.scribbles``:
a folder-format ``scribbles/`` PNG; ``Record.points``: clicks, drawn as discs of ``point_radius`` px), or
simulated from the ground-truth masks with a seeded simulator (:func:`weakseg.data.simulate.simulate_scribbles`
under a labelled-pixel ``budget``, :func:`weakseg.data.simulate.simulate_points`). Simulation is the only
place the masks are read; the training stage reads only these PNGs. ``metrics.json`` says which source was
used, which masks were read, the labelled fraction of the pixels, clicks/strokes per image and, where masks
exist, how many labelled pixels agree with them (1.0 for simulated labels).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weakseg.data.dataset import IGNORE, SegDataset
from weakseg.data.palette import read_mask_png, save_mask_png
from weakseg.data.registry import open_dataset
from weakseg.data.simulate import simulate_points, simulate_scribbles
from weakseg.data.weak_labels import points_to_dense, read_scribble_png
from weakseg.engine.artifacts import load_json, mark_done, save_json
from weakseg.engine.stage import begin_stage, stage_record
from weakseg.errors import ConfigError, DataError, unknown_name
from weakseg.stages.io import DataInput, StageOutput
from weakseg.stages.progress import progress

log = logging.getLogger(__name__)

KINDS = ("scribbles", "points")
SOURCES = ("auto", "dataset", "simulate")


@dataclass(frozen=True)
class WeakLabelsOptions:
    """Which partial labels a scribble-task run learns from (nested as ``weak`` in ``weakseg run``)."""

    kind: str = "scribbles"
    """scribbles or points (click discs)"""
    source: str = "auto"
    """dataset (the records' scribbles/points), simulate (from the masks, seeded) or auto (dataset when it has them)"""
    budget: float = 0.03
    """simulated scribbles: labelled pixels per image, a fraction of its labelled area (ScribbleSup: ~3 %)"""
    width: int = 3
    """simulated scribbles: stroke width (px; rloss draws ScribbleSup's polylines 3 px wide)"""
    points_per_object: int = 1
    """simulated points: clicks per object"""
    background_points: int = 3
    """simulated points: clicks on the background per image"""
    point_radius: int = 2
    """points: each click labels a disc of this radius (px; 0 = one pixel)"""

    def check(self) -> None:
        if self.kind not in KINDS:
            raise unknown_name("weak label kind", self.kind, KINDS)
        if self.source not in SOURCES:
            raise unknown_name("weak label source", self.source, SOURCES)
        if not 0 < self.budget or self.width < 1 or self.points_per_object < 1 or self.point_radius < 0:
            raise ConfigError("need budget > 0, width >= 1, points_per_object >= 1 and point_radius >= 0")


@dataclass(frozen=True, kw_only=True)
class WeakLabelsConfig(WeakLabelsOptions, DataInput, StageOutput):
    """Write the partial-label PNGs (scribbles or clicks; 255 = unknown) of a split, read or simulated."""

    seed: int = 0
    """simulation seed (each image's simulator is seeded by this and its id)"""


def _has_kind(ds: SegDataset, kind: str) -> bool:
    if kind == "scribbles":
        return any(r.scribbles is not None for r in ds.records)
    return any(r.points for r in ds.records)


def resolve_source(cfg: WeakLabelsOptions, ds: SegDataset) -> str:
    """``dataset`` or ``simulate`` for ``cfg.source`` on ``ds``; a DataError when neither can give labels."""
    has = _has_kind(ds, cfg.kind)
    source = cfg.source if cfg.source != "auto" else ("dataset" if has else "simulate")
    if source == "dataset" and not has:
        raise DataError(f"no record of split {ds.split!r} of {ds.root} has {cfg.kind}; add them (folder format: "
                        "scribbles/<image>.png) or use --weak.source simulate (needs masks)")  # fmt: skip
    if source == "simulate" and not ds.has_masks:
        raise DataError(f"split {ds.split!r} of {ds.root} has neither {cfg.kind} nor masks to simulate them from; "
                        f"add {cfg.kind} to the dataset")  # fmt: skip
    return source


def image_seed(seed: int, image_id: str) -> int:
    """A per-image simulator seed: stable across runs and independent of the image order."""
    return (seed * 1_000_003 + zlib.crc32(image_id.encode())) % 2**32


def weak_label(cfg: WeakLabelsOptions, ds: SegDataset, i: int, source: str, seed: int) -> np.ndarray:
    """The partial-label map ``uint8 [H, W]`` of image ``i`` (255 = unknown)."""
    rec = ds[i]
    if source == "simulate":
        mask = ds.load_mask(i)
        if mask is None:
            raise DataError(f"image {rec.image_id!r} has no mask to simulate {cfg.kind} from")
        s = image_seed(seed, rec.image_id)
        if cfg.kind == "scribbles":
            return simulate_scribbles(mask, seed=s, width=cfg.width, budget=cfg.budget)
        pts = simulate_points(mask, seed=s, k=cfg.points_per_object, background=cfg.background_points)
        return points_to_dense(pts, *mask.shape, radius=cfg.point_radius, path=rec.image_id)
    h, w = ds.load_image(i).shape[:2]
    if cfg.kind == "scribbles":
        if rec.scribbles is None:
            return np.full((h, w), IGNORE, np.uint8)
        return read_scribble_png(rec.scribbles, "voc", ds.num_classes, (w, h)).dense
    return points_to_dense(rec.points, h, w, radius=cfg.point_radius, path=rec.image_id)


def make_weak_labels(cfg: WeakLabelsConfig) -> dict:
    """Write (or resume, or skip when complete) the partial-label folder; returns its metrics."""
    cfg.check()
    out = Path(cfg.out)
    ds = open_dataset(cfg.data, split=cfg.split, fmt=cfg.fmt)
    if len(ds) == 0:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no images")
    source = resolve_source(cfg, ds)
    record = {**stage_record(cfg), "resolved_source": source}
    if begin_stage(out, "weak", record, overwrite=cfg.overwrite) == "complete":
        return load_json(out / "metrics.json")
    labelled = total = agree = scored = 0
    for i in progress(range(len(ds)), total=len(ds), desc="weak labels"):
        path = out / f"{ds[i].image_id}.png"
        from_disk = path.is_file()  # written before an interruption
        label = read_mask_png(path) if from_disk else weak_label(cfg, ds, i, source, cfg.seed)
        if not from_disk:
            save_mask_png(path, label)
        known = label != IGNORE
        labelled += int(known.sum())
        total += label.size
        mask = ds.load_mask(i) if ds.has_masks else None
        if mask is not None:
            both = known & (mask != IGNORE)
            agree += int((label[both] == mask[both]).sum())
            scored += int(both.sum())
    metrics = {
        "kind": cfg.kind,
        "source": source,
        "images": len(ds),
        "labelled_fraction": round(labelled / max(total, 1), 6),
        "labelled_pixels_per_image": round(labelled / len(ds), 1),
        "agreement_with_masks": round(agree / scored, 6) if scored else None,
        "masks_read": (
            f"ground-truth masks of split {cfg.split!r} of {cfg.data}"
            + (" (to simulate the labels, and to score them)" if source == "simulate" else " (to score them)")
            if ds.has_masks
            else None
        ),
    }
    save_json(out / "metrics.json", metrics)
    mark_done(out, metrics)
    log.info(
        "weak labels (%s, %s): %.2f %% of the pixels labelled", cfg.kind, source, 100 * metrics["labelled_fraction"]
    )
    return metrics
