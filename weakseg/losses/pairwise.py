"""Local-window pairwise losses: Gaussian kernels over position / colour / deep features, Potts and L1 penalties.

One kernel serves the box and scribble methods' regularisers: the gated CRF loss (Obukhov et al., "Gated CRF
Loss for Weakly Supervised Semantic Image Segmentation", 2019), SCWSSOD's local saliency coherence (Yu et al.,
AAAI 2021: the same kernel with an L1 penalty), A2GNN's / DFR's feature kernels (Zhang et al., TPAMI 2022;
arXiv 2108.01296). Pixel ``i``'s neighbours ``j`` are the ``D = (2r + 1)²`` pixels of the square window of
radius ``r`` around it, in raster order (``j = D // 2`` is ``i`` itself); a neighbour outside the image has
kernel 0::

    K_ij = w · exp(-½ (‖p_i - p_j‖² / σ_xy² + Σ_m ‖f_i^m - f_j^m‖² / σ_m²))

Penalties, averaged over the source pixels (or the valid ones, see ``mask_src``):

- Potts: ``Σ_j K_ij (1 - Σ_k y_ik y_jk)``; it punishes uncertainty too (a uniform prediction costs > 0);
- L1: ``Σ_j K_ij Σ_k |y_ik - y_jk|``; a constant map costs 0 whatever its value, so it does not push towards
  confident maps (for a saliency map ``s`` pass ``[1 - s, s]``, which doubles ``|s_i - s_j|``).

Gates: ``mask_src`` / ``mask_dst`` weigh pixels as sources / neighbours (the gated CRF's padding masks);
:func:`energy_gate` gives RRM's dense-energy weighting as a ``mask_src``.

Nothing here changes its inputs (SCWSSOD's official code divides the image by σ in place on every call, so its
four side outputs see σ_rgb = 0.1, 0.01, 0.001, 0.0001; here each call builds new tensors).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from weakseg.data.dataset import IGNORE


def neighbours(x: torch.Tensor, radius: int) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, C, D, H, W]``: each pixel's window values, zero outside the image (``D = (2r+1)²``)."""
    b, c, h, w = x.shape
    k = 2 * radius + 1
    return F.unfold(x, k, padding=radius).view(b, c, k * k, h, w)


def window_shifts(x: torch.Tensor, radius: int) -> Iterator[torch.Tensor]:
    """``[B, C, H, W]`` → each window offset's shifted copy ``[B, C, H, W]`` (zero outside), raster order.

    Offset ``d`` (0-based, ``D = (2r+1)²``) holds ``x[..., i + dy, j + dx]`` with ``dy, dx = divmod(d, 2r+1) - r``:
    the order of :func:`neighbours`. The shifts are views of one padded tensor, so a loop over them needs memory
    ``[B, C, H, W]`` per offset instead of :func:`neighbours`' ``[B, C, D, H, W]``.
    """
    h, w = x.shape[-2:]
    xp = F.pad(x, (radius, radius, radius, radius))
    k = 2 * radius + 1
    for d in range(k * k):
        dy, dx = divmod(d, k)
        yield xp[..., dy : dy + h, dx : dx + w]


