"""MCIS's official test-time fusion of co-attention maps, as pure tensor functions.

What the official code does (GuoleiSun/MCIS_wsss, ``Classifier/scripts/test.py``, ``aggregate`` and
``validate``): the localisation map of a class is made from *co-attention maps only* (the plain head's
maps are computed and not used), five per class on the base feature grid (32×32 for 256-px inputs):

- A: the image's co-attention map in the pair (image, its flipped copy);
- B: the flipped copy's map in that pair, flipped back;
- C, D: the 0.75× and 2× copies' maps in the pairs (image, copy), bicubic-resized to the base grid;
- P: the image's map averaged over 3 partners of the class (raw maps averaged before anything else).

Each map is ReLU'd and divided by its maximum (+1e-8); B, C, D and P are added only where
``σ(mean of the raw map) > 0.1`` (A always); the sum is divided by the number of candidate maps (5)
whatever was dropped, so a class whose other maps were all dropped peaks at 0.2, not 1. The reference
then stores ``uint8(255 · map)`` (truncated) and resizes it bicubically to the image size; here the maps
stay float (no 1/255 quantisation) and the bicubic overshoot is clamped to ``[0, 1]`` (what the uint8
saturation does there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from weakseg.cams.cam import normalize_cams

KEEP_PROB = 0.1
"""a map other than A is added where σ(mean of its raw values) exceeds this (the reference's 0.1)"""
EPS = 1e-8
"""added to each map's maximum before dividing (the reference's 1e-8)"""


def to_base_grid(maps: torch.Tensor, flip: bool, size: tuple[int, int]) -> torch.Tensor:
    """Raw maps ``[K, h, w]`` of a copy → ``[K, *size]``: flipped back if ``flip``, then bicubic
    (``align_corners=False``) to ``size`` when it differs, as the reference's ``F.upsample(..., 'bicubic')``."""
    if flip:
        maps = maps.flip(-1)
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[None], size, mode="bicubic", align_corners=False)[0]
    return maps


def kept(raw: torch.Tensor, min_prob: float = KEEP_PROB) -> torch.Tensor:
    """Which classes of a raw map ``[K, H, W]`` pass the gate: ``bool [K]``, ``σ(mean over H, W) > min_prob``."""
    return torch.sigmoid(raw.flatten(-2).mean(-1)) > min_prob


def official_fusion(maps: Sequence[torch.Tensor], min_prob: float = KEEP_PROB, eps: float = EPS) -> torch.Tensor:
    """Fuse raw co-attention maps of one image as the reference's ``aggregate``: ``[K, H, W]`` in ``[0, 1]``.

    Args:
        maps: ``N`` raw (signed) maps ``[K, H, W]`` on one grid; ``maps[0]`` is A (always added), the
            others (B, C, D, P in the reference, ``N = 5``) are added per class where :func:`kept`.
        min_prob: the gate's threshold on ``σ(mean)``.
        eps: added to each map's maximum.

    Returns:
        ``Σ_i keep_i · ReLU(m_i) / (max ReLU(m_i) + eps)`` divided by ``N`` (not by the number kept).
    """
    if not maps:
        raise ValueError("official_fusion needs at least one map (A)")
    total = normalize_cams(maps[0], eps)
    for m in maps[1:]:
        total = total + normalize_cams(m, eps) * kept(m, min_prob)[:, None, None].to(m.dtype)
    return total / len(maps)


def finish_official(fused: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Fused maps ``[K, h, w]`` → ``[K, *out_size]``: bicubic (the reference's ``cv2.INTER_CUBIC``), clamped
    to ``[0, 1]``; not normalised again (the reference keeps the ``/ N`` scale)."""
    if fused.shape[0] == 0:
        return fused.new_zeros((0, *out_size))
    if tuple(fused.shape[-2:]) != tuple(out_size):
        fused = F.interpolate(fused[None], out_size, mode="bicubic", align_corners=False)[0]
    return fused.clamp(0, 1)
