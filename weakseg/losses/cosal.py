"""Losses of co-salient object detection (DCFM: Yu et al., CVPR 2022, arXiv 2203.05787).

- :func:`soft_iou_loss`: ``1 − Σ p·y / Σ (p + y − p·y)`` per image, averaged; DCFM adds the same loss of the
  complements (background IoU), :func:`fg_bg_iou_loss`.
- :func:`self_contrastive_loss`: the group prototype should agree with the prototype of the foreground-only
  features and disagree with that of the background-only features, measured by cosine similarity mapped
  to ``(1 + cos) / 2 ∈ [0, 1]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_iou_loss(prob: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over images of ``1 − soft IoU``: ``prob``, ``target``, ``valid`` ``[N, 1, H, W]`` in [0, 1].

    ``valid`` (0/1) drops pixels from both sums (e.g. ignore bands). An image with an empty target and an
    empty prediction scores 0 (IoU 1).
    """
    if valid is None:
        valid = torch.ones_like(target)
    inter = (prob * target * valid).flatten(1).sum(1)
    union = ((prob + target - prob * target) * valid).flatten(1).sum(1)
    iou = (inter + 1e-6) / (union + 1e-6)
    return (1 - iou).mean()


def fg_bg_iou_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """DCFM's map loss: soft IoU of ``σ(logits)`` vs ``target`` plus that of their complements (``[N, 1, H, W]``)."""
    prob = torch.sigmoid(logits)
    return soft_iou_loss(prob, target, valid) + soft_iou_loss(1 - prob, 1 - target, valid)


def self_contrastive_loss(proto: torch.Tensor, proto_fg: torch.Tensor, proto_bg: torch.Tensor) -> torch.Tensor:
    """``−log((1 + cos(P, P⁺)) / 2) − log(1 − (1 + cos(P, P⁻)) / 2)`` for prototypes ``[C]`` (or ``[B, C]``, mean).

    0 when ``P`` points along ``P⁺`` and against ``P⁻``; grows as ``P`` turns towards the background prototype.
    The similarities are clamped to ``[1e-6, 1 − 1e-6]`` so the loss stays finite.
    """
    pos = (1 + F.cosine_similarity(proto, proto_fg, dim=-1)) / 2
    neg = (1 + F.cosine_similarity(proto, proto_bg, dim=-1)) / 2
    eps = 1e-6
    return (-torch.log(pos.clamp(eps, 1 - eps)) - torch.log((1 - neg).clamp(eps, 1 - eps))).mean()
