"""The metric registry: one explicit dict from a metric's name to its :class:`MetricSpec`.

Every metric is a pure function called as ``fn(gt, pred, **options)`` — ground truth first, as
:func:`weakseg.eval.metrics.confusion` — that returns a float, or a small frozen dataclass for metrics
with several values (``fmeasure`` / ``emeasure``: :class:`~weakseg.eval.sod.ThresholdScores` with
``max``, ``mean``, ``adaptive``; ``hd95`` / ``asd``: :class:`~weakseg.eval.medical.Distance` with its
``unit``, ``float()``-able). Its module docstring states the conventions (empty masks, units, frames)::

    from weakseg.eval.registry import get_metric
    get_metric("fb_iou").fn(gt_masks, pred_masks)

Add a metric without editing the package with :func:`register_metric` (also usable as a decorator).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from weakseg.errors import ConfigError, unknown_name
from weakseg.eval import medical, metrics, sod, video

KINDS = ("semantic", "binary", "saliency", "medical", "video")


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: ``fn(gt, pred, **options)``, its task kind and its direction."""

    name: str
    fn: Callable[..., Any]
    kind: str  # one of KINDS: which task's outputs it scores
    higher_is_better: bool
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise unknown_name("metric kind", self.kind, KINDS)
        if not callable(self.fn):
            raise ConfigError(f"metric {self.name!r}: fn must be callable, got {type(self.fn).__name__}")


METRICS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec("miou", metrics.miou, "semantic", True, "mean IoU over classes of one accumulated confusion matrix"),
        MetricSpec("fb_iou", metrics.fb_iou, "binary", True, "mean of background and foreground IoU, accumulated"),
        MetricSpec("dice", medical.dice, "medical", True, "Dice 2|G∩P|/(|G|+|P|) of binary masks (2D/3D)"),
        MetricSpec("jaccard", medical.jaccard, "medical", True, "Jaccard |G∩P|/|G∪P| of binary masks (2D/3D)"),
        MetricSpec("hd95", medical.hd95, "medical", False, "95th-percentile Hausdorff distance (mm or voxels; medpy)"),
        MetricSpec("asd", medical.asd, "medical", False, "average surface distance pred → gt (mm or voxels; medpy)"),
        MetricSpec("mae", sod.mae, "saliency", False, "mean absolute error of a saliency map"),
        MetricSpec("fmeasure", sod.fmeasure, "saliency", True, "Fβ (β²=0.3): max / mean over thresholds, adaptive"),
        MetricSpec("smeasure", sod.smeasure, "saliency", True, "structure measure Sα (α=0.5)"),
        MetricSpec("emeasure", sod.emeasure, "saliency", True, "enhanced-alignment Eξ: max / mean, adaptive"),
        MetricSpec("j", video.region_similarity, "video", True, "DAVIS region similarity J (mask IoU)"),
        MetricSpec("f", video.contour_accuracy, "video", True, "DAVIS contour accuracy F (boundary F-measure)"),
        MetricSpec("jf", video.j_and_f, "video", True, "DAVIS J&F = (J + F) / 2"),
    )
}


def get_metric(name: str) -> MetricSpec:
    """The spec registered under ``name``; an unknown name raises a ConfigError listing the valid ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise unknown_name("metric", name, METRICS) from None


def list_metrics(kind: str | None = None) -> list[str]:
    """Sorted names of the registered metrics, optionally only those of one ``kind``."""
    if kind is not None and kind not in KINDS:
        raise unknown_name("metric kind", kind, KINDS)
    return sorted(n for n, s in METRICS.items() if kind is None or s.kind == kind)


def register_metric(
    name: str,
    fn: Callable[..., Any] | None = None,
    *,
    kind: str,
    higher_is_better: bool,
    description: str = "",
    overwrite: bool = False,
) -> Any:
    """Register ``fn(gt, pred, **options)`` under ``name``; returns its :class:`MetricSpec`.

    Without ``fn`` it returns a decorator (``@register_metric("name", kind=..., higher_is_better=...)``)
    that registers the function and returns it unchanged. A taken name raises unless ``overwrite``.
    """
    if fn is None:

        def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
            register_metric(
                name, f, kind=kind, higher_is_better=higher_is_better, description=description, overwrite=overwrite
            )
            return f

        return decorator
    if name in METRICS and not overwrite:
        raise ConfigError(f"metric {name!r} is already registered; pass overwrite=True to replace it")
    spec = MetricSpec(name, fn, kind, higher_is_better, description or (fn.__doc__ or "").strip().split("\n")[0])
    METRICS[name] = spec
    return spec
