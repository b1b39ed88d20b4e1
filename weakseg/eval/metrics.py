"""Confusion-matrix segmentation metrics over a whole split.

One ``[C, C]`` confusion matrix accumulated with ``np.bincount`` (rows = ground truth, columns =
prediction), pixels whose ground truth is 255 ignored. IoU_c = TP / (TP + FP + FN); classes that
appear neither in the ground truth nor in the prediction are excluded from the mean (NaN IoU), as
in the PASCAL VOC evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from weakseg.data.dataset import IGNORE  # the one definition of the ignore value


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``int64 [C, C + 1]`` confusion of one image; pixels with ``gt == 255`` are skipped.

    Column ``C`` counts predictions outside ``[0, C)`` (e.g. 255 = "unsure"): a miss for the gt
    class that adds no false positive to any class. One ``np.bincount`` over ``C × (C + 1)`` cells.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    gt = gt.ravel()
    pred = pred.ravel()
    keep = gt != IGNORE
    g = gt[keep].astype(np.int64)
    p = pred[keep]
    if p.dtype.kind not in "iu":
        p = p.astype(np.int64)
    if p.dtype.kind == "i":  # negative predictions are out of range too
        p = np.where(p < 0, num_classes, p)
    p = np.minimum(p, num_classes)  # stays in pred's (small) dtype
    cols = num_classes + 1
    counts = np.bincount(g * cols + p, minlength=num_classes * cols)
    if counts.size > num_classes * cols or (gt.dtype.kind == "i" and g.size and g.min() < 0):
        raise ValueError(f"ground truth has value {int(g.max())}, outside the {num_classes} classes (255 = ignore)")
    return counts.reshape(num_classes, cols)


@dataclass
class SegMetrics:
    """Per-class and mean IoU / precision / recall and pixel accuracy, with class names."""

    class_names: tuple[str, ...]
    iou: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    pixel_accuracy: float
    miou: float = field(init=False)
    mean_precision: float = field(init=False)
    mean_recall: float = field(init=False)

    def __post_init__(self) -> None:
        self.miou = _nanmean(self.iou)
        self.mean_precision = _nanmean(self.precision)
        self.mean_recall = _nanmean(self.recall)

    def to_dict(self) -> dict:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else round(float(x), 6)

        return {
            "miou": clean(self.miou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "mean_precision": clean(self.mean_precision),
            "mean_recall": clean(self.mean_recall),
            "per_class": {
                n: {"iou": clean(i), "precision": clean(p), "recall": clean(r)}
                for n, i, p, r in zip(self.class_names, self.iou, self.precision, self.recall, strict=True)
            },
        }

    def table(self) -> str:
        w = max(12, max(len(n) for n in self.class_names) + 2)
        lines = [f"{'class':<{w}}{'IoU':>8}{'prec':>8}{'recall':>8}"]
        for n, i, p, r in zip(self.class_names, self.iou, self.precision, self.recall, strict=True):
            lines.append(f"{n:<{w}}{_pct(i):>8}{_pct(p):>8}{_pct(r):>8}")
        lines.append(f"{'mean':<{w}}{_pct(self.miou):>8}{_pct(self.mean_precision):>8}{_pct(self.mean_recall):>8}")
        lines.append(f"pixel accuracy {_pct(self.pixel_accuracy)}")
        return "\n".join(lines)


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.2f}"


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


class ConfusionMatrix:
    """Accumulates a confusion matrix image by image; ``metrics()`` turns it into :class:`SegMetrics`."""

    def __init__(self, class_names: Sequence[str]):
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        # last column: predictions outside the class range (misses that are nobody's false positive)
        self.matrix = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        self.matrix += confusion(gt, pred, self.num_classes)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    def metrics(self) -> SegMetrics:
        cm = self.matrix.astype(np.float64)
        tp = np.diag(cm[:, : self.num_classes])
        gt_total = cm.sum(axis=1)
        pred_total = cm[:, : self.num_classes].sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / (gt_total + pred_total - tp)
            precision = tp / pred_total
            recall = tp / gt_total
            acc = tp.sum() / cm.sum() if cm.sum() > 0 else float("nan")
        return SegMetrics(self.class_names, iou, precision, recall, float(acc))


def segmentation_class_names(foreground: Sequence[str]) -> tuple[str, ...]:
    """Class names of a segmentation label space: background first, then the foreground classes."""
    return ("background", *foreground)


def _mask_pairs(gt: np.ndarray | Sequence[np.ndarray], pred: np.ndarray | Sequence[np.ndarray]) -> list[tuple]:
    """One ``(gt, pred)`` pair per image: a single array pair, or two equally long sequences of arrays."""
    if isinstance(gt, np.ndarray) and isinstance(pred, np.ndarray):
        return [(gt, pred)]
    gts, preds = list(gt), list(pred)
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth masks but {len(preds)} predictions")
    return list(zip(gts, preds, strict=True))


def miou(gt: np.ndarray | Sequence[np.ndarray], pred: np.ndarray | Sequence[np.ndarray], num_classes: int) -> float:
    """mIoU of one label map ``[H, W]`` or of a sequence of them, from one accumulated confusion matrix.

    Integer labels in ``[0, num_classes)``, 255 = ignore in ``gt``. Same numbers as
    :class:`ConfusionMatrix` (classes absent from both gt and prediction are left out of the mean).
    """
    cm = ConfusionMatrix([str(c) for c in range(num_classes)])
    for g, p in _mask_pairs(gt, pred):
        cm.update(np.asarray(g), np.asarray(p))
    return cm.metrics().miou


def fb_confusion(gt: np.ndarray | Sequence[np.ndarray], pred: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """``int64 [2, 3]`` foreground-vs-background confusion accumulated over one or many binary masks.

    ``gt``: 0 = background, 1 = foreground, 255 = ignore (bool masks are accepted); ``pred``: 0/1 or bool.
    Rows = ground truth (bg, fg); the last column counts predictions that are neither 0 nor 1.
    """
    total = np.zeros((2, 3), dtype=np.int64)
    for g, p in _mask_pairs(gt, pred):
        total += confusion(_as_labels(g), _as_labels(p), 2)
    return total


def _as_labels(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask.astype(np.uint8) if mask.dtype == bool else mask


def fb_iou(gt: np.ndarray | Sequence[np.ndarray], pred: np.ndarray | Sequence[np.ndarray]) -> float:
    """FB-IoU: mean of the background IoU and the foreground IoU of binary masks, accumulated.

    As the few-shot segmentation papers compute it (PFENet / SCL ``test.py``): every episode adds its
    bg/fg intersections and unions to running sums; FB-IoU = ½ (Σ I_bg / Σ U_bg + Σ I_fg / Σ U_fg).
    Pass a sequence of masks (one per episode) to get the dataset figure, not a mean of per-image
    FB-IoUs. ``gt`` uses 255 = ignore. A class absent from every gt and prediction is left out.
    """
    cm = ConfusionMatrix(("background", "foreground"))
    cm.matrix += fb_confusion(gt, pred)
    return cm.metrics().miou