def _offsets(radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[D]`` squared distance of each window offset (raster order, like :func:`neighbours`)."""
    r = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    return (r[:, None] ** 2 + r[None, :] ** 2).reshape(-1)


def gaussian_kernel(
    features: Sequence[tuple[torch.Tensor, float]] = (),
    radius: int = 5,
    xy_sigma: float | None = None,
    weight: float = 1.0,
    zero_centre: bool = True,
    size: tuple[int, int, int] | None = None,
    detach: bool = True,
) -> torch.Tensor:
    """The local Gaussian kernel ``K`` ``[B, D, H, W]`` (module docstring) of one or more feature maps.

    ``features``: ``(f [B, C_m, H, W], σ_m)`` pairs: RGB (σ in the image's units: 0.1 on a normalised image),
    deep features, ...; all at the loss's resolution (resize them first). ``xy_sigma``: σ of the pixel
    distance (px), None = no position term. ``zero_centre``: ``K_ii = 0``. ``size``: ``(B, H, W)``, needed only
    when ``features`` is empty (a position-only kernel). ``detach``: no gradient reaches the features through the
    kernel (DFR's "dynamic" kernel: recomputed from the current features every step, but not trained by it).
    """
    if not features and size is None:
        raise ValueError("give features or size=(B, H, W)")
    if features:
        b, _, h, w = features[0][0].shape
        device, dtype = features[0][0].device, features[0][0].dtype
    else:
        b, h, w = size  # type: ignore[misc]
        device, dtype = torch.device("cpu"), torch.float32
    d = (2 * radius + 1) ** 2
    exponent = torch.zeros(b, d, h, w, device=device, dtype=dtype)
    for f, sigma in features:
        if f.shape[0] != b or f.shape[-2:] != (h, w):
            raise ValueError(f"feature maps differ in shape: {tuple(f.shape)} vs batch {b} at {h}x{w}")
        g = (f.detach() if detach else f) / sigma  # a new tensor: the caller's features stay as they are
        exponent = exponent + torch.stack([(sh - g).pow(2).sum(1) for sh in window_shifts(g, radius)], 1)
    if xy_sigma is not None:
        exponent = exponent + (_offsets(radius, device, dtype) / xy_sigma**2)[None, :, None, None]
    valid = neighbours(torch.ones(b, 1, h, w, device=device, dtype=dtype), radius)[:, 0]
    kernel = weight * torch.exp(-0.5 * exponent) * valid
    if zero_centre:
        centre = torch.ones(d, device=device, dtype=dtype)
        centre[d // 2] = 0
        kernel = kernel * centre[None, :, None, None]
    return kernel


def _radius_of(kernel: torch.Tensor) -> int:
    k = math.isqrt(kernel.shape[1])
    if k * k != kernel.shape[1] or k % 2 == 0:
        raise ValueError(f"kernel has {kernel.shape[1]} neighbours; expected (2r+1)² from gaussian_kernel")
    return k // 2


def _pairwise(
    penalty: str,
    probs: torch.Tensor,
    kernel: torch.Tensor,
    mask_src: torch.Tensor | None,
    mask_dst: torch.Tensor | None,
) -> torch.Tensor:
    if probs.dim() != 4 or kernel.shape[0] != probs.shape[0] or kernel.shape[-2:] != probs.shape[-2:]:
        raise ValueError(f"expected probs [B, C, H, W] and kernel [B, D, H, W], got {tuple(probs.shape)} and "
                         f"{tuple(kernel.shape)}")  # fmt: skip
    r = _radius_of(kernel)
    pn = neighbours(probs, r)  # [B, C, D, H, W]
    if penalty == "potts":
        cost = 1 - (probs[:, :, None] * pn).sum(1)
    else:
        cost = (probs[:, :, None] - pn).abs().sum(1)
    k = kernel
    if mask_dst is not None:
        k = k * neighbours(mask_dst.to(kernel.dtype), r)[:, 0]
    if mask_src is not None:
        k = k * mask_src.to(kernel.dtype)
        n = mask_src.to(kernel.dtype).sum().clamp_min(1)
    else:
        n = probs.shape[0] * probs.shape[2] * probs.shape[3]
    return (k * cost).sum() / n


def potts_loss(
    probs: torch.Tensor,
    kernel: torch.Tensor,
    mask_src: torch.Tensor | None = None,
    mask_dst: torch.Tensor | None = None,
) -> torch.Tensor:
    """Potts relaxation ``Σ_i Σ_j K_ij (1 - Σ_k y_ik y_jk) / N``. Scalar.

    ``probs``: ``[B, C, H, W]`` class probabilities (softmax); ``kernel``: ``[B, D, H, W]`` from
    :func:`gaussian_kernel`; ``mask_src`` / ``mask_dst``: ``[B, 1, H, W]`` 0/1 (or soft) weights of pixels as
    sources ``i`` / neighbours ``j`` (padding, regions to leave out); ``N`` = the sum of ``mask_src``
    (at least 1), else ``B·H·W``.
    """
    return _pairwise("potts", probs, kernel, mask_src, mask_dst)


def l1_pairwise_loss(
    probs: torch.Tensor,
    kernel: torch.Tensor,
    mask_src: torch.Tensor | None = None,
    mask_dst: torch.Tensor | None = None,
) -> torch.Tensor:
    """L1 penalty ``Σ_i Σ_j K_ij Σ_k |y_ik - y_jk| / N`` (SCWSSOD's local saliency coherence). Scalar.

    Shapes and masks as :func:`potts_loss`; ``probs`` may be any ``[B, C, H, W]`` map (e.g. one saliency channel).
    """
    return _pairwise("l1", probs, kernel, mask_src, mask_dst)


def gated_crf_loss(
    probs: torch.Tensor,
    image: torch.Tensor,
    radius: int = 5,
    xy_sigma: float = 6.0,
    rgb_sigma: float = 0.1,
    mask_src: torch.Tensor | None = None,
    mask_dst: torch.Tensor | None = None,
    features: Sequence[tuple[torch.Tensor, float]] = (),
) -> torch.Tensor:
    """The gated CRF loss (Obukhov et al. 2019): Potts over an xy + RGB kernel, gated by ``mask_src``/``mask_dst``.

    ``probs`` ``[B, C, H, W]`` softmax; ``image`` ``[B, 3, H, W]`` at the same size (normalised: the defaults
    σ_xy = 6 px, σ_rgb = 0.1 are the paper's on a mean/std-normalised image); ``features``: extra
    ``(f, σ)`` kernel terms (DFR's deep features). The gates are ``[B, 1, H, W]``: pixels with 0 neither
    pay nor are paid for (image padding, pixels outside the crop). Scalar.
    """
    kernel = gaussian_kernel([(image, rgb_sigma), *features], radius=radius, xy_sigma=xy_sigma)
    return potts_loss(probs, kernel, mask_src, mask_dst)


def energy_gate(probs: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """RRM's dense-energy gate ``[B, 1, H, W]`` (Zhang et al., AAAI 2020), for ``mask_src`` of :func:`potts_loss`.

    ``probs`` ``[B, C, H, W]``, ``target`` ``[B, H, W]`` partial labels: ``1 - max_k y_ik`` on labelled pixels
    (a confident labelled pixel hardly pays), 1 on unknown ones (``ignore_index``). Detached: the gate weighs
    the loss, it is not trained. As ``mask_src`` the loss is divided by the gate's sum; RRM divides by the pixel
    count (multiply by ``gate.sum() / gate.numel()`` to match it).
    """
    conf = 1 - probs.detach().amax(1, keepdim=True)
    return torch.where((target == ignore_index)[:, None], torch.ones_like(conf), conf)
