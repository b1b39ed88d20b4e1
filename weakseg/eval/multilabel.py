"""Multi-label ranking metrics of image scores against image-level labels (pure numpy).

Used for the zero-shot accuracy of a CLIP (``weakseg clip pretrain``'s ``metrics.json``): ``scores`` ``[N, K]``
(higher = more likely), ``labels`` ``bool [N, K]``.
"""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one class: mean over the positives of the precision at their rank (ties broken by order).
    NaN without positives."""
    scores, positives = np.asarray(scores, float), np.asarray(positives, bool)
    if not positives.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positives[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """ROC AUC of one class: P(score of a random positive > score of a random negative), ties counted half.
    NaN without positives or without negatives."""
    scores, positives = np.asarray(scores, float), np.asarray(positives, bool)
    pos, neg = scores[positives], scores[~positives]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def multilabel_report(scores: np.ndarray, labels: np.ndarray, class_names: list[str] | tuple[str, ...]) -> dict:
    """Per-class AP and AUC, their means over the classes that have positives (mAP, mean AUC), top-1 accuracy
    (the best-scored class is one of the image's labels) and exact top-k accuracy (the ``k`` best-scored classes
    are exactly the image's ``k`` labels), over the images with at least one label."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    keep = labels.any(1)
    scores, labels = scores[keep], labels[keep]
    ap = [average_precision(scores[:, k], labels[:, k]) for k in range(labels.shape[1])]
    auc = [roc_auc(scores[:, k], labels[:, k]) for k in range(labels.shape[1])]
    order = np.argsort(-scores, axis=1, kind="stable")
    top1 = labels[np.arange(len(labels)), order[:, 0]] if len(labels) else np.zeros(0, bool)
    exact = [set(order[i, : labels[i].sum()]) == set(np.flatnonzero(labels[i])) for i in range(len(labels))]

    def mean(values: list[float]) -> float | None:
        finite = [v for v in values if np.isfinite(v)]
        return float(np.mean(finite)) if finite else None

    return {
        "images": int(len(labels)),
        "map": mean(ap),
        "mean_auc": mean(auc),
        "top1_accuracy": float(np.mean(top1)) if len(labels) else None,
        "topk_exact_accuracy": float(np.mean(exact)) if len(labels) else None,
        "per_class": {
            name: {"ap": None if not np.isfinite(a) else a, "auc": None if not np.isfinite(u) else u,
                   "positives": int(labels[:, k].sum())}
            for k, (name, a, u) in enumerate(zip(class_names, ap, auc, strict=True))
        },
    }  # fmt: skip
