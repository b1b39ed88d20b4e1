"""Regularized loss with shallow + deep kernel features (DFR) and the feature-consistency pair loss.

Paper: Bingfeng Zhang, Jimin Xiao, Yao Zhao, "Dynamic Feature Regularized Loss for Weakly Supervised Semantic
Segmentation", arXiv 2108.01296 (2021); Pattern Recognition 164:111540 (2025). The abstract is what we could
read: scribble supervision, a regularized loss whose kernel uses shallow (colour, position) **and** deep
features that are **updated dynamically** during training, and a feature consistency head (FCH) trained on
pair-wise feature relationships to supply those deep features; single stage. The regularizer is the
local-window Potts relaxation of the dense-CRF loss (Tang et al., "On Regularized Losses for Weakly-supervised
CNN Segmentation", ECCV 2018; the local-window form of Obukhov et al.'s gated CRF loss, 2019), built on
:mod:`weakseg.losses.pairwise`. Everything below the abstract (kernel combination, σ values, the form of the
pair loss) is our choice, documented in docs/methods/dfr.md.

- :func:`window_kernel`, :func:`window_potts_loss`: the same values as
  :func:`weakseg.losses.pairwise.gaussian_kernel` / :func:`~weakseg.losses.pairwise.potts_loss`, computed one
  window offset at a time instead of unfolding every channel (``[B, C, D, H, W]``): with 32-channel deep
  features at 64×64 and radius 5 the unfolded tensor is ~0.5 GB per batch of 8 and dominated the step.
- :func:`dfr_kernel`: ``K [B, D, H, W]`` over a window of radius ``r`` from the image (``shallow``), deep
  features (``deep``) or both (``both``: one Gaussian over xy + rgb + deep, i.e. the product of the two
  kernels, or their mean with ``combine="sum"``). Deep features never receive gradient through the kernel.
- :func:`regularized_loss`: Potts energy of the softmax under that kernel, per source pixel.
- :func:`downsample_labels`: partial labels to a coarser grid without losing thin scribbles.
- :func:`pairwise_feature_loss`: the FCH's pair loss on labelled pixels (same label → similar, different →
  dissimilar).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from weakseg.data.dataset import IGNORE
from weakseg.losses.pairwise import gaussian_kernel, neighbours, window_shifts

KERNEL_MODES = ("shallow", "deep", "both")
"""which features the kernel reads: image colour + position, deep features + position, or all of them"""
COMBINES = ("product", "sum")


def window_kernel(
    features: Sequence[tuple[torch.Tensor, float]] = (),
    radius: int = 5,
    xy_sigma: float | None = None,
    zero_centre: bool = True,
    size: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """:func:`weakseg.losses.pairwise.gaussian_kernel` (same arguments and values, features always detached),
    one offset at a time: memory ``[B, D, H, W]`` instead of ``[B, C, D, H, W]``. Returns ``K [B, D, H, W]``."""
    with torch.no_grad():
        return gaussian_kernel(features, radius, xy_sigma, zero_centre=zero_centre, size=size, detach=True)


def window_potts_loss(probs: torch.Tensor, kernel: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_i Σ_j K_ij (1 - y_i·y_j) / N``: :func:`weakseg.losses.pairwise.potts_loss` with
    ``mask_src = mask_dst = valid``, one window offset at a time. Scalar."""
    if probs.dim() != 4 or kernel.shape[0] != probs.shape[0] or kernel.shape[-2:] != probs.shape[-2:]:
        raise ValueError(f"expected probs [B, C, H, W] and kernel [B, D, H, W], got {tuple(probs.shape)} and "
                         f"{tuple(kernel.shape)}")  # fmt: skip
    k = int(round(kernel.shape[1] ** 0.5))
    if k * k != kernel.shape[1] or k % 2 == 0:
        raise ValueError(f"kernel has {kernel.shape[1]} neighbours; expected (2r+1)²")
    radius = k // 2
    kern = kernel
    if valid is not None:
        v = valid.to(kernel.dtype)
        kern = kernel * neighbours(v, radius)[:, 0] * v
        n = v.sum().clamp_min(1)
    else:
        n = probs.shape[0] * probs.shape[2] * probs.shape[3]
    total = probs.new_zeros(())
    for d, sh in enumerate(window_shifts(probs, radius)):
        total = total + (kern[:, d] * (1 - (probs * sh).sum(1))).sum()
    return total / n


