"""SDS scoring maths as pure functions: seeded patch shuffling, the PCS entropy change, CLIP pseudo masks, the ASF
agreement and the class-balanced keep quota.

Paper: Hao Tang, Siyue Yu, Jian Pang, Bingfeng Zhang, "A Training-free Synthetic Data Selection Method for Semantic
Segmentation" (SDS), AAAI 2025, pp. 7229-7237, arXiv 2501.15201; official code ``tanghao2000/SDS`` (read, not
copied: it has no licence). The CLIP side (running a CLIP on the images) is :mod:`weakseg.methods.sds`.

- **PCS** (perturbation-based CLIP similarity, the image-quality filter): an image's CLIP prediction (softmax over
  the rows of its classes + background words) is compared before and after its patches are shuffled. The official
  code scores ``|H(p) - H(p_shuffled)|`` (Shannon entropies) and keeps an image when it exceeds 0.1: a coherent
  image's prediction moves when its layout is destroyed, a broken one's barely does.
- **ASF** (annotation similarity filter, the annotation-quality filter): the pooled IoU ``ΣI / ΣU`` over the
  annotated foreground classes between the given mask and a CLIP pseudo mask.
- **Class-balanced quota** (weakseg's; the official code only writes ASF-sorted lists and has no cut-off): keep,
  for every class, the best-scoring ``ratio`` of the images that contain it (:func:`class_balanced_keep`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

IGNORE = 255


def shuffle_permutation(cells: int, seed: int) -> torch.Tensor:
    """A seeded random permutation of ``cells`` patch cells, ``int64 [cells]``, never the identity (for
    ``cells > 1``): the official ``torch.randperm`` is unseeded and may, rarely, leave the image unchanged."""
    if cells < 1:
        raise ValueError(f"need at least one cell, got {cells}")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(cells, generator=g)
    while cells > 1 and bool((perm == torch.arange(cells)).all()):
        perm = torch.randperm(cells, generator=g)
    return perm


def _grid(grid: int | tuple[int, int]) -> tuple[int, int]:
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    if gh < 1 or gw < 1:
        raise ValueError(f"shuffle grid must be at least 1x1, got {gh}x{gw}")
    return int(gh), int(gw)


def patch_shuffle(x: torch.Tensor, grid: int | tuple[int, int], perm: torch.Tensor) -> torch.Tensor:
    """Cut ``x`` ``[..., C, H, W]`` into a ``gh × gw`` grid of equal cells and reorder them: output cell ``j``
    (row-major) is input cell ``perm[j]``. ``H`` and ``W`` must be multiples of ``gh`` and ``gw`` (sizes that are not
    are refused rather than cropped, so the pixel multiset is always preserved); ``perm`` is ``[gh * gw]``.
    """
    gh, gw = _grid(grid)
    h, w = x.shape[-2:]
    if h % gh or w % gw:
        raise ValueError(f"image {h}x{w} does not split into a {gh}x{gw} grid of equal cells; resize it to multiples")
    if perm.numel() != gh * gw or not torch.equal(perm.sort().values, torch.arange(gh * gw, device=perm.device)):
        raise ValueError(f"perm must be a permutation of {gh * gw} cells, got {perm.tolist()}")
    ch, cw = h // gh, w // gw
    lead = x.shape[:-2]
    cells = x.reshape(*lead, gh, ch, gw, cw).movedim(-3, -2).reshape(*lead, gh * gw, ch, cw)
    cells = cells.index_select(len(lead), perm.to(x.device))
    return cells.reshape(*lead, gh, gw, ch, cw).movedim(-2, -3).reshape(x.shape)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``patch_shuffle(patch_shuffle(x, g, perm), g, inv) == x``."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last dim, ``0 · log 0 = 0`` (``scipy.stats.entropy`` of a probability
    vector): ``[..., R]`` → ``[...]``."""
    p = p.double()
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)


def pcs_scores(p_orig: torch.Tensor, p_shuffled: torch.Tensor) -> torch.Tensor:
    """SDS's PCS as the official code computes it: ``|H(p_orig) - H(p_shuffled)|``, ``[..., R]`` each → ``[...]``.

    Both are softmax vectors over the same rows (the image's classes + background words).
    """
    if p_orig.shape != p_shuffled.shape:
        raise ValueError(f"probability shapes differ: {tuple(p_orig.shape)} vs {tuple(p_shuffled.shape)}")
    return (entropy(p_orig) - entropy(p_shuffled)).abs()


