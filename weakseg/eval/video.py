"""Video object segmentation metrics of the DAVIS benchmark: region similarity J, contour accuracy F, J&F.

Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for Video Object Segmentation", CVPR
2016; numbers follow the official evaluation code (``davis2017-evaluation``, ``davis2017/metrics.py``):

- **J** = |G ∩ P| / |G ∪ P| of one object's binary masks ``[H, W]``; 1 when both are empty.
- **F**: boundary maps of both masks (:func:`seg2bmap`: a pixel is a boundary pixel when it differs from
  its right, lower or lower-right neighbour — one pixel wide, half a pixel towards the origin); a
  boundary pixel is matched when the other map has a boundary pixel within ``ceil(bound_th · ‖(H, W)‖)``
  pixels (``bound_th = 0.008`` of the image diagonal; a value ≥ 1 is taken as pixels), tested by a disk
  dilation. Precision = matched predicted / predicted boundary pixels, recall = matched gt / gt
  boundary pixels, F = 2PR / (P + R) (0 when P + R = 0). No predicted boundary: P = 1, R = 0; no gt
  boundary: P = 0, R = 1; neither: P = R = 1 (F = 1).
- **J&F** = (J + F) / 2.

``void`` (optional ``[H, W]`` bool): pixels left out of both (DAVIS 2017 "void" regions).

**Frames of a sequence** (:func:`sequence_scores`): the official DAVIS 2016 and 2017 semi-supervised
evaluations both score ``frames[1:-1]`` — the first frame (its mask is given as input) *and the last
frame* are left out. That is the default here (``skip_first=True, skip_last=True``); set
``skip_last=False`` for "all frames but the annotated first one".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOUND_TH = 0.008  # DAVIS boundary tolerance, fraction of the image diagonal


def _pair(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
    if gt.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    if gt.ndim != 2:
        raise ValueError(f"expected [H, W] masks of one frame, got shape {gt.shape}")
    keep = np.ones_like(gt) if void is None else ~np.asarray(void).astype(bool)
    if keep.shape != gt.shape:
        raise ValueError(f"void mask shape {keep.shape} differs from ground truth shape {gt.shape}")
    return gt, pred, keep


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """DAVIS J: IoU of two binary masks ``[H, W]`` outside ``void``; 1 when the union is empty."""
    g, p, keep = _pair(gt, pred, void)
    union = int(np.count_nonzero((g | p) & keep))
    return 1.0 if union == 0 else int(np.count_nonzero(g & p & keep)) / union


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map ``bool [H, W]`` of a binary mask (Martin et al.'s ``seg2bmap`` rule).

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour; on the last
    row only the right neighbour counts, on the last column only the lower one, and the bottom-right
    pixel is never a boundary (the image border is not an edge).
    """
    seg = np.asarray(mask).astype(bool)
    right = np.zeros_like(seg)
    down = np.zeros_like(seg)
    diag = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    down[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ right) | (seg ^ down) | (seg ^ diag)
    b[-1, :] = seg[-1, :] ^ right[-1, :]
    b[:, -1] = seg[:, -1] ^ down[:, -1]
    b[-1, -1] = False
    return b


def _disk(radius: int) -> np.ndarray:
    """Disk footprint ``x² + y² <= r²`` (as ``skimage.morphology.disk``)."""
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def boundary_tolerance(shape: tuple[int, ...], bound_th: float = BOUND_TH) -> int:
    """Matching distance in pixels: ``bound_th`` if ≥ 1, else ``ceil(bound_th × image diagonal)``."""
    return int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(*shape[:2]))


def boundary_prf(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> tuple[float, float, float]:
    """``(precision, recall, F)`` of the boundaries of two binary masks ``[H, W]`` (module docstring)."""
    from scipy.ndimage import binary_dilation

    g, p, keep = _pair(gt, pred, void)
    gb, pb = seg2bmap(g & keep), seg2bmap(p & keep)
    n_gt, n_pred = int(np.count_nonzero(gb)), int(np.count_nonzero(pb))
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        footprint = _disk(boundary_tolerance(g.shape, bound_th))
        precision = int(np.count_nonzero(pb & binary_dilation(gb, footprint))) / n_pred
        recall = int(np.count_nonzero(gb & binary_dilation(pb, footprint))) / n_gt
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f


def contour_accuracy(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> float:
    """DAVIS F: boundary F-measure of two binary masks ``[H, W]`` (see the module docstring)."""
    return boundary_prf(gt, pred, void, bound_th)[2]


def j_and_f(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH) -> float:
    """DAVIS J&F of one frame: the mean of :func:`region_similarity` and :func:`contour_accuracy`."""
    return 0.5 * (region_similarity(gt, pred, void) + contour_accuracy(gt, pred, void, bound_th))


@dataclass(frozen=True)
class VideoScores:
    """One object's sequence scores: per-frame J and F of the scored frames, their means and recalls."""

    j: tuple[float, ...]
    f: tuple[float, ...]
    frames: tuple[int, ...]  # indices (into the input sequence) of the scored frames

    @property
    def j_mean(self) -> float:
        return float(np.mean(self.j)) if self.j else math.nan

    @property
    def f_mean(self) -> float:
        return float(np.mean(self.f)) if self.f else math.nan

    @property
    def jf(self) -> float:
        """J&F of the sequence: (mean J + mean F) / 2."""
        return 0.5 * (self.j_mean + self.f_mean)

    @property
    def j_recall(self) -> float:
        """Fraction of scored frames with J > 0.5 (DAVIS "recall")."""
        return float(np.mean(np.asarray(self.j) > 0.5)) if self.j else math.nan

    @property
    def f_recall(self) -> float:
        """Fraction of scored frames with F > 0.5."""
        return float(np.mean(np.asarray(self.f) > 0.5)) if self.f else math.nan


def sequence_scores(
    gts: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    voids: Sequence[np.ndarray | None] | None = None,
    bound_th: float = BOUND_TH,
    skip_first: bool = True,
    skip_last: bool = True,
) -> VideoScores:
    """J and F of one object over a sequence of binary masks ``[H, W]`` (one per frame).

    By default frames ``1 … T−2`` are scored, as the official DAVIS 2016/2017 evaluations do
    (``masks[1:-1]``). Multi-object sequences: call once per object (``gt == k``, ``pred == k``); the
    DAVIS dataset J&F is the mean over all objects of all sequences.
    """
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth frames but {len(preds)} predicted frames")
    if voids is not None and len(voids) != len(gts):
        raise ValueError(f"{len(voids)} void masks for {len(gts)} frames")
    start, stop = int(skip_first), len(gts) - int(skip_last)
    frames = tuple(range(start, max(start, stop)))
    j, f = [], []
    for t in frames:
        void = None if voids is None else voids[t]
        j.append(region_similarity(gts[t], preds[t], void))
        f.append(contour_accuracy(gts[t], preds[t], void, bound_th))
    return VideoScores(tuple(j), tuple(f), frames)