def dfr_kernel(
    image: torch.Tensor,
    features: torch.Tensor | None,
    mode: str = "both",
    radius: int = 5,
    xy_sigma: float = 6.0,
    rgb_sigma: float = 0.08,
    deep_sigma: float = 0.5,
    combine: str = "product",
) -> torch.Tensor:
    """The DFR kernel ``[B, D, H, W]`` (``D = (2r+1)²``, centre 0, 0 outside the image).

    ``image`` ``[B, 3, H, W]`` (σ_rgb in its units: [0, 1] images → 0.08 ≈ 20/255); ``features``
    ``[B, C, H, W]`` deep features at the same size (detached here; unit-norm features → ‖f_i - f_j‖² ∈ [0, 4]),
    unused for ``mode="shallow"``. Each Gaussian also has the position term σ_xy (px). ``combine``:
    ``product`` = one Gaussian over all features (a pair must look alike in colour *and* deep features);
    ``sum`` = mean of the shallow and the deep kernel (either similarity links the pair).
    """
    if mode not in KERNEL_MODES:
        raise ValueError(f"unknown kernel mode {mode!r}; valid: {', '.join(KERNEL_MODES)}")
    if combine not in COMBINES:
        raise ValueError(f"unknown combine {combine!r}; valid: {', '.join(COMBINES)}")
    if mode != "shallow" and features is None:
        raise ValueError(f"kernel mode {mode!r} needs deep features")
    shallow = [(image, rgb_sigma)]
    deep = [(features, deep_sigma)] if features is not None else []
    if mode == "shallow":
        return window_kernel(shallow, radius=radius, xy_sigma=xy_sigma)
    if mode == "deep":
        return window_kernel(deep, radius=radius, xy_sigma=xy_sigma)
    if combine == "product":
        return window_kernel(shallow + deep, radius=radius, xy_sigma=xy_sigma)
    k_shallow = window_kernel(shallow, radius=radius, xy_sigma=xy_sigma)
    return 0.5 * (k_shallow + window_kernel(deep, radius=radius, xy_sigma=xy_sigma))


def regularized_loss(probs: torch.Tensor, kernel: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Potts energy ``Σ_i Σ_j K_ij (1 - y_i·y_j) / N`` of ``probs`` ``[B, C, H, W]`` (softmax) under ``kernel``.

    ``valid`` ``[B, 1, H, W]``: pixels that take part (as sources and as neighbours; image padding 0);
    ``N`` = their count, else ``B·H·W``. 0 for a one-hot prediction constant inside every kernel-connected
    region. Scalar.
    """
    return window_potts_loss(probs, kernel, valid)


def downsample_labels(target: torch.Tensor, size: tuple[int, int], ignore_index: int = IGNORE) -> torch.Tensor:
    """Partial labels ``[B, H, W]`` (``ignore_index`` = unknown) → ``[B, h, w]`` on a coarser grid.

    A coarse cell takes the label of the labelled pixels it covers (adaptive max pooling of the one-hot labels),
    so a 3-px scribble survives a stride of 4 where nearest sampling would drop most of it; a cell covering two
    different labels, or none, is unknown.
    """
    known = target != ignore_index
    n = int(target[known].max()) + 1 if bool(known.any()) else 1
    onehot = F.one_hot(torch.where(known, target, 0).long(), n).permute(0, 3, 1, 2).float()
    onehot = onehot * known[:, None].float()
    hit = F.adaptive_max_pool2d(onehot, size)  # [B, n, h, w] 1 where the cell covers that label
    count = hit.sum(1)
    label = hit.argmax(1)
    return torch.where(count == 1, label, torch.full_like(label, ignore_index))


def pairwise_feature_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    max_pixels: int = 256,
    generator: torch.Generator | None = None,
    ignore_index: int = IGNORE,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The feature consistency head's pair loss on labelled pixels. Scalar (0 when no image has a pair).

    ``features`` ``[B, C, h, w]`` (normalised here to unit length), ``labels`` ``[B, h, w]`` on the same grid
    (:func:`downsample_labels`). Per image, up to ``max_pixels`` labelled pixels (a random subset drawn with
    ``generator``); for each pair the affinity ``a = (1 + cos) / 2``; loss = mean ``-log a`` over same-label
    pairs + mean ``-log(1 - a)`` over different-label pairs (each half a mean of its own, summed over halves,
    averaged over the images that have such pairs). The gradient reaches the features.
    """
    if features.shape[0] != labels.shape[0] or features.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"features {tuple(features.shape)} and labels {tuple(labels.shape)} differ in grid")
    f = F.normalize(features.float(), dim=1)
    pos_terms, neg_terms = [], []
    for b in range(f.shape[0]):
        idx = torch.nonzero((labels[b] != ignore_index).flatten(), as_tuple=False)[:, 0]
        if idx.numel() < 2:
            continue
        if idx.numel() > max_pixels:
            pick = torch.randperm(idx.numel(), generator=generator)[:max_pixels].to(idx.device)
            idx = idx[pick]
        fb = f[b].flatten(1)[:, idx]  # [C, n]
        lb = labels[b].flatten()[idx]
        aff = ((1 + fb.t() @ fb) / 2).clamp(eps, 1 - eps)
        same = lb[:, None] == lb[None, :]
        off = ~torch.eye(len(idx), dtype=torch.bool, device=aff.device)
        pos, neg = same & off, ~same
        if bool(pos.any()):
            pos_terms.append(-torch.log(aff[pos]).mean())
        if bool(neg.any()):
            neg_terms.append(-torch.log(1 - aff[neg]).mean())
    zero = features.new_zeros(()).float()
    pos_loss = torch.stack(pos_terms).mean() if pos_terms else zero
    neg_loss = torch.stack(neg_terms).mean() if neg_terms else zero
    return pos_loss + neg_loss
