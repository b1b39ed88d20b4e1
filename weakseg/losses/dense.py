"""Per-pixel losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from weakseg.data.dataset import IGNORE


def partial_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Cross entropy over the labelled pixels of ``logits [B, C, H, W]`` vs ``target [B, H, W]``.

    Pixels equal to ``ignore_index`` do not count; a batch with no labelled pixel gives a zero loss
    (``F.cross_entropy`` with mean reduction would give NaN).
    """
    target = target.long()
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp_min(1)
