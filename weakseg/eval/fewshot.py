"""Few-shot segmentation metrics accumulated over episodes: class-wise mIoU and FB-IoU.

As PFENet / SCL's ``test.py`` computes them (Zhang et al., CVPR 2021): for each novel class, the foreground
intersections and unions of *all* its episodes are summed, the class IoU is their ratio, and **mIoU** is the mean
over the fold's classes. **FB-IoU** sums the background and foreground intersections and unions of every episode
and averages the two IoUs (:func:`weakseg.eval.metrics.fb_confusion` does the counting). Ground truth uses 255 for
ignored pixels; predictions are 0 / 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from weakseg.eval.metrics import fb_confusion


def _iou(tp: float, fp: float, fn: float) -> float:
    union = tp + fp + fn
    return float(tp / union) if union > 0 else float("nan")


class FewShotMeter:
    """Accumulates episodes of 1-way few-shot segmentation (``update`` per episode, ``result`` at the end)."""

    def __init__(self, classes: Sequence[int], class_names: Sequence[str] | None = None):
        self.classes = tuple(int(c) for c in classes)
        self.class_names = tuple(class_names) if class_names is not None else None
        self.fg = {c: np.zeros((2, 3), dtype=np.int64) for c in self.classes}  # per class: binary confusion
        self.episodes = {c: 0 for c in self.classes}

    def update(self, cls: int, gt: np.ndarray, pred: np.ndarray) -> None:
        """One episode of class ``cls``: binary ``gt`` (0/1/255) and ``pred`` (0/1 or bool), same shape."""
        if cls not in self.fg:
            raise KeyError(f"class {cls} is not one of this meter's classes {self.classes}")
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"gt {gt.shape} and prediction {pred.shape} differ in shape")
        self.fg[cls] += fb_confusion(gt, pred.astype(np.uint8))
        self.episodes[cls] += 1

    def class_iou(self) -> dict[int, float]:
        """Foreground IoU of each class over its episodes (NaN for a class with no episode)."""
        out = {}
        for c, m in self.fg.items():
            tp, fn, fp = m[1, 1], m[1, 0] + m[1, 2], m[0, 1]
            out[c] = _iou(tp, fp, fn) if self.episodes[c] else float("nan")
        return out

    def result(self) -> dict:
        """``{"miou", "fb_iou", "class_iou", "episodes", ...}``; IoUs as fractions in [0, 1]; a class without
        episodes has ``class_iou`` None and is left out of the mIoU."""
        ious = self.class_iou()
        valid = [v for v in ious.values() if not np.isnan(v)]
        total = sum(self.fg.values(), np.zeros((2, 3), dtype=np.int64))
        bg = _iou(total[0, 0], total[1, 0], total[0, 1] + total[0, 2])
        fg = _iou(total[1, 1], total[0, 1], total[1, 0] + total[1, 2])
        parts = [v for v in (bg, fg) if not np.isnan(v)]
        names = self.class_names

        def key(c: int) -> str:
            return names[c] if names else str(c)

        return {
            "miou": float(np.mean(valid)) if valid else float("nan"),
            "fb_iou": float(np.mean(parts)) if parts else float("nan"),
            "class_iou": {
                (names[c] if names else str(c)): (None if np.isnan(ious[c]) else ious[c]) for c in self.classes
            },
            "episodes_per_class": {key(c): self.episodes[c] for c in self.classes},
            "episodes": int(sum(self.episodes.values())),
        }
