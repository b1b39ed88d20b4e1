"""Few-shot segmentation maths as pure tensor functions (prototypes, priors, SCL's self/cross guidance, PI-CLIP).

Papers:

- PANet — Wang, Liew, Zou, Zhou, Feng, "PANet: Few-Shot Image Semantic Segmentation with Prototype Alignment",
  ICCV 2019: masked average pooling of support features into foreground / background prototypes, query pixels
  labelled by their scaled cosine similarity to the prototypes (:func:`masked_average_pool`,
  :func:`prototype_logits`).
- PFENet — Tian et al., TPAMI 2020: the training-free *prior mask*, the max cosine similarity of each query pixel
  to the support's foreground pixels in high-level features, min-max normalised (:func:`prior_mask`).
- SCL — Zhang, Xiao, Qin, "Self-Guided and Cross-Guided Learning for Few-Shot Segmentation", CVPR 2021: the
  support's own first prediction splits its foreground into covered / uncovered parts, pooled into the primary
  and auxiliary support vectors (:func:`split_by_prediction`); with K shots each support's vectors are scored by
  how well they segment every support (mean of background and foreground IoU), and the query predictions made
  from each support are averaged with those scores as weights (:func:`binary_miou`,
  :func:`cross_guided_weights`, :func:`fuse_predictions`).
- PI-CLIP — Wang et al., "Rethinking Prior Information Generation with CLIP for Few-Shot Segmentation", CVPR 2024:
  the high-order attention matrix that refines the visual-text prior (:func:`high_order_affinity`).

Facts from the official SCL code as read in ``/work/shared/method-notes/fewshot-semi-cosal-vos.md`` §1: MAP
divides by ``Σ mask + 5e-4``; the prior is min-max normalised per image with a 1e-7 guard; the cross-guided score
is the mean of the background and foreground IoU against the support's mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAP_EPS = 5e-4  # SCL / PFENet's Weighted_GAP guard
PRIOR_EPS = 1e-7
IGNORE = 255


def fg_mask(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary episode targets ``[B, H, W]`` (0 / 1 / 255) → foreground weights ``float [B, 1, h, w]`` at ``size``
    (bilinear, as SCL resizes the support mask; ignored pixels count as background)."""
    m = (target == 1).float()[:, None]
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m, size=size, mode="bilinear", align_corners=True)


def masked_average_pool(feat: torch.Tensor, mask: torch.Tensor, eps: float = MAP_EPS) -> torch.Tensor:
    """Masked average pooling: ``feat`` ``[B, C, h, w]``, ``mask`` ``[B, 1, h, w]`` (weights in [0, 1]) →
    ``[B, C]`` = ``Σ feat·mask / (Σ mask + eps)``. An empty mask gives the zero vector."""
    return (feat * mask).sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) + eps)


