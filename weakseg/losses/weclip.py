"""WeCLIP's losses as pure tensor functions: balanced segmentation CE and the decoder-affinity loss.

Paper: Zhang, Yu, Wei, Zhao, Xiao, "Frozen CLIP: A Strong Backbone for Weakly Supervised Semantic
Segmentation" (WeCLIP), CVPR 2024. Facts from the official code (zbf1991/WeCLIP @0f47db4, read in
``/work/shared/method-notes/clip-family.md``): the segmentation loss is ``0.5 CE(background pixels) +
0.5 CE(foreground pixels)``; the affinity target compares the pseudo labels downsampled to the token grid
(nearest), pairs further apart than a Chebyshev radius of 8 tokens and ignored pixels do not count, and the loss is
``0.5 Σ_pos (1 − A) / (n_pos + 1) + 0.5 Σ_neg A / (n_neg + 1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255


def balanced_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """``0.5 · CE over pixels labelled 0 + 0.5 · CE over pixels labelled 1..C-1``.

    ``logits`` ``[B, C, H, W]``, ``target`` ``long [B, H, W]`` (``ignore_index`` ignored) → scalar. A side with no
    pixels contributes 0 (the official code gives NaN on a batch without background or without foreground).
    """
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")  # [B, H, W]
    valid = target != ignore_index
    loss = logits.new_zeros(())
    for side in (valid & (target == 0), valid & (target != 0)):
        if side.any():
            loss = loss + 0.5 * per_pixel[side].mean()
    return loss


def radius_mask(h: int, w: int, radius: int, device: torch.device | None = None) -> torch.Tensor:
    """``bool [N, N]`` (``N = h*w``, row-major tokens): True where tokens ``i`` and ``j`` lie within Chebyshev
    distance ``radius`` (``max(|Δy|, |Δx|) <= radius``); the diagonal is True."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return torch.maximum((ys[:, None] - ys[None]).abs(), (xs[:, None] - xs[None]).abs()) <= radius


def label_affinity(
    labels: torch.Tensor, radius: int = 8, ignore_index: int = IGNORE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affinity target of label maps on the token grid: ``labels`` ``long [B, h, w]`` → ``(target [B, N, N]``
    float, 1 where the two tokens share a label, else 0; ``valid bool [B, N, N]``: both labelled and within
    ``radius``). Both are symmetric."""
    b, h, w = labels.shape
    flat = labels.reshape(b, h * w)
    target = (flat[:, :, None] == flat[:, None, :]).float()
    labelled = flat != ignore_index
    valid = labelled[:, :, None] & labelled[:, None, :] & radius_mask(h, w, radius, labels.device)[None]
    return target, valid


def affinity_loss(aff: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """WeCLIP's affinity loss: ``aff`` ``[B, N, N]`` in (0, 1) (the decoder's ``sigmoid(FᵀF)``), ``target`` and
    ``valid`` from :func:`label_affinity` → ``0.5 Σ_pos (1 − aff)/(n_pos + 1) + 0.5 Σ_neg aff/(n_neg + 1)``.
    Zero when ``aff`` equals ``target`` on the valid pairs."""
    pos = valid & (target > 0.5)
    neg = valid & (target <= 0.5)
    pos_loss = ((1 - aff) * pos).sum() / (pos.sum() + 1)
    neg_loss = (aff * neg).sum() / (neg.sum() + 1)
    return 0.5 * pos_loss + 0.5 * neg_loss
