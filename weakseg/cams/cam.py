"""Class activation maps: normalisation and multi-scale + flip fusion, as pure tensor functions.

A *view* of an image is ``(scale, flip)``: the image resized to ``round(size * scale)`` (square, as
the MCIS reference resizes every input to ``input_size × input_size``) and optionally mirrored.
CAMs of every view are mapped back to one grid (:func:`undo_view`), ReLU'd and summed
(:func:`fuse_views`), then normalised per class by their maximum (:func:`normalize_cams`), as in
CAM (Zhou et al., CVPR 2016) and IRN (Ahn et al., CVPR 2019).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

EPS = 1e-5


@dataclass(frozen=True)
class View:
    """One test-time view: resize factor of the input size and horizontal flip."""

    scale: float
    flip: bool = False

    def size(self, input_size: int) -> int:
        return max(8, int(round(input_size * self.scale)))


def make_views(scales: Sequence[float], flip: bool) -> list[View]:
    """Every ``scale`` without flip, then (if ``flip``) every scale flipped, in that order."""
    views = [View(float(s), False) for s in scales]
    if flip:
        views += [View(float(s), True) for s in scales]
    return views


def apply_view(images: torch.Tensor, view: View, input_size: int) -> torch.Tensor:
    """``[B, 3, H, W]`` → ``[B, 3, s, s]`` with ``s = view.size(input_size)``, mirrored if ``view.flip``."""
    s = view.size(input_size)
    x = images
    if tuple(x.shape[-2:]) != (s, s):
        shrink = s < max(x.shape[-2:])  # antialias when shrinking, like PIL's resize used for training
        x = F.interpolate(x, (s, s), mode="bilinear", align_corners=False, antialias=shrink)
    return x.flip(-1) if view.flip else x


def undo_view(maps: torch.Tensor, flip: bool, size: tuple[int, int]) -> torch.Tensor:
    """Map ``[B, K, h, w]`` maps of a view back to the un-flipped image grid ``size`` (bilinear)."""
    if flip:
        maps = maps.flip(-1)
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size, mode="bilinear", align_corners=False)
    return maps


def normalize_cams(cams: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """ReLU, then divide each class map by its spatial maximum: ``[..., K, H, W]`` → values in ``[0, 1]``.

    A map that is nowhere positive stays zero (the ``eps`` avoids 0/0).
    """
    cams = F.relu(cams)
    peak = cams.flatten(-2).amax(-1)[..., None, None]
    return cams / (peak + eps)


def fuse_views(maps: Sequence[torch.Tensor], flips: Sequence[bool], size: tuple[int, int]) -> torch.Tensor:
    """Sum over views of ``ReLU(undo_view(map))``: each ``[K, h_v, w_v]`` → ``[K, *size]`` (not normalised)."""
    if not maps:
        raise ValueError("fuse_views needs at least one map")
    total = None
    for m, fl in zip(maps, flips, strict=True):
        m = F.relu(undo_view(m[None], fl, size)[0])
        total = m if total is None else total + m
    return total


def average_normalized(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean of per-class normalised maps, normalised again: how MCIS fuses its CAM sources. ``[K, H, W]``."""
    if not maps:
        raise ValueError("average_normalized needs at least one map")
    return normalize_cams(torch.stack([normalize_cams(m) for m in maps]).mean(0))
