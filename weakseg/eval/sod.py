"""Salient-object-detection metrics: MAE, Fβ, S-measure Sα, E-measure Eξ.

Pure numpy re-implementations of the definitions in ``pysodmetrics`` (``py_sod_metrics`` 1.6, itself a
port of the MATLAB evaluation code of the SOD / co-saliency benchmarks); ``tests/test_eval_registry.py``
checks every number against pysodmetrics as the oracle. Written here rather than wrapped because
pysodmetrics pins ``numpy<2.3.5`` and pulls in OpenCV, scikit-image and scikit-learn for a few dozen
lines of arithmetic; it stays an optional extra (``weakseg[sod]``) for cross-checking.

Inputs: ``gt`` ``[H, W]`` binary (bool; uint8 masks are thresholded at 128 as the toolkits do, or at 0 if
their maximum is 1; other dtypes at 0.5). ``pred`` ``[H, W]`` either float in [0, 1], used as is
(pysodmetrics ``normalize=False``), or uint8 in [0, 255], divided by 255 and min-max stretched to
[0, 1] when not constant (pysodmetrics ``normalize=True``, MATLAB ``mapminmax(im2double(...))``).

Thresholded metrics (Fβ, Eξ) return :class:`ThresholdScores`: ``curve[t]`` is the score of the binary map
``floor(255·pred) >= t`` for t = 0…255 (ascending; pysodmetrics stores the same curve descending);
``max`` / ``mean`` are over that curve; ``adaptive`` binarises ``pred >= min(2·mean(pred), 1)``.
Over a dataset, the max/mean Fβ and Eξ of the benchmarks are the max/mean of the *per-image curves
averaged* over images, not the mean of per-image maxima: use :class:`SaliencyMeter`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EPS = float(np.spacing(1))  # MATLAB's eps, as in pysodmetrics
BETA2 = 0.3  # β² of the Fβ used by every SOD benchmark (Achanta et al., CVPR 2009)


@dataclass(frozen=True)
class ThresholdScores:
    """A thresholded metric of one image: max / mean over the 256 thresholds, adaptive, and the curve."""

    max: float
    mean: float
    adaptive: float
    curve: np.ndarray = field(repr=False)  # float64 [256], index = threshold t on floor(255 * pred)


def prepare(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(gt bool [H, W], pred float64 [H, W] in [0, 1])`` following the conventions of the module docstring."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    if gt.ndim != 2:
        raise ValueError(f"expected [H, W] maps, got shape {gt.shape}")
    if gt.dtype == bool:
        g = gt
    elif gt.dtype == np.uint8:
        g = gt > (128 if gt.max(initial=0) > 1 else 0)
    else:
        g = gt > 0.5
    if pred.dtype == np.uint8:
        p = pred / 255.0
        if p.max() != p.min():
            p = (p - p.min()) / (p.max() - p.min())
    elif pred.dtype == bool:
        p = pred.astype(np.float64)
    elif pred.dtype.kind == "f":
        p = pred.astype(np.float64)
        if p.size and not (p.min() >= 0.0 and p.max() <= 1.0):
            raise ValueError(f"float saliency map must lie in [0, 1], got [{p.min():.4g}, {p.max():.4g}]")
    else:
        raise ValueError(f"saliency map must be float in [0, 1], uint8 in [0, 255] or bool, got {pred.dtype}")
    return g, p


def mae(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error between the saliency map and the binary ground truth (Perazzi et al., CVPR 2012)."""
    g, p = prepare(gt, pred)
    return float(np.mean(np.abs(p - g)))


