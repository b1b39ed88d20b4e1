"""Stage ``eval``: a folder of predicted masks against a folder of ground-truth masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from weakseg.engine.artifacts import save_json
from weakseg.errors import DataError
from weakseg.eval.metrics import ConfusionMatrix, SegMetrics, segmentation_class_names


@dataclass(frozen=True)
class EvalConfig:
    """Compare predicted masks with ground-truth masks: per-class IoU, mIoU, precision, recall."""

    pred: Path
    """folder of predicted masks (PNG, 0 = background, c+1 = class c)"""
    gt: Path
    """folder of ground-truth masks with the same file names (255 = ignore)"""
    classes: Path | None = None
    """classes.txt with the foreground class names (default: gt/../classes.txt if present, else numbers)"""
    num_classes: int | None = None
    """number of foreground classes, when no classes.txt exists"""
    out: Path | None = None
    """write the metrics as JSON here"""
    allow_missing: bool = False
    """count ground-truth masks without a prediction as all-wrong instead of failing"""


def read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DataError(f"{path}: mask has mode {im.mode}; masks must be single-channel (P or L) PNGs")
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read mask ({e}); re-export it as a PNG") from None


def _class_names(cfg: EvalConfig) -> tuple[str, ...]:
    path = cfg.classes
    if path is None:
        for cand in (cfg.gt.parent / "classes.txt", cfg.gt / "classes.txt"):
            if cand.is_file():
                path = cand
                break
    if path is not None:
        names = [ln.strip() for ln in Path(path).read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
        return segmentation_class_names(names)
    if cfg.num_classes is None:
        raise DataError(f"no classes.txt beside {cfg.gt}; pass --classes FILE or --num-classes N")
    return segmentation_class_names([f"class{i}" for i in range(cfg.num_classes)])


def evaluate_folders(cfg: EvalConfig) -> SegMetrics:
    names = _class_names(cfg)
    gt_files = sorted(p for p in Path(cfg.gt).glob("*.png"))
    if not gt_files:
        raise DataError(f"no ground-truth PNG masks in {cfg.gt}")
    cm = ConfusionMatrix(names)
    for g in gt_files:
        p = Path(cfg.pred) / g.name
        gt = read_mask(g)
        if not p.is_file():
            if not cfg.allow_missing:
                raise DataError(
                    f"prediction {p} is missing for ground truth {g}; pass --allow-missing to count it as wrong"
                )
            pred = np.full_like(gt, 255)
        else:
            pred = read_mask(p)
        if pred.shape != gt.shape:
            raise DataError(f"{p}: prediction size {pred.shape[::-1]} differs from ground truth {g} {gt.shape[::-1]}")
        cm.update(gt, pred)
    metrics = cm.metrics()
    if cfg.out is not None:
        save_json(cfg.out, metrics.to_dict() | {"images": len(gt_files)})
    return metrics
