"""Democratic prototype generation and rank-amplified self-attention of DCFM, as pure tensor functions.

Paper: Yu, Xiao, Zhang, Lim, "Democracy Does Matter: Comprehensive Feature Mining for Co-Salient Object
Detection", CVPR 2022 (arXiv 2203.05787). Written from the paper and from the behaviour described in
``shared/method-notes/fewshot-semi-cosal-vos.md`` §3.1; no code of the official repository is copied.

A *group* is ``N`` images that share one salient object; their features are ``feat [N, C, H, W]``.

Democratic prototype generation (DPG):

1. group affinity ``A = Qᵀ K / √C`` over all ``N·H·W`` positions (:func:`group_affinity`, the
   co-attention affinity of :mod:`weakseg.cams.coattention` applied to the whole group at once);
2. votes: image ``m`` votes for position ``p`` with its best match ``s_m(p) = max_{q ∈ m} A[p, q]``;
   ``v(p) = mean_m s_m(p)``, every image (its own included) voting once (:func:`democratic_votes`);
3. seed of image ``n``: its position with the most votes (:func:`democratic_seeds`); a position that many
   images agree on beats one that only its own image likes;
4. response ``R_n(p) = mean_m cos(feat_n(p), z_m)`` with ``z_m`` the L2-normalised feature at the seed of
   image ``m``, min-max normalised per image (:func:`democratic_response`);
5. group prototype ``P = mean_{n, p} feat · R`` (:func:`group_prototype`) and the enhanced features
   ``feat ⊙ P + feat ⊙ R``.

Democratic feature enhancement (DFE): per-image self-attention whose softmax weights are multiplied by
``(rank + 1)³`` for the positive logits of each row (rank 0 = the largest), 1 for the others
(:func:`rank_weights`), so that weaker-but-positive matches are amplified relative to the strongest one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from weakseg.cams.coattention import affinity


def group_affinity(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``A = Qᵀ K / √C`` over every position of the group: ``q, k [N, C, H, W]`` → ``[N·H·W, N·H·W]``.

    Row ``n·HW + p`` is position ``p`` of image ``n``. Memory grows as ``(N·H·W)²``.
    """
    n, c, h, w = q.shape
    # the whole group as one "image" of N·HW positions: [1, C, N, HW]
    qg = q.flatten(2).transpose(0, 1).unsqueeze(0)
    kg = k.flatten(2).transpose(0, 1).unsqueeze(0)
    eye = torch.eye(c, dtype=q.dtype, device=q.device) / math.sqrt(c)
    return affinity(qg, kg, eye)[0]


def democratic_votes(aff: torch.Tensor, n: int) -> torch.Tensor:
    """Votes ``v [N, HW]`` of every position from the group affinity ``aff [N·HW, N·HW]`` of ``n`` images.

    ``v(p) = mean_m max_{q ∈ image m} aff[p, q]``: each image casts one vote per position (its best match).
    """
    hw = aff.shape[1] // n
    best = aff.view(aff.shape[0], n, hw).amax(dim=2)  # [N·HW, N]: image m's best match for p
    return best.mean(dim=1).view(n, hw)


def democratic_seeds(votes: torch.Tensor) -> torch.Tensor:
    """Per image, the position with the most votes: ``votes [N, HW]`` → flat indices ``[N]`` (first on ties)."""
    return votes.argmax(dim=1)


def democratic_response(feat: torch.Tensor, seeds: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """Democratic response map ``R [N, 1, H, W]`` in [0, 1] of ``feat [N, C, H, W]`` given the seeds ``[N]``.

    ``R_n(p) = mean_m cos(feat_n(p), z_m)`` where ``z_m`` is image ``m``'s L2-normalised feature at its seed;
    ``relu`` clamps the cosines at 0 before the mean (DCFM does so at test time only); then min-max per image.
    """
    n, c, h, w = feat.shape
    unit = F.normalize(feat, dim=1).flatten(2)  # [N, C, HW]
    z = unit[torch.arange(n, device=feat.device), :, seeds]  # [N, C]
    cos = torch.einsum("mc,ncp->nmp", z, unit)  # [N, M, HW]
    if relu:
        cos = cos.clamp_min(0)
    r = cos.mean(dim=1)  # [N, HW]
    lo, hi = r.amin(dim=1, keepdim=True), r.amax(dim=1, keepdim=True)
    r = (r - lo) / (hi - lo + 1e-12)
    return r.view(n, 1, h, w)


def group_prototype(feat: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """``P = mean_{n, p} feat · R``: ``feat [N, C, H, W]``, ``response [N, 1, H, W]`` → ``[C]``."""
    return (feat * response).mean(dim=(0, 2, 3))


def democratic_prototype(
    feat: torch.Tensor, q: torch.Tensor, k: torch.Tensor, relu: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole DPG: ``(prototype [C], response [N, 1, H, W], seeds [N])`` of a group.

    ``feat`` are the features the seeds and the prototype are read from; ``q`` / ``k`` their query and key
    projections (all ``[N, ·, H, W]``, same grid).
    """
    votes = democratic_votes(group_affinity(q, k), feat.shape[0])
    seeds = democratic_seeds(votes)
    response = democratic_response(feat, seeds, relu=relu)
    return group_prototype(feat, response), response, seeds


def rank_weights(logits: torch.Tensor, power: float = 3.0) -> torch.Tensor:
    """DFE weights of attention logits ``[..., L]``: ``(rank + 1) ** power`` for positive logits, 1 otherwise.

    The rank counts down the row: the largest logit has rank 0. Only positive logits are ranked, so the
    weights of a row with ``P`` positive logits are ``1, 2³, …, P³`` (largest first) and 1 elsewhere.
    Ties share no rank: the earlier position ranks first.
    """
    order = torch.argsort(logits, dim=-1, descending=True, stable=True)
    rank = torch.argsort(order, dim=-1, stable=True).to(logits.dtype)  # rank of every position
    positive = logits > 0
    return torch.where(positive, (rank + 1) ** power, torch.ones_like(logits))


def rank_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, power: float = 3.0, renormalise: bool = False
) -> torch.Tensor:
    """DFE's per-image attention: ``q, k, v [B, C, H, W]`` → ``(softmax(L) ⊙ rank_weights(L)) · V`` ``[B, C, H, W]``.

    ``L = Qᵀ K / √C`` over the positions of each image. DCFM does not renormalise after the weighting, so a
    row's weights sum to up to ``Σ_r r³ / HW`` (about 4,000 on an 8×8 grid with half the logits positive);
    ``renormalise`` divides each row by its sum, keeping the re-ranking but not the change of scale.
    """
    b, c, h, w = q.shape
    logits = q.flatten(2).transpose(1, 2) @ k.flatten(2) / math.sqrt(c)  # [B, HW, HW]
    att = torch.softmax(logits, dim=-1) * rank_weights(logits.detach(), power)
    if renormalise:
        att = att / att.sum(dim=-1, keepdim=True)
    out = att @ v.flatten(2).transpose(1, 2)  # [B, HW, C]
    return out.transpose(1, 2).reshape(b, c, h, w)
