"""WeCLIP's online pseudo-label math as pure tensor functions: the refinement module (RFM) and the label.

Paper: Zhang, Yu, Wei, Zhao, Xiao, "Frozen CLIP: A Strong Backbone for Weakly Supervised Semantic
Segmentation" (WeCLIP), CVPR 2024. The CAMs themselves are CLIP-ES's (:mod:`weakseg.cams.clip_es`); WeCLIP's RFM
changes the affinity that refines them once training is under way. Facts from the official code (zbf1991/WeCLIP
@0f47db4, as read in ``/work/shared/method-notes/clip-family.md``):

- before the switch: the mean of CLIP's last 8 attention maps (CLIP-ES);
- after it: of CLIP's last 6 maps ``A_l``, keep those with ``d_l = Σ_ij (A_f − A_l)_ij <= mean_l d_l`` (a *signed*
  sum, so the kept layers are those with the most attention mass), average them and multiply element-wise by the
  decoder's (detached) affinity ``A_f``;
- then CLIP-ES's Sinkhorn / symmetrise / square transition and box-masked propagation.

The official switch compares a counter that also counts validation forwards (its VOC "15,000" fires near
iteration 9,144); :func:`rfm_active` takes the number of *optimiser steps* done.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from weakseg.cams.clip_es import sinkhorn


def rfm_filter(attn: torch.Tensor, dec_aff: torch.Tensor) -> torch.Tensor:
    """RFM's layer filter: ``attn`` ``[L, N, N]`` (CLIP attention maps, class token removed), ``dec_aff``
    ``[N, N]`` → ``bool [L]``, True for the layers with ``d_l = Σ (dec_aff − attn_l) <= mean(d)``."""
    d = (dec_aff[None].float() - attn.float()).sum(dim=(1, 2))
    return d <= d.mean()


def rfm_affinity(attn: torch.Tensor, dec_aff: torch.Tensor) -> torch.Tensor:
    """RFM's affinity before the transition: mean of the maps kept by :func:`rfm_filter` ⊙ ``dec_aff``.
    ``attn`` ``[L, N, N]``, ``dec_aff`` ``[N, N]`` → ``[N, N]`` (``dec_aff`` is detached)."""
    keep = rfm_filter(attn, dec_aff)
    return attn[keep].float().mean(0) * dec_aff.detach().float()


def transition(a: torch.Tensor, iters: int = 3, power: int = 2) -> torch.Tensor:
    """CLIP-ES's transition matrix from an affinity ``[N, N]`` (no class token): Sinkhorn, ``(T + Tᵀ)/2``, matrix
    power → ``[N, N]`` (what :func:`weakseg.cams.clip_es.attention_affinity` does after averaging the maps)."""
    t = sinkhorn(a.float(), iters)
    return torch.linalg.matrix_power(0.5 * (t + t.T), power)


def rfm_active(optimizer_steps: int, start_step: int) -> bool:
    """Whether the RFM refines the pseudo labels after ``optimizer_steps`` optimiser updates (``start_step < 0``:
    never; WeCLIP: 15,000 on VOC, 40,000 on COCO, counted by optimiser steps here)."""
    return start_step >= 0 and optimizer_steps >= start_step


def background_scores(cams: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Class maps ``[K, H, W]`` in [0, 1] → ``[1 + K, H, W]``: background ``(1 − max_k cam_k)^power`` first
    (WeCLIP: power 1; an image with no class gets background 1 everywhere)."""
    peak = cams.amax(0, keepdim=True) if cams.shape[0] else cams.new_zeros((1, *cams.shape[1:]))
    return torch.cat([(1 - peak).clamp_min(0).pow(power), cams])


def scores_to_label(scores: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Argmax of ``[1 + K, H, W]`` scores (background first, then ``classes``' maps) → ``long [H, W]`` with
    0 = background and ``c + 1`` = class ``c`` (no ignore value, as in WeCLIP)."""
    ids = torch.tensor([0, *(int(c) + 1 for c in classes)], dtype=torch.long, device=scores.device)
    return ids[scores.argmax(0)]
