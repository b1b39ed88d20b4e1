"""Soft Dice loss of class probabilities against integer labels (medical segmentation, SSL4MIS / ABD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from weakseg.data.dataset import IGNORE


def dice_loss(
    probs: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5, ignore_index: int = IGNORE
) -> torch.Tensor:
    """Mean over classes of ``1 - (2 Σ p·y + s) / (Σ p² + Σ y² + s)``, each class summed over the whole batch.

    ``probs``: ``[B, C, H, W]`` softmax outputs; ``target``: ``[B, H, W]`` labels in ``0..C-1`` (pixels equal to
    ``ignore_index`` do not count). Every class counts, the background included, as in the SSL4MIS ``DiceLoss``
    that ABD trains with: a class absent from both prediction and target scores ``1 - s/s = 0``.
    """
    if probs.dim() != 4 or target.shape != (probs.shape[0], *probs.shape[2:]):
        raise ValueError(f"expected probs [B, C, H, W] and target [B, H, W], got {tuple(probs.shape)} and "
                         f"{tuple(target.shape)}")  # fmt: skip
    keep = (target != ignore_index).unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(target.long().clamp(0, probs.shape[1] - 1), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    p, y = probs * keep, onehot * keep
    inter = (p * y).sum(dim=(0, 2, 3))
    denom = (p * p).sum(dim=(0, 2, 3)) + (y * y).sum(dim=(0, 2, 3))
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()
