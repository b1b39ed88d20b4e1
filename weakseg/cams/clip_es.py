"""CLIP-ES CAM math as pure tensor functions: GradCAM on ViT tokens and attention-affinity refinement.

Paper: Lin, Chen, Wang, Wu, Li, Lin, Liu, He, "CLIP is Also an Efficient Segmenter: A Text-Driven Approach for
Weakly Supervised Semantic Segmentation", CVPR 2023 (CLIP-ES). The network side (running CLIP's last block with
gradients) is in :mod:`weakseg.methods.clip_es`; here only the maths, on tensors of known shapes:

- :func:`gradcam_tokens`: GradCAM of ``K`` targets from patch activations and their gradients, ``[K, h, w]``.
- :func:`sinkhorn`: alternate column / row normalisation of a non-negative matrix.
- :func:`attention_affinity`: CLIP-ES's transition matrix from the last blocks' attention maps.
- :func:`box_mask`: the union of the bounding boxes of the connected regions where a CAM is high.
- :func:`refine_cam`: CAM propagated by the box-masked affinity, min-max normalised.

Facts from the official code (linyq2117/CLIP-ES, as read in ``docs/methods/clip-es.md``): the attention maps of
the last 8 blocks are averaged with the class token removed; Sinkhorn runs columns first, then rows, for 3
rounds; the result is symmetrised and squared; the box mask zeroes the matrix's *columns* (the source tokens);
the boxes are those of every connected region of ``cam >= 0.4 * max``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

EPS = 1e-12


def gradcam_tokens(acts: torch.Tensor, grads: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """GradCAM from ViT patch tokens: ``acts`` and ``grads`` ``[K, N, D]`` (``N = h*w`` patches, no class token;
    ``acts`` may be ``[N, D]``, shared by the ``K`` targets) → ``ReLU(Σ_d mean_n(grads)_d · acts_d)`` ``[K, h, w]``.

    The channel weights are the gradients averaged over the patches (Selvaraju et al., ICCV 2017), as
    ``pytorch_grad_cam`` computes them on the reshaped tokens in CLIP-ES. Not normalised.
    """
    h, w = grid
    if grads.dim() != 3 or grads.shape[1] != h * w:
        raise ValueError(f"grads must be [K, {h * w}, D], got {tuple(grads.shape)}")
    weights = grads.mean(dim=1)  # [K, D]
    if acts.dim() == 2:
        cam = weights @ acts.T  # [K, N]
    else:
        cam = (acts * weights[:, None, :]).sum(-1)
    return cam.clamp_min(0).reshape(-1, h, w)


def minmax(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each map of ``[..., h, w]`` scaled to [0, 1] by its own min and max (``pytorch_grad_cam``'s
    ``scale_cam_image``; a constant map becomes 0)."""
    flat = x.flatten(-2)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    return ((flat - lo) / (hi - lo + eps)).reshape(x.shape)


def sinkhorn(a: torch.Tensor, iters: int = 3) -> torch.Tensor:
    """``iters`` rounds of: divide each column by its sum, then each row by its sum. ``[..., N, N]`` → same.

    After the last round every row sums to 1 and, as ``iters`` grows, every column too (a doubly stochastic
    matrix for a positive ``a``). The official code adds no epsilon; a zero column or row gives NaN there too,
    so ``EPS`` guards the divisions (softmax attention has no zero entries, so the guard changes nothing).
    """
    for _ in range(iters):
        a = a / a.sum(dim=-2, keepdim=True).clamp_min(EPS)
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(EPS)
    return a


def attention_affinity(attn: torch.Tensor | list[torch.Tensor], iters: int = 3, power: int = 2) -> torch.Tensor:
    """CLIP-ES's transition matrix from attention maps: ``[L, 1+N, 1+N]`` (or a list of ``[1+N, 1+N]``, class
    token first) → ``[N, N]``.

    Mean over the ``L`` maps, class token row and column dropped, :func:`sinkhorn` (``iters`` rounds),
    symmetrised ``(T + Tᵀ) / 2``, then raised to the matrix power ``power`` (CLIP-ES: squared once).
    """
    a = torch.stack(list(attn)) if isinstance(attn, list) else attn
    a = a.float().mean(0)[1:, 1:]
    t = sinkhorn(a, iters)
    t = 0.5 * (t + t.T)
    return torch.linalg.matrix_power(t, power)


def box_mask(cam: torch.Tensor, threshold: float = 0.4) -> torch.Tensor:
    """Union of the bounding boxes of the 8-connected regions where ``cam >= threshold * max(cam)``.

    ``cam`` ``[h, w]`` → ``bool [h, w]``. Each region's box is inclusive of its last row and column (the
    official code's ``cv2`` boxes lose one row/column when they touch the right or bottom border; not copied).
    A map that is zero everywhere gives an all-False mask.
    """
    c = cam.detach().float().cpu().numpy()
    peak = float(c.max()) if c.size else 0.0
    mask = np.zeros(c.shape, dtype=bool)
    if peak <= 0:
        return torch.from_numpy(mask).to(cam.device)
    regions, _ = ndimage.label(c >= threshold * peak, structure=np.ones((3, 3), dtype=int))
    for box in ndimage.find_objects(regions):
        if box is not None:
            mask[box] = True
    return torch.from_numpy(mask).to(cam.device)


def refine_cam(cam: torch.Tensor, affinity: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Propagate CAMs along an affinity: ``cam`` ``[K, h, w]``, ``affinity`` ``[N, N]`` (``N = h*w``; row ``i``
    says how much each token ``j`` passes to ``i``), ``mask`` ``bool [K, h, w]`` of allowed *source* tokens per
    class (None: all) → ``[K, h, w]``, each map min-max normalised to [0, 1].

    ``refined_k = (T ⊙ 1[mask_k]ᵀ) · vec(cam_k)``: sources outside class ``k``'s boxes contribute nothing.
    """
    k, h, w = cam.shape
    src = cam.reshape(k, h * w).float()
    if mask is not None:
        src = src * mask.reshape(k, h * w).to(src.dtype)  # zeroing T's columns = zeroing those sources
    refined = src @ affinity.float().T  # [K, N]: (T · vec(cam_k)) for every k
    return minmax(refined.reshape(k, h, w))
