"""Learned pixel affinities and the random walk of AffinityNet, as pure tensor functions.

AffinityNet (Ahn & Kwak, "Learning Pixel-level Semantic Affinity with Image-level Supervision for
Weakly Supervised Semantic Segmentation", CVPR 2018; "PSA") learns a feature map ``f`` whose L1
distances give the semantic affinity of two nearby pixels,

    a_ij = exp(-mean_d |f_i[d] - f_j[d]|),

trained on pairs within ``radius`` of each other (at the feature resolution) whose labels come from
confident CAM seeds: both background or both the same class = positive, different known labels =
negative, anything touching an unsure pixel = not used. At inference the affinities, raised to
``beta`` (PSA: 8) and row-normalised, are the transition matrix ``T`` of a random walk that
propagates the CAM scores ``x`` (``[C, N]`` over the ``N = h * w`` grid cells): ``x <- x T^T``,
``t`` times (PSA: ``2^8 = 256``).

Pairs: a pair is the pixel ``(y, x)`` and its neighbour ``(y + dy, x + dx)`` for one offset of
:func:`neighbour_offsets` (each unordered pair counted once). Per-pair maps are ``[B, P, h, w]``:
one plane per offset, indexed by the pair's first pixel; the entries of pairs whose second pixel
leaves the map are zero / False. PSA keeps offsets at distance ``< radius``; here ``<= radius``, so
that radius 1 means the 4-neighbourhood (PSA's radius 5 = distances up to ~4.9).

Everything runs on the inputs' device and dtype; tested on tiny tensors against hand-computed answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

PSA_RADIUS = 5  # pair radius at the feature resolution (stride 8), training and inference
PSA_BETA = 8.0  # affinities are raised to this power before the walk
PSA_ITERS = 256  # random-walk steps (PSA: logt = 8 squarings of T)
IGNORE = 255  # label value of an unknown (unsure) pixel

Offset = tuple[int, int]


def neighbour_offsets(radius: int) -> list[Offset]:
    """The ``(dy, dx)`` offsets of the pairs within Euclidean distance ``radius``, each unordered pair once.

    The half-plane ``dy > 0`` or (``dy == 0`` and ``dx > 0``), ordered by ``dy`` then ``dx``:
    radius 1 gives ``[(0, 1), (1, 0)]``; radius ``r`` gives ``(#lattice points in the disc - 1) / 2``.
    """
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    offsets = [(0, dx) for dx in range(1, radius + 1)]
    for dy in range(1, radius + 1):
        offsets += [(dy, dx) for dx in range(-radius, radius + 1) if dy * dy + dx * dx <= radius * radius]
    return offsets


def _pair_region(h: int, w: int, dy: int, dx: int) -> tuple[slice, slice, slice, slice] | None:
    """Slices ``(ys, xs)`` of the first pixels whose neighbour at ``(dy, dx)`` is inside an ``h x w`` map,
    and ``(ty, tx)`` of those neighbours; None when no pair fits. ``dy >= 0`` (half-plane offsets)."""
    x0, x1 = max(0, -dx), w - max(0, dx)
    if dy >= h or x0 >= x1:
        return None
    return slice(0, h - dy), slice(x0, x1), slice(dy, h), slice(x0 + dx, x1 + dx)


class AffinityTargets(NamedTuple):
    """Pair labels of :func:`affinity_targets`: three disjoint ``bool [B, P, h, w]`` masks."""

    bg_pos: torch.Tensor
    """both pixels background"""
    fg_pos: torch.Tensor
    """both pixels the same foreground class"""
    neg: torch.Tensor
    """two different known labels"""


def affinity_targets(label: torch.Tensor, offsets: Sequence[Offset]) -> AffinityTargets:
    """Pair labels from a seed label map ``[B, h, w]`` (0 = background, ``c + 1`` = class, 255 = unknown).

    Returns three ``bool [B, P, h, w]`` masks (``P = len(offsets)``); a pair with an unknown end
    or whose second pixel leaves the map is in none of them.
    """
    b, h, w = label.shape
    shape = (b, len(offsets), h, w)
    bg = torch.zeros(shape, dtype=torch.bool, device=label.device)
    fg, neg = torch.zeros_like(bg), torch.zeros_like(bg)
    for p, (dy, dx) in enumerate(offsets):
        region = _pair_region(h, w, dy, dx)
        if region is None:
            continue
        ys, xs, ty, tx = region
        a, c = label[:, ys, xs], label[:, ty, tx]
        known = (a != IGNORE) & (c != IGNORE)
        bg[:, p, ys, xs] = known & (a == 0) & (c == 0)
        fg[:, p, ys, xs] = known & (a == c) & (a != 0)
        neg[:, p, ys, xs] = known & (a != c)
    return AffinityTargets(bg, fg, neg)


def pair_affinity(features: torch.Tensor, offsets: Sequence[Offset]) -> torch.Tensor:
    """PSA's affinity ``a_ij = exp(-mean_d |f_i - f_j|)`` in ``(0, 1]`` of every pair: ``[B, P, h, w]``.

    Args:
        features: ``[B, D, h, w]``.
    Pairs whose second pixel leaves the map get 0.
    """
    b, _, h, w = features.shape
    aff = features.new_zeros(b, len(offsets), h, w)
    for p, (dy, dx) in enumerate(offsets):
        region = _pair_region(h, w, dy, dx)
        if region is None:
            continue
        ys, xs, ty, tx = region
        dist = (features[:, :, ys, xs] - features[:, :, ty, tx]).abs().mean(dim=1)
        aff[:, p, ys, xs] = torch.exp(-dist)
    return aff


def affinity_loss_terms(
    aff: torch.Tensor, targets: AffinityTargets, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three mean losses ``(bg_pos, fg_pos, neg)`` of PSA (each 0 when it has no pair).

    Positives: ``-log(a + eps)``; negatives: ``-log(1 - a + eps)``; ``aff`` ``[B, P, h, w]``. PSA adds
    the same ``eps = 1e-5`` to both.
    """

    def mean_over(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return (values * mask).sum() / mask.sum().clamp_min(1)

    pos = -torch.log(aff + eps)
    neg = -torch.log(1 - aff + eps)
    return mean_over(targets.bg_pos, pos), mean_over(targets.fg_pos, pos), mean_over(targets.neg, neg)


def affinity_loss(aff: torch.Tensor, targets: AffinityTargets, eps: float = 1e-5) -> torch.Tensor:
    """PSA's loss ``bg_pos / 4 + fg_pos / 4 + neg / 2`` (a scalar) of affinities ``[B, P, h, w]``.

    Background and foreground positives are balanced against each other and together against the
    negatives, since background pairs far outnumber the rest.
    """
    bg, fg, neg = affinity_loss_terms(aff, targets, eps)
    return bg / 4 + fg / 4 + neg / 2


def transition_matrix(features: torch.Tensor, radius: int = PSA_RADIUS, beta: float = PSA_BETA) -> torch.Tensor:
    """Dense random-walk transition matrix ``[N, N]`` (``N = h * w``, row-major cells) of features ``[D, h, w]``.

    ``A_ij = a_ij ** beta`` for the pairs within ``radius`` (both directions), ``A_ii = 1``, 0
    elsewhere; ``T = A / A.sum(1)`` (rows sum to 1). PSA divides by the column sums and multiplies
    from the right; ``A`` is symmetric, so that matrix is ``T^T``.
    """
    _, h, w = features.shape
    offsets = neighbour_offsets(radius)
    aff = pair_affinity(features[None], offsets)[0].pow(beta)
    index = torch.arange(h * w, device=features.device).view(h, w)
    adj = torch.zeros(h * w, h * w, dtype=features.dtype, device=features.device)
    for p, (dy, dx) in enumerate(offsets):
        region = _pair_region(h, w, dy, dx)
        if region is None:
            continue
        ys, xs, ty, tx = region
        src, dst = index[ys, xs].reshape(-1), index[ty, tx].reshape(-1)
        a = aff[p, ys, xs].reshape(-1)
        adj[src, dst] = a
        adj[dst, src] = a
    adj.fill_diagonal_(1.0)
    return adj / adj.sum(dim=1, keepdim=True)


def random_walk(
    scores: torch.Tensor, transition: torch.Tensor, iters: int = PSA_ITERS, method: str = "auto"
) -> torch.Tensor:
    """Propagate scores ``[C, h, w]`` ``iters`` steps: ``x <- x T^T`` with ``T`` ``[N, N]``; returns ``[C, h, w]``.

    Each step replaces a cell's scores by the ``T``-weighted mean of its neighbours' (rows of ``T``
    sum to 1, so per-cell distributions stay distributions). ``method``: ``steps`` (``iters``
    products ``[C, N] x [N, N]``, ``iters * C * N^2`` flops), ``power`` (``T^iters`` by repeated
    squaring, ``~2 log2(iters) N^3`` flops, PSA's way) or ``auto``, the one with fewer flops: squaring
    only while ``N < ~iters * C / (2 log2(iters) + 2)`` (~40 cells for 3 channels and 256 steps), so
    stepping on any real grid (16 x 16 cells: 5e7 flops against 3e8).
    """
    c, h, w = scores.shape
    n = h * w
    if transition.shape != (n, n):
        raise ValueError(f"transition matrix {tuple(transition.shape)} does not fit a {h}x{w} grid")
    if iters <= 0:
        return scores
    if method == "auto":
        power_cost = 2 * math.ceil(math.log2(iters) + 1) * n**3
        method = "power" if power_cost < iters * c * n * n else "steps"
    x = scores.reshape(c, n).to(transition.dtype)
    if method == "power":
        x = x @ torch.linalg.matrix_power(transition, iters).T
    elif method == "steps":
        tt = transition.T.contiguous()
        for _ in range(iters):
            x = x @ tt
    else:
        raise ValueError(f"unknown random-walk method {method!r}; valid: auto, power, steps")
    return x.reshape(c, h, w)


# --- seed labels ----------------------------------------------------------------------------------


def seed_label(
    cams: torch.Tensor,
    classes: Sequence[int],
    fg_threshold: float,
    bg_threshold: float,
    ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """Confident training labels ``uint8 [H, W]`` from CAMs ``[K, H, W]`` in ``[0, 1]`` of ``classes`` ``[K]``.

    Foreground ``classes[k] + 1`` where the highest CAM (class ``k``) is ``>= fg_threshold``,
    background 0 where it is ``< bg_threshold``, 255 (unknown) in between and where ``ignore``
    (``bool [H, W]``) is set. With no class (``K = 0``) the image is background. PSA draws the
    same three regions from CRF-refined CAMs at a low and a high background power; two thresholds on
    the CAMs themselves need no CRF.
    """
    if not 0 <= bg_threshold <= fg_threshold <= 1:
        raise ValueError(f"need 0 <= bg_threshold <= fg_threshold <= 1, got {bg_threshold}, {fg_threshold}")
    k, h, w = cams.shape
    label = torch.zeros(h, w, dtype=torch.uint8, device=cams.device)
    if k:
        best, arg = cams.max(dim=0)
        lut = torch.tensor([int(c) + 1 for c in classes], dtype=torch.uint8, device=cams.device)
        label = torch.where(best >= fg_threshold, lut[arg], label)
        label[(best >= bg_threshold) & (best < fg_threshold)] = IGNORE
    if ignore is not None:
        label[ignore] = IGNORE
    return label


def downsample_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest (cell-centre) downsampling of label maps ``[B, H, W]`` to ``[B, *size]`` (the feature grid)."""
    out = F.interpolate(label[:, None].float(), size=size, mode="nearest-exact")
    return out[:, 0].to(label.dtype)