def _cumulative_counts(g: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For t = 0…255: (# gt-fg pixels, # gt-bg pixels) with ``floor(255 p) >= t``."""
    q = (p * 255).astype(np.uint8)
    fg = np.bincount(q[g], minlength=256)
    bg = np.bincount(q[~g], minlength=256)
    # reverse cumulative sum: count of values >= t
    return np.cumsum(fg[::-1])[::-1], np.cumsum(bg[::-1])[::-1]


def _adaptive_threshold(p: np.ndarray) -> float:
    return min(2.0 * float(p.mean()), 1.0)


def _f_beta(tp: np.ndarray, n_pred: np.ndarray, n_gt: int, beta2: float) -> np.ndarray:
    """Fβ from true positives and predicted-positive counts; 0 where there is no true positive."""
    precision = tp / np.maximum(n_pred, 1)
    recall = tp / max(n_gt, 1)
    num = (1 + beta2) * precision * recall
    den = np.where(num == 0, 1.0, beta2 * precision + recall)
    return num / den


def fmeasure(gt: np.ndarray, pred: np.ndarray, beta2: float = BETA2) -> ThresholdScores:
    """Fβ = (1 + β²) P R / (β² P + R) over thresholds, and at the adaptive threshold (β² = 0.3).

    Achanta et al., CVPR 2009; adaptive threshold 2 × mean saliency (capped at 1). An image with no
    true positive at a threshold scores 0 there.
    """
    g, p = prepare(gt, pred)
    n_gt = int(np.count_nonzero(g))
    tp, fp = _cumulative_counts(g, p)
    curve = _f_beta(tp.astype(np.float64), (tp + fp).astype(np.float64), n_gt, beta2)
    binary = p >= _adaptive_threshold(p)
    tp_a = float(np.count_nonzero(binary & g))
    adaptive = float(_f_beta(np.array(tp_a), np.array(float(np.count_nonzero(binary))), n_gt, beta2))
    return ThresholdScores(float(curve.max()), float(curve.mean()), adaptive, curve)


def _s_object(x: np.ndarray) -> float:
    mean = float(np.mean(x))
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _ssim(p: np.ndarray, g: np.ndarray) -> float:
    n = p.size
    x, y = float(p.mean()), float(g.mean())
    sigma_x = float(np.sum((p - x) ** 2)) / (n - 1 + EPS)
    sigma_y = float(np.sum((g - y) ** 2)) / (n - 1 + EPS)
    sigma_xy = float(np.sum((p - x) * (g - y))) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def smeasure(gt: np.ndarray, pred: np.ndarray, alpha: float = 0.5) -> float:
    """Structure measure Sα = α·S_object + (1 − α)·S_region (Fan et al., ICCV 2017), α = 0.5.

    S_region splits both maps into four blocks at the gt foreground centroid (rounded half to even, +1
    as in the MATLAB code) and sums the block SSIMs weighted by area. All-background gt: 1 − mean(pred);
    all-foreground gt: mean(pred). A zero-area block adds nothing (pysodmetrics would give NaN there).
    """
    g, p = prepare(gt, pred)
    y = float(g.mean())
    if y == 0:
        return 1.0 - float(p.mean())
    if y == 1:
        return float(p.mean())
    s_obj = _s_object(p[g]) * y + _s_object((1 - p)[~g]) * (1 - y)
    h, w = g.shape
    cy, cx = (int(v) + 1 for v in np.round(np.argwhere(g).mean(axis=0)))
    gf = g.astype(np.float64)
    s_reg = 0.0
    for rows in (slice(0, cy), slice(cy, h)):
        for cols in (slice(0, cx), slice(cx, w)):
            block = p[rows, cols]
            if block.size:  # weight = block area / image area
                s_reg += _ssim(block, gf[rows, cols]) * block.size / (h * w)
    return max(0.0, alpha * s_obj + (1 - alpha) * s_reg)


def _enhanced_sum(tp, fp, n_gt: int, n: int):
    """Σ of the enhanced alignment matrix of a binary map with tp / fp counts (scalars or arrays)."""
    n_pred = tp + fp
    if n_gt == 0:
        return n - n_pred
    if n_gt == n:
        return n_pred
    fn = n_gt - tp
    tn = n - n_pred - fn
    mean_pred, mean_gt = n_pred / n, n_gt / n
    total = 0
    for count, a, b in (
        (tp, 1 - mean_pred, 1 - mean_gt),
        (fp, 1 - mean_pred, -mean_gt),
        (fn, -mean_pred, 1 - mean_gt),
        (tn, -mean_pred, -mean_gt),
    ):
        align = 2 * a * b / (a**2 + b**2 + EPS)
        total = total + (align + 1) ** 2 / 4 * count
    return total


def emeasure(gt: np.ndarray, pred: np.ndarray) -> ThresholdScores:
    """Enhanced-alignment measure Eξ (Fan et al., IJCAI 2018) over thresholds and at the adaptive one.

    Eξ = Σ φ / (H·W − 1) with φ = (1 + ξ)² / 4, ξ the alignment of the mean-removed binary map and gt;
    all-background gt: Σφ = # predicted background; all-foreground gt: Σφ = # predicted foreground.
    """
    g, p = prepare(gt, pred)
    n, n_gt = g.size, int(np.count_nonzero(g))
    tp, fp = _cumulative_counts(g, p)
    curve = np.asarray(_enhanced_sum(tp.astype(np.float64), fp.astype(np.float64), n_gt, n), dtype=np.float64)
    curve = np.broadcast_to(curve, (256,)) / (n - 1 + EPS)
    binary = p >= _adaptive_threshold(p)
    tp_a = float(np.count_nonzero(binary & g))
    fp_a = float(np.count_nonzero(binary & ~g))
    adaptive = float(_enhanced_sum(tp_a, fp_a, n_gt, n)) / (n - 1 + EPS)
    return ThresholdScores(float(curve.max()), float(curve.mean()), adaptive, np.array(curve))


class SaliencyMeter:
    """Dataset-level SOD numbers as the benchmarks report them (pysodmetrics ``get_results``).

    MAE, Sα and adaptive Fβ / Eξ: mean over images. Max / mean Fβ and Eξ: max / mean of the curve
    averaged over images.
    """

    def __init__(self, beta2: float = BETA2, alpha: float = 0.5):
        self.beta2, self.alpha = beta2, alpha
        self.maes: list[float] = []
        self.sms: list[float] = []
        self.fms: list[ThresholdScores] = []
        self.ems: list[ThresholdScores] = []

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        self.maes.append(mae(gt, pred))
        self.sms.append(smeasure(gt, pred, self.alpha))
        self.fms.append(fmeasure(gt, pred, self.beta2))
        self.ems.append(emeasure(gt, pred))

    def results(self) -> dict[str, float]:
        """``mae, smeasure, {max,mean,adaptive}_fmeasure, {max,mean,adaptive}_emeasure`` (all floats)."""
        if not self.maes:
            raise ValueError("no image was added to the meter")
        out = {"mae": float(np.mean(self.maes)), "smeasure": float(np.mean(self.sms))}
        for name, scores in (("fmeasure", self.fms), ("emeasure", self.ems)):
            curve = np.mean([s.curve for s in scores], axis=0)
            out[f"max_{name}"] = float(curve.max())
            out[f"mean_{name}"] = float(curve.mean())
            out[f"adaptive_{name}"] = float(np.mean([s.adaptive for s in scores]))
        return out
