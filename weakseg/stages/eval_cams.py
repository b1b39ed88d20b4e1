"""Stage ``eval-cams``: mIoU of CAM seeds (:mod:`weakseg.cams.seeds`) against the masks, swept over thresholds.

One confusion matrix per threshold (classes ``background`` + foreground names); the best threshold is
the one with the highest mIoU. It reads the split's ground-truth masks, or with ``calib`` only the masks of a
folder holding a few hand-labelled images of the split: a threshold picked here is tuned on those masks (the
usual WSSS practice, said wherever it is used: ``masks_read`` and ``mask_ids`` in the result). A split without
masks and no ``calib`` cannot be swept (``weakseg run`` then skips the stage; see :func:`mask_source`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weakseg.cams.seeds import DEFAULT_THRESHOLDS, top_class
from weakseg.data.dataset import SegDataset, load_checked_mask
from weakseg.data.images import IMAGE_EXTENSIONS, display_path
from weakseg.data.registry import open_dataset
from weakseg.engine.artifacts import load_npz, save_json
from weakseg.errors import ConfigError, DataError
from weakseg.eval.metrics import ConfusionMatrix, segmentation_class_names
from weakseg.stages.io import DataInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalCamsOptions:
    """Seed-evaluation options (nested as ``eval_cams`` in ``weakseg run``)."""

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    """background scores to sweep"""
    calib: Path | None = None
    """folder of ``<image_id>.png`` masks (0 = background, c+1 = class c, 255 = ignore) of some images of the split,
    e.g. 50 labelled by hand: the sweep reads only these instead of the split's masks (None = the split's masks)"""


@dataclass(frozen=True, kw_only=True)
class EvalCamsConfig(EvalCamsOptions, DataInput):
    """Score CAM seeds (argmax over [threshold, CAMs]) against the masks; sweep the background threshold."""

    cams: Path
    """folder written by make-cams"""
    out: Path | None = None
    """JSON file to write the results to"""


def mask_source(cfg: EvalCamsConfig, ds: SegDataset) -> str | None:
    """Which masks the sweep reads: ``calib`` (the calibration folder), ``split`` (the split's ground truth), or
    None when there are none (the split has no masks and no ``calib`` is given)."""
    if cfg.calib is not None:
        return "calib"
    return "split" if ds.has_masks else None


def _calib_masks(folder: Path, ds: SegDataset) -> dict[int, Path]:
    """``{record index: mask file}`` of the calibration folder; files naming no image of the split are refused."""
    if not folder.is_dir():
        raise DataError(f"calibration folder {display_path(folder)} does not exist; give a folder of <image_id>.png")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    ids = {r.image_id for r in ds.records}
    unknown = [p.name for p in files if p.stem not in ids]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DataError(
            f"calibration masks {shown} in {display_path(folder)} name no image of split {ds.split!r}; "
            "name each mask <image_id>.png after an image of the split, or move it out"
        )
    if not files:
        others = [p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = f" (found {', '.join(others[:3])}: masks must be PNG)" if others else ""
        raise DataError(f"calibration folder {display_path(folder)} holds no <image_id>.png mask{hint}")
    return {ds.index_of(p.stem): p for p in files}


def eval_cams(cfg: EvalCamsConfig) -> dict:
    """mIoU of the seeds at every threshold; returns ``per_threshold``, ``best_threshold``, ``best_miou``,
    ``metrics`` (best threshold's :meth:`SegMetrics.to_dict`), ``table`` (its text table), ``masks_read`` (which
    masks, in words) and ``mask_ids`` (with ``calib``: the images whose masks were read)."""
    if not cfg.thresholds:
        raise ConfigError("give at least one threshold")
    ds = open_dataset(cfg.data, cfg.split, cfg.fmt)
    source = mask_source(cfg, ds)
    if source is None:
        raise DataError(
            f"split {cfg.split!r} of {cfg.data} has no masks to evaluate CAMs against; label a few images and give "
            "--calib DIR (a folder of <image_id>.png masks)"
        )
    calib = _calib_masks(Path(cfg.calib), ds) if source == "calib" else {}
    names = segmentation_class_names(ds.class_names)
    cms = {t: ConfusionMatrix(names) for t in cfg.thresholds}
    cams_dir = Path(cfg.cams)
    scored: list[str] = []
    for i, rec in enumerate(ds.records):
        if source == "calib":
            gt = load_checked_mask(calib[i], ds.num_classes) if i in calib else None
        else:
            gt = ds.load_mask(i)
        if gt is None:
            continue
        path = cams_dir / f"{rec.image_id}.npz"
        if not path.is_file():
            raise DataError(f"no CAM file {path} for image {rec.image_id}; run make-cams (it resumes) first")
        z = load_npz(path)
        cams, classes = z["cams"], z["classes"]
        if cams.shape[1:] != gt.shape:
            raise DataError(f"{path}: CAMs {cams.shape[1:]} differ from the mask size {gt.shape} of {rec.image_id!r}")
        label, peak = top_class(cams, classes)  # shared by all thresholds; only the fg test changes
        for t, cm in cms.items():
            cm.update(gt, np.where(peak > t, label, 0).astype(np.uint8))
        scored.append(rec.image_id)
    if not scored:
        raise DataError(f"no image of split {cfg.split!r} has a mask to score")
    per = {f"{t:g}": cm.metrics() for t, cm in cms.items()}
    best_key = max(per, key=lambda k: np.nan_to_num(per[k].miou, nan=-1.0))
    best = per[best_key]
    result = {
        "per_threshold": {k: round(float(m.miou), 6) for k, m in per.items()},
        "best_threshold": float(best_key),
        "best_miou": round(float(best.miou), 6),
        "images": len(scored),
        "split": cfg.split,
        "mask_source": source,
        "masks_read": (
            f"{len(scored)} calibration masks of {cfg.calib}"
            if source == "calib"
            else f"ground-truth masks of split {cfg.split!r} of {cfg.data}"
        ),
        "mask_ids": scored if source == "calib" else None,
        "metrics": best.to_dict(),
        "table": best.table(),
    }
    if cfg.out is not None:
        save_json(cfg.out, result)
    log.info("eval-cams: best threshold %s, mIoU %.2f%% over %d images (%s)", best_key, 100 * best.miou, len(scored),
             result["masks_read"])  # fmt: skip
    if len(cfg.thresholds) > 1 and float(best_key) in (min(cfg.thresholds), max(cfg.thresholds)):
        log.warning("eval-cams: the best threshold %s is at the end of the range tried; widen --thresholds", best_key)
    return result
