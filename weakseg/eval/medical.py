"""Medical segmentation metrics: Dice, Jaccard, HD95 and ASD of 2D or 3D label volumes, per class.

Distances come from ``medpy.metric.binary`` (``hd95``, ``asd``), the backend of the semi-supervised ACDC
literature (SSL4MIS, BCP, ABD ``test_ACDC.py``); Dice and Jaccard are counted here with numpy and equal
medpy's ``dc`` / ``jc`` whenever both masks are non-empty. medpy is optional (``pip install
'weakseg[medical]'``) and only the distance functions need it.

Argument order is ``(gt, pred)`` everywhere in :mod:`weakseg.eval`; arrays are ``[H, W]`` or ``[D, H, W]``.

**Units.** With ``spacing`` (one voxel size per axis, in mm, or one number for isotropic voxels) distances
are in millimetres; without it they are in voxels, as in the ABD / SSL4MIS ACDC tables. Every distance
result carries its ``unit`` (``"mm"`` or ``"voxel"``) so the two cannot be mixed up silently.

**HD95** is medpy's symmetric 95th percentile of the surface distances pooled in both directions.
**ASD** is medpy's ``asd(pred, gt)``: the mean distance from the *prediction's* surface voxels to the
ground truth's surface, the directed figure the ACDC papers report (not the symmetric ASSD).

**Empty masks** (a class missing from the prediction and/or the ground truth), ``empty="strict"``
(default):

======================  =====  =======  ==========  ==========
case                    Dice   Jaccard  HD95        ASD
======================  =====  =======  ==========  ==========
both empty              1      1        0           0
one empty, other not    0      0        NaN         NaN
======================  =====  =======  ==========  ==========

A distance to nothing is undefined; NaN keeps such a case visible instead of scoring it as perfect
(count the NaNs when averaging). ``empty="ssl4mis"`` reproduces ABD's ``test_ACDC.py`` (and SSL4MIS's
``val_2D.py``): an **empty prediction scores 0 for all four metrics, whatever the ground truth** —
including the both-empty case — so a missed class gets a *perfect* HD95/ASD of 0. Use it only to
compare with published tables (on ACDC every test volume holds every class, so only the missed-class
case occurs there). A non-empty prediction of a class absent from the ground truth gets Dice/Jaccard 0
and NaN distances under both rules (medpy raises on it; the reference code never meets it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from weakseg.errors import ConfigError, missing_extra

EmptyRule = Literal["strict", "ssl4mis"]
EMPTY_RULES = ("strict", "ssl4mis")


@dataclass(frozen=True)
class Distance:
    """A surface distance with its unit: ``"mm"`` when a spacing was given, ``"voxel"`` otherwise."""

    value: float
    unit: str

    def __float__(self) -> float:
        return float(self.value)


@dataclass(frozen=True)
class MedicalScores:
    """Dice, Jaccard (in [0, 1]) and HD95, ASD (in ``unit``: ``"mm"`` or ``"voxel"``) of one class."""

    dice: float
    jaccard: float
    hd95: float
    asd: float
    unit: str


def _binary_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    if gt.ndim not in (2, 3):
        raise ValueError(f"expected a 2D [H, W] or 3D [D, H, W] mask, got shape {gt.shape}")
    return gt.astype(bool), pred.astype(bool)


def _check_empty_rule(empty: str) -> None:
    if empty not in EMPTY_RULES:
        raise ConfigError(f"unknown empty-mask rule {empty!r}; valid names: {', '.join(EMPTY_RULES)}")


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[tuple[float, ...] | None, str]:
    """Normalised voxel spacing (one value per axis) and the unit it implies."""
    if spacing is None:
        return None, "voxel"
    values = (float(spacing),) * ndim if np.isscalar(spacing) else tuple(float(s) for s in spacing)  # type: ignore[arg-type, union-attr]
    if len(values) != ndim:
        raise ValueError(f"spacing {spacing!r} has {len(values)} values for a {ndim}D mask")
    if not all(v > 0 and math.isfinite(v) for v in values):
        raise ValueError(f"spacing {spacing!r} must be positive (mm per voxel along each axis)")
    return values, "mm"


def _overlap(gt: np.ndarray, pred: np.ndarray, empty: str) -> tuple[float, float]:
    """(Dice, Jaccard) of two boolean masks under the empty-mask rule."""
    n_gt, n_pred = int(np.count_nonzero(gt)), int(np.count_nonzero(pred))
    if n_pred == 0 and (empty == "ssl4mis" or n_gt > 0):
        return 0.0, 0.0
    if n_gt == 0 and n_pred == 0:
        return 1.0, 1.0
    inter = int(np.count_nonzero(gt & pred))
    return 2.0 * inter / (n_gt + n_pred), inter / (n_gt + n_pred - inter)


def _distances(
    gt: np.ndarray, pred: np.ndarray, spacing: float | Sequence[float] | None, empty: str
) -> tuple[float, float, str]:
    """(HD95, ASD, unit) of two boolean masks under the empty-mask rule; medpy does the non-empty case."""
    voxelspacing, unit = _spacing(spacing, gt.ndim)
    has_gt, has_pred = bool(gt.any()), bool(pred.any())
    if not has_pred and (empty == "ssl4mis" or not has_gt):
        return 0.0, 0.0, unit  # ssl4mis: empty prediction -> 0; strict: both empty -> perfect agreement
    if not (has_gt and has_pred):
        return math.nan, math.nan, unit
    try:
        from medpy.metric import binary
    except ImportError as e:
        raise missing_extra("medpy", "medical", "HD95/ASD") from e
    hd = float(binary.hd95(pred, gt, voxelspacing=voxelspacing))
    sd = float(binary.asd(pred, gt, voxelspacing=voxelspacing))
    return hd, sd, unit


def dice(gt: np.ndarray, pred: np.ndarray, empty: EmptyRule = "strict") -> float:
    """Dice = 2|G ∩ P| / (|G| + |P|) of two binary masks ``[H, W]`` or ``[D, H, W]`` (nonzero = foreground)."""
    _check_empty_rule(empty)
    return _overlap(*_binary_pair(gt, pred), empty)[0]


def jaccard(gt: np.ndarray, pred: np.ndarray, empty: EmptyRule = "strict") -> float:
    """Jaccard = |G ∩ P| / |G ∪ P| of two binary masks ``[H, W]`` or ``[D, H, W]`` (nonzero = foreground)."""
    _check_empty_rule(empty)
    return _overlap(*_binary_pair(gt, pred), empty)[1]


def hd95(
    gt: np.ndarray, pred: np.ndarray, spacing: float | Sequence[float] | None = None, empty: EmptyRule = "strict"
) -> Distance:
    """95th-percentile symmetric Hausdorff distance of two binary masks; mm with ``spacing``, else voxels."""
    _check_empty_rule(empty)
    hd, _, unit = _distances(*_binary_pair(gt, pred), spacing, empty)
    return Distance(hd, unit)


def asd(
    gt: np.ndarray, pred: np.ndarray, spacing: float | Sequence[float] | None = None, empty: EmptyRule = "strict"
) -> Distance:
    """Average surface distance from the prediction to the ground truth; mm with ``spacing``, else voxels."""
    _check_empty_rule(empty)
    _, sd, unit = _distances(*_binary_pair(gt, pred), spacing, empty)
    return Distance(sd, unit)


def binary_scores(
    gt: np.ndarray, pred: np.ndarray, spacing: float | Sequence[float] | None = None, empty: EmptyRule = "strict"
) -> MedicalScores:
    """Dice, Jaccard, HD95, ASD of two binary masks ``[H, W]`` or ``[D, H, W]`` (see the module docstring)."""
    _check_empty_rule(empty)
    g, p = _binary_pair(gt, pred)
    dc, jc = _overlap(g, p, empty)
    hd, sd, unit = _distances(g, p, spacing, empty)
    return MedicalScores(dc, jc, hd, sd, unit)


def per_class_scores(
    gt: np.ndarray,
    pred: np.ndarray,
    classes: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    empty: EmptyRule = "strict",
) -> dict[int, MedicalScores]:
    """Per-class scores of integer label volumes ``[H, W]`` or ``[D, H, W]`` (0 = background).

    ``classes``: the labels to score (e.g. ``(1, 2, 3)`` = RV, Myo, LV on ACDC); by default every
    nonzero label present in ``gt`` or ``pred``. Class ``c`` is scored on ``gt == c`` vs ``pred == c``.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    if classes is None:
        classes = [int(c) for c in np.union1d(np.unique(gt), np.unique(pred)) if c != 0]
    return {int(c): binary_scores(gt == c, pred == c, spacing, empty) for c in classes}


def mean_scores(scores: Iterable[MedicalScores]) -> MedicalScores:
    """Mean over classes or cases (NaN distances left out, as ``np.nanmean``); all units must agree."""
    scores = list(scores)
    if not scores:
        raise ValueError("no scores to average")
    units = {s.unit for s in scores}
    if len(units) > 1:
        raise ValueError(f"cannot average distances in different units: {sorted(units)}")

    def avg(values: list[float]) -> float:
        arr = np.asarray(values, dtype=np.float64)
        return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan

    return MedicalScores(
        avg([s.dice for s in scores]),
        avg([s.jaccard for s in scores]),
        avg([s.hd95 for s in scores]),
        avg([s.asd for s in scores]),
        units.pop(),
    )
