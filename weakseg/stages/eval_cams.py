"""Stage ``eval-cams``: mIoU of CAM seeds (:mod:`weakseg.cams.seeds`) against the masks, swept over thresholds.

One confusion matrix per threshold (classes ``background`` + foreground names); the best threshold is
the one with the highest mIoU. It reads the split's ground-truth masks: a threshold picked here is tuned
on those masks (the usual WSSS practice, said wherever it is used).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weakseg.cams.seeds import DEFAULT_THRESHOLDS, top_class
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


@dataclass(frozen=True, kw_only=True)
class EvalCamsConfig(EvalCamsOptions, DataInput):
    """Score CAM seeds (argmax over [threshold, CAMs]) against the masks; sweep the background threshold."""

    cams: Path
    """folder written by make-cams"""
    out: Path | None = None
    """JSON file to write the results to"""


def eval_cams(cfg: EvalCamsConfig) -> dict:
    """mIoU of the seeds at every threshold; returns ``per_threshold``, ``best_threshold``, ``best_miou``,
    ``metrics`` (best threshold's :meth:`SegMetrics.to_dict`) and ``table`` (its text table)."""
    if not cfg.thresholds:
        raise ConfigError("give at least one threshold")
    ds = open_dataset(cfg.data, cfg.split, cfg.fmt)
    if not ds.has_masks:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no masks to evaluate CAMs against")
    names = segmentation_class_names(ds.class_names)
    cms = {t: ConfusionMatrix(names) for t in cfg.thresholds}
    cams_dir = Path(cfg.cams)
    scored = 0
    for i, rec in enumerate(ds.records):
        gt = ds.load_mask(i)
        if gt is None:
            continue
        path = cams_dir / f"{rec.image_id}.npz"
        if not path.is_file():
            raise DataError(f"no CAM file {path} for image {rec.image_id}; run make-cams (it resumes) first")
        z = load_npz(path)
        cams, classes = z["cams"], z["classes"]
        if cams.shape[1:] != gt.shape:
            raise DataError(f"{path}: CAMs {cams.shape[1:]} differ from the mask size {gt.shape}")
        label, peak = top_class(cams, classes)  # shared by all thresholds; only the fg test changes
        for t, cm in cms.items():
            cm.update(gt, np.where(peak > t, label, 0).astype(np.uint8))
        scored += 1
    if scored == 0:
        raise DataError(f"no image of split {cfg.split!r} has a mask to score")
    per = {f"{t:g}": cm.metrics() for t, cm in cms.items()}
    best_key = max(per, key=lambda k: np.nan_to_num(per[k].miou, nan=-1.0))
    best = per[best_key]
    result = {
        "per_threshold": {k: round(float(m.miou), 6) for k, m in per.items()},
        "best_threshold": float(best_key),
        "best_miou": round(float(best.miou), 6),
        "images": scored,
        "masks_read": f"ground-truth masks of split {cfg.split!r} of {cfg.data}",
        "metrics": best.to_dict(),
        "table": best.table(),
    }
    if cfg.out is not None:
        save_json(cfg.out, result)
    log.info("eval-cams: best threshold %s, mIoU %.2f%% over %d images", best_key, 100 * best.miou, scored)
    if len(cfg.thresholds) > 1 and float(best_key) in (min(cfg.thresholds), max(cfg.thresholds)):
        log.warning("eval-cams: the best threshold %s is at the end of the range tried; widen --thresholds", best_key)
    return result