def pcs_keep(scores: np.ndarray, rule: str, threshold: float, drop: float) -> np.ndarray:
    """Which images pass PCS: ``rule="threshold"``: ``score > threshold`` (official, 0.1); ``rule="drop"``: all but
    the ``drop`` fraction with the lowest scores (``floor(drop · N)`` images; ties broken by index). ``bool [N]``."""
    s = np.asarray(scores, dtype=np.float64)
    if rule == "threshold":
        return s > threshold
    if rule == "drop":
        if not 0 <= drop < 1:
            raise ValueError(f"drop must be in [0, 1), got {drop}")
        order = np.argsort(s, kind="stable")
        keep = np.ones(len(s), dtype=bool)
        keep[order[: int(math.floor(drop * len(s) + 1e-9))]] = False
        return keep
    raise ValueError(f"PCS rule {rule!r}: use 'threshold' or 'drop'")


def pseudo_from_cams(
    cams: torch.Tensor, classes: Sequence[int], bg_power: float = 1.0, weights: torch.Tensor | None = None
) -> np.ndarray:
    """CLIP-ES's CAM → label rule without a CRF: CAMs ``[K, H, W]`` in [0, 1] of 0-based ``classes`` (optionally
    scaled by ``weights`` ``[K]``), background score ``(1 - max_k cam_k) ** bg_power`` in front, argmax, index
    mapped to the mask convention (0 = background, ``c + 1`` = class ``c``) → ``uint8 [H, W]``."""
    if cams.dim() != 3 or cams.shape[0] != len(classes):
        raise ValueError(f"cams must be [{len(classes)}, H, W] for classes {list(classes)}, got {tuple(cams.shape)}")
    if len(classes) == 0:
        return np.zeros(tuple(cams.shape[-2:]), dtype=np.uint8)
    c = cams.float().clamp(0, 1)
    if weights is not None:
        c = c * weights.float().to(c.device).view(-1, 1, 1)
    bg = (1 - c.amax(0, keepdim=True)).clamp_min(0) ** bg_power
    index = torch.cat([bg, c]).argmax(0).cpu().numpy()
    lut = np.array([0, *(int(k) + 1 for k in classes)], dtype=np.uint8)
    return lut[index]


def asf_score(mask: np.ndarray, pseudo: np.ndarray, classes: Sequence[int], ignore: int = IGNORE) -> float:
    """ASF's agreement: ``ΣI / ΣU`` over the 0-based ``classes`` (mask ids ``c + 1``) between ``mask`` and
    ``pseudo`` (``uint8 [H, W]`` each), pixels where ``mask == ignore`` left out — a pooled IoU, not a mean.
    0 (not NaN) when the union is empty (no class annotated or predicted)."""
    if mask.shape != pseudo.shape:
        raise ValueError(f"mask {mask.shape} and pseudo mask {pseudo.shape} differ in size")
    valid = mask != ignore
    inter = union = 0
    for c in classes:
        a, b = (mask == c + 1) & valid, (pseudo == c + 1) & valid
        inter += int((a & b).sum())
        union += int((a | b).sum())
    return inter / union if union else 0.0


def class_balanced_keep(
    scores: Sequence[float], classes: Sequence[Sequence[int]], ratio: float, candidates: np.ndarray | None = None
) -> tuple[np.ndarray, dict[int, dict[str, int]]]:
    """weakseg's class-balanced ASF cut: for every class ``c``, keep the ``ceil(ratio · n_c)`` best-scoring of the
    ``n_c`` candidate images whose annotation contains ``c``.

    Images are visited by descending score (ties by index); one is kept when any of its classes has not yet met its
    quota. So each class keeps at least its quota, and exactly its best images; a multi-class image kept for one
    class counts towards all of its classes (each image is scored once). Images without a class are never kept.

    ``scores`` ``[N]``; ``classes[i]``: 0-based classes of image ``i``; ``candidates`` ``bool [N]`` (None: all) limits
    the selection to, e.g., the PCS survivors. Returns ``(keep bool [N], {class: {"candidates", "quota", "kept"}})``.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"keep ratio must be in (0, 1], got {ratio}")
    n = len(scores)
    if len(classes) != n:
        raise ValueError(f"{n} scores but {len(classes)} class lists")
    cand = np.ones(n, dtype=bool) if candidates is None else np.asarray(candidates, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s[cand]).any():
        raise ValueError("ASF scores contain NaN")
    counts: dict[int, int] = {}
    for i in np.flatnonzero(cand):
        for c in set(classes[i]):
            counts[c] = counts.get(c, 0) + 1
    quota = {c: int(math.ceil(ratio * k - 1e-9)) for c, k in counts.items()}
    kept_per = dict.fromkeys(counts, 0)
    keep = np.zeros(n, dtype=bool)
    order = sorted(np.flatnonzero(cand).tolist(), key=lambda i: (-s[i], i))
    for i in order:
        cs = set(classes[i])
        if any(kept_per[c] < quota[c] for c in cs):
            keep[i] = True
            for c in cs:
                kept_per[c] += 1
    info = {c: {"candidates": counts[c], "quota": quota[c], "kept": kept_per[c]} for c in sorted(counts)}
    return keep, info
