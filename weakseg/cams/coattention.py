"""Cross-image co-attention of MCIS (Sun, Wang, Dai, Van Gool, ECCV 2020), as pure tensor functions.

Notation (paper, Sec. 3.2): ``F_m ∈ R^{C×(HW)_m}`` and ``F_n ∈ R^{C×(HW)_n}`` are the flattened head
features of two images; ``W ∈ R^{C×C}`` is a learnt bias-free linear map (``nn.Linear(C, C,
bias=False)``, whose ``weight`` is passed here). The affinity is ``S = F_mᵀ W F_n`` ``[(HW)_m,
(HW)_n]``, where ``W`` acts as the Linear layer does (``F_mᵀ Wᵀ`` row-wise, as in the official code).

- ``A = softmax(S)`` over the image-m positions (dim 0 for each column): ``F_n^co = F_m A`` lives on
  image n's grid; each position of n gathers the image-m features it attends to.
- ``B = softmax(Sᵀ)`` over the image-n positions: ``F_m^co = F_n B`` lives on image m's grid.

So ``F_m^co`` is made of image-n features and keeps what the two images share.
"""

from __future__ import annotations

import torch


def affinity(f_m: torch.Tensor, f_n: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``S = F_mᵀ W F_n``: ``f_m [B, C, Hm, Wm]``, ``f_n [B, C, Hn, Wn]``, ``w [C, C]`` → ``[B, Hm*Wm, Hn*Wn]``.

    ``w`` is the weight of ``nn.Linear(C, C, bias=False)``: the affinity is ``(F_mᵀ wᵀ) F_n``.
    """
    if f_m.shape[:2] != f_n.shape[:2]:
        raise ValueError(
            f"co-attention needs the same batch and channels, got {tuple(f_m.shape)} and {tuple(f_n.shape)}"
        )
    m = f_m.flatten(2)  # [B, C, HWm]
    n = f_n.flatten(2)  # [B, C, HWn]
    return torch.matmul(m.transpose(1, 2), w.t()) @ n  # [B, HWm, HWn]


def co_attention(f_m: torch.Tensor, f_n: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Co-attended features ``(F_m^co, F_n^co)`` of a batch of image pairs.

    Args:
        f_m: ``[B, C, Hm, Wm]`` features of images m.
        f_n: ``[B, C, Hn, Wn]`` features of images n (sizes may differ from m's).
        w: ``[C, C]`` weight of the bias-free linear map W.

    Returns:
        ``f_m_co [B, C, Hm, Wm] = F_n softmax_n(Sᵀ)`` and ``f_n_co [B, C, Hn, Wn] = F_m softmax_m(S)``.
    """
    s = affinity(f_m, f_n, w)  # [B, HWm, HWn]
    a = torch.softmax(s, dim=1)  # normalised over image-m positions
    b = torch.softmax(s, dim=2)  # = softmax(Sᵀ) over image-n positions, kept untransposed
    f_n_co = f_m.flatten(2) @ a  # [B, C, HWn]
    f_m_co = f_n.flatten(2) @ b.transpose(1, 2)  # [B, C, HWm]
    return f_m_co.view_as(f_m), f_n_co.view_as(f_n)


def co_attend(f_src: torch.Tensor, f_dst: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One direction of :func:`co_attention`: ``F_dst^co`` on the grid of ``f_dst`` (inference, half the work).

    Equals ``co_attention(f_dst, f_src, w)[0]``.
    """
    s = affinity(f_dst, f_src, w)  # [B, HWdst, HWsrc]
    b = torch.softmax(s, dim=2)  # over the source positions
    return (f_src.flatten(2) @ b.transpose(1, 2)).view_as(f_dst)


def shared_labels(y_m: torch.Tensor, y_n: torch.Tensor) -> torch.Tensor:
    """Classes present in both images: multi-hot ``[B, K]`` → ``y_m ∧ y_n`` (same dtype)."""
    return ((y_m > 0.5) & (y_n > 0.5)).to(y_m.dtype)


def unshared_labels(y_m: torch.Tensor, y_n: torch.Tensor) -> torch.Tensor:
    """Classes of image m absent from image n: ``y_m ∧ ¬y_n`` (the contrastive branch's targets for m)."""
    return ((y_m > 0.5) & (y_n <= 0.5)).to(y_m.dtype)