def cosine_map(feat: torch.Tensor, proto: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every pixel of ``feat`` ``[B, C, h, w]`` to ``proto`` ``[B, C]`` → ``[B, h, w]``."""
    f = F.normalize(feat, dim=1, eps=eps)
    p = F.normalize(proto, dim=1, eps=eps)
    return (f * p[:, :, None, None]).sum(1)


def prototype_logits(
    feat: torch.Tensor, fg_proto: torch.Tensor, bg_proto: torch.Tensor, scale: float = 20.0
) -> torch.Tensor:
    """PANet's non-parametric segmentation: ``scale × cos`` to the background and foreground prototypes →
    logits ``[B, 2, h, w]`` (channel 0 background, 1 foreground)."""
    return scale * torch.stack([cosine_map(feat, bg_proto), cosine_map(feat, fg_proto)], dim=1)


def minmax_per_image(x: torch.Tensor, eps: float = PRIOR_EPS) -> torch.Tensor:
    """``[B, 1, h, w]`` (or ``[B, h, w]``) scaled to [0, 1] per image by its own min and max."""
    flat = x.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - lo) / (hi - lo + eps)).reshape(x.shape)


def prior_mask(query: torch.Tensor, support: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PFENet's prior: for each query pixel, the max cosine similarity to the support's *masked* high-level
    features, min-max normalised per image.

    ``query`` ``[B, C, h, w]``, ``support`` ``[B, C, h', w']``, ``mask`` ``[B, 1, h', w']`` → ``[B, 1, h, w]`` in
    [0, 1]. Support pixels outside the mask are zero vectors (cosine 0), as in PFENet.
    """
    b, c, h, w = query.shape
    q = query.flatten(2).transpose(1, 2)  # [B, Nq, C]
    s = (support * mask).flatten(2)  # [B, C, Ns]
    sim = torch.bmm(q, s) / (q.norm(dim=2, keepdim=True) * s.norm(dim=1, keepdim=True) + PRIOR_EPS)
    best = sim.amax(dim=2).reshape(b, 1, h, w)
    return minmax_per_image(best)


def split_by_prediction(mask: torch.Tensor, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SCL's self-guidance split: support foreground ``mask`` ``[B, 1, h, w]`` and the support's own first
    prediction ``pred`` ``[B, h, w]`` (0 / 1) → ``(covered, uncovered)`` masks, ``mask·[pred = 1]`` and
    ``mask·[pred = 0]``. Pool them with :func:`masked_average_pool` into the primary and auxiliary vectors."""
    hit = (pred == 1).to(mask.dtype)[:, None]
    return mask * hit, mask * (1 - hit)


def binary_miou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of background and foreground IoU of binary predictions ``[..., H, W]`` (0 / 1) against targets
    (0 / 1 / 255; 255 ignored) → ``[...]``. A class absent from both counts as IoU 1 (perfect)."""
    valid = target != IGNORE
    scores = []
    for c in (0, 1):
        p, t = (pred == c) & valid, (target == c) & valid
        inter = (p & t).flatten(-2).sum(-1).float()
        union = (p | t).flatten(-2).sum(-1).float()
        scores.append(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)))
    return 0.5 * (scores[0] + scores[1])


def cross_guided_weights(scores: torch.Tensor) -> torch.Tensor:
    """SCL's cross-guided weights: ``scores[k, j]`` = how well support ``k``'s vectors segment support ``j``
    (:func:`binary_miou`), ``[K, K]`` → ``U_k = mean_j scores[k, j]`` normalised to sum 1, ``[K]``.

    (The official code multiplies each support's query logits by ``U_k`` and divides by the constant 5; dividing
    by ``Σ U_k`` instead changes no argmax and keeps the fused logits on the scale of one support's.)
    """
    u = scores.float().mean(dim=1)
    total = u.sum()
    if total <= 0:
        return torch.full_like(u, 1.0 / u.numel())
    return u / total


def fuse_predictions(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_k weights[k] · logits[k]``: ``logits`` ``[K, ...]``, ``weights`` ``[K]`` → ``[...]``."""
    return (weights.to(logits.dtype).reshape(-1, *([1] * (logits.dim() - 1))) * logits).sum(0)


def high_order_affinity(attn: torch.Tensor) -> torch.Tensor:
    """PI-CLIP's high-order attention matrix from CLIP attention maps ``[L, 1+N, 1+N]`` (class token first) →
    ``[N, N]``.

    Mean over the ``L`` maps, class token dropped; divided by its column sums, then by its row sums (one
    Sinkhorn round, no symmetrisation, unlike CLIP-ES); ``T ← max(T, T·Tᵀ)`` elementwise; ``T ← T·T``.
    """
    a = attn.float().mean(0)[1:, 1:]
    t = a / a.sum(dim=0, keepdim=True).clamp_min(1e-12)
    t = t / t.sum(dim=1, keepdim=True).clamp_min(1e-12)
    t = torch.maximum(t, t @ t.T)
    return t @ t
