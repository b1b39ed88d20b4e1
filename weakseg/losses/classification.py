"""Image-level classification losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss of ``logits [B, K]`` vs multi-hot ``targets [B, K]`` (mean over classes, rows)."""
    return F.multilabel_soft_margin_loss(logits, targets)
