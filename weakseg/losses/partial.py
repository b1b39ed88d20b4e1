"""Losses on partial labels: balanced partial CE / BCE, box tightness (multiple-instance) loss, SSIM + L1 consistency.

Labels follow weakseg's masks: ``target [B, H, W]`` integer, 0 = background, ``c + 1`` = class ``c`` (channel
``c + 1`` of the logits), 255 = unknown. Every loss is a scalar, 0 (not NaN) when nothing is labelled, and
leaves its inputs unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from weakseg.data.dataset import IGNORE, Box


def balanced_partial_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE
) -> torch.Tensor:
    """Mean CE over background-labelled pixels + mean CE over foreground-labelled pixels (SCWSSOD's pCE).

    ``logits`` ``[B, C, H, W]``, ``target`` ``[B, H, W]``. Each half is a mean over its own pixels, so thin
    foreground scribbles weigh as much as a large background; a half with no pixel adds 0.
    """
    ce = F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index, reduction="none")  # [B, H, W]
    bg = target == 0
    fg = (target != 0) & (target != ignore_index)
    return (ce * bg).sum() / bg.sum().clamp_min(1) + (ce * fg).sum() / fg.sum().clamp_min(1)


def partial_bce(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE, balance: bool = False
) -> torch.Tensor:
    """Binary cross entropy on logits over the labelled pixels of a foreground/background map.

    ``logits`` ``[B, 1, H, W]`` or ``[B, H, W]`` (foreground logit); ``target`` ``[B, H, W]`` with 1 = foreground,
    0 = background, ``ignore_index`` = unknown (S-DUTS scribbles after
    :func:`weakseg.data.weak_labels.decode_scribbles`). ``balance``: mean over foreground pixels + mean over
    background pixels instead of one mean over all labelled pixels. Works on logits, not on probabilities
    (SCWSSOD's code feeds probabilities to a softmax CE, which caps p_fg in [0.27, 0.73]).
    """
    if logits.dim() == 4:
        logits = logits[:, 0]
    fg, bg = target == 1, target == 0
    if not bool((fg | bg | (target == ignore_index)).all()):
        raise ValueError(f"target must hold only 0, 1 and {ignore_index}")
    bce = F.binary_cross_entropy_with_logits(logits.float(), fg.float(), reduction="none")
    if balance:
        return (bce * fg).sum() / fg.sum().clamp_min(1) + (bce * bg).sum() / bg.sum().clamp_min(1)
    known = fg | bg
    return (bce * known).sum() / known.sum().clamp_min(1)


def box_tightness_loss(probs: torch.Tensor, boxes: Sequence[Sequence[Box]], eps: float = 1e-6) -> torch.Tensor:
    """Multiple-instance box loss (Hsu et al., "Weakly supervised instance segmentation using the bounding box
    tightness prior", NeurIPS 2019; A2GNN's MP loss): every row and every column of a tight box crosses its
    object, pixels outside every box of a class are not that class.

    ``probs`` ``[B, K+1, H, W]`` softmax (channel ``c + 1`` = class ``c``); ``boxes[b]``: the boxes of image
    ``b`` (0-based, exclusive ends, inside the image). Positive bags: each row and each column of a box of
    class ``c``; loss ``-log max_bag p_c``, averaged over all bags of the batch. Negatives: pixels outside every
    box of class ``c``, for each class boxed in that image; loss ``-log(1 - p_c)``, averaged over those pixels.
    Returns positive + negative mean (each 0 when it has no term). Scalar.
    """
    if len(boxes) != probs.shape[0]:
        raise ValueError(f"boxes for {len(boxes)} images, probs for {probs.shape[0]}")
    pos: list[torch.Tensor] = []
    neg_sum, neg_n = probs.new_zeros(()), 0
    h, w = probs.shape[-2:]
    for b, image_boxes in enumerate(boxes):
        for c in sorted({bx.cls for bx in image_boxes}):
            p = probs[b, c + 1]
            inside = torch.zeros(h, w, dtype=torch.bool, device=probs.device)
            for bx in (bx for bx in image_boxes if bx.cls == c):
                crop = p[bx.y0 : bx.y1, bx.x0 : bx.x1]
                if crop.numel() == 0:
                    raise ValueError(f"box {bx.as_tuple()} is empty or outside the {w}x{h} map")
                pos += [crop.amax(1), crop.amax(0)]  # one maximum per row, per column
                inside[bx.y0 : bx.y1, bx.x0 : bx.x1] = True
            out = p[~inside]
            neg_sum = neg_sum - torch.log((1 - out).clamp_min(eps)).sum()
            neg_n += out.numel()
    pos_loss = -torch.log(torch.cat(pos).clamp_min(eps)).mean() if pos else probs.new_zeros(())
    return pos_loss + neg_sum / max(neg_n, 1)


def ssim(x: torch.Tensor, y: torch.Tensor, c1: float = 0.01**2, c2: float = 0.03**2) -> torch.Tensor:
    """Per-pixel SSIM ``[B, C, H, W]`` of two maps ``[B, C, H, W]`` with 3×3 mean windows (reflection padded)."""
    xp, yp = F.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(y, (1, 1, 1, 1), mode="reflect")
    mx, my = F.avg_pool2d(xp, 3, 1), F.avg_pool2d(yp, 3, 1)
    sx = F.avg_pool2d(xp * xp, 3, 1) - mx * mx
    sy = F.avg_pool2d(yp * yp, 3, 1) - my * my
    sxy = F.avg_pool2d(xp * yp, 3, 1) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sx + sy + c2))


def ssim_l1_consistency(a: torch.Tensor, b: torch.Tensor, alpha: float = 0.85) -> torch.Tensor:
    """SCWSSOD's structure consistency: ``α·mean(clamp((1 - SSIM(a, b)) / 2, 0, 1)) + (1 - α)·mean|a - b|``.

    ``a``, ``b``: ``[B, C, H, W]`` maps in [0, 1] (e.g. the saliency of the downscaled image and the downscaled
    saliency); both receive gradient. 0 when ``a == b``. Scalar.
    """
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    s = ((1 - ssim(a, b)) / 2).clamp(0, 1)
    return alpha * s.mean() + (1 - alpha) * (a - b).abs().mean()
