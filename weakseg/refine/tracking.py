"""Pure pieces of template-matching video object segmentation (FTMU): boxes, matching, reward, A2C.

Paper: Sun, Xiao, Lim, Zhang, Zhao, "Fast Template Matching and Update for Video Object Tracking and
Segmentation", CVPR 2020 (arXiv 2004.07538). The tracker of :mod:`weakseg.methods.ftmu` composes these.

Conventions: a box is ``float [4]`` = ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive (as
:class:`weakseg.data.dataset.Box`); masks are ``bool [H, W]`` (or ``[N, H, W]``) in frame coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """The tight box ``(x0, y0, x1, y1)`` (exclusive ends) of a ``bool [H, W]`` mask; None when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def fill_box(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``bool [H, W]`` mask that is True inside ``box`` (rounded to whole pixels, cut to the frame)."""
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    x0, y0 = int(np.clip(np.floor(box[0] + 0.5), 0, w)), int(np.clip(np.floor(box[1] + 0.5), 0, h))
    x1, y1 = int(np.clip(np.floor(box[2] + 0.5), 0, w)), int(np.clip(np.floor(box[3] + 0.5), 0, h))
    out[y0:y1, x0:x1] = True
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a [N, 4]`` and ``b [M, 4]`` → ``[N, M]`` (0 where both are empty)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of masks ``a [N, H, W]`` and ``b [M, H, W]`` (bool) → ``[N, M]``; 1 where both are empty."""
    a = np.asarray(a, bool).reshape(len(a), -1).astype(np.float32)
    b = np.asarray(b, bool).reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)


def enlarge_box(box: np.ndarray, ratio: float, shape: tuple[int, int] | None = None) -> np.ndarray:
    """``box`` grown by ``ratio`` × its width (height) on the left and right (top and bottom); cut to ``shape``."""
    box = np.asarray(box, np.float32)
    w, h = box[2] - box[0], box[3] - box[1]
    out = np.array([box[0] - ratio * w, box[1] - ratio * h, box[2] + ratio * w, box[3] + ratio * h], np.float32)
    if shape is not None:
        out = np.clip(out, 0, [shape[1], shape[0], shape[1], shape[0]]).astype(np.float32)
    return out


def search_region(boxes: Sequence[np.ndarray], ratio: float, shape: tuple[int, int]) -> np.ndarray:
    """FTMU's search region: the union box of all targets' template boxes, enlarged by ``ratio`` per side, cut."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    union = np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()], np.float32)
    return enlarge_box(union, ratio, shape)


def candidate_boxes(
    template: np.ndarray, region: np.ndarray, shifts: Sequence[float], scales: Sequence[float]
) -> np.ndarray:
    """Boxes ``[K, 4]`` where the proposer looks for instances: the template box moved by ``shifts`` × its size
    in x and y (every pair) at scale 1, and rescaled by ``scales`` about its centre, each kept inside ``region``
    (a box larger than the region is cut to it). The first box is the template box itself."""
    t = np.asarray(template, np.float32)
    cx, cy, w, h = (t[0] + t[2]) / 2, (t[1] + t[3]) / 2, t[2] - t[0], t[3] - t[1]
    out = [(cx, cy, w, h)]
    out += [(cx + dx * w, cy + dy * h, w, h) for dy in shifts for dx in shifts if (dx, dy) != (0, 0)]
    out += [(cx, cy, s * w, s * h) for s in scales if s != 1]
    boxes = []
    for x, y, bw, bh in out:
        bw, bh = min(bw, region[2] - region[0]), min(bh, region[3] - region[1])
        x = float(np.clip(x, region[0] + bw / 2, region[2] - bw / 2))
        y = float(np.clip(y, region[1] + bh / 2, region[3] - bh / 2))
        boxes.append((x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2))
    return np.asarray(boxes, np.float32)


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float, top_k: int) -> list[int]:
    """Indices of at most ``top_k`` masks ``[N, H, W]``, best score first, none overlapping a kept one by more
    than ``iou_threshold`` mask IoU; empty masks are dropped."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    nonempty = np.asarray(masks, bool).reshape(len(masks), -1).any(1)
    for i in order:
        if not nonempty[i]:
            continue
        if keep and mask_iou(masks[i : i + 1], masks[keep]).max() > iou_threshold:
            continue
        keep.append(int(i))
        if len(keep) == top_k:
            break
    return keep


def match_by_iou(template: np.ndarray, candidates: np.ndarray) -> tuple[int, float]:
    """FTMU's fast matching: the candidate ``[N, H, W]`` with the highest mask IoU with the ``template [H, W]``.

    Returns ``(index, iou)``; ties go to the lower index (the proposer's order: best score first);
    ``(-1, 0.0)`` when there is no candidate (the caller keeps its last prediction, it must not abort)."""
    if len(candidates) == 0:
        return -1, 0.0
    ious = mask_iou(np.asarray(candidates, bool), np.asarray(template, bool)[None])[:, 0]
    i = int(np.argmax(ious))  # first maximum
    return i, float(ious[i])


def match_by_appearance(template_emb: torch.Tensor, candidate_embs: torch.Tensor) -> tuple[int, float]:
    """Appearance matching: the candidate embedding ``[N, C]`` most cosine-similar to ``template_emb [C]``.

    Returns ``(index, cosine)``; ``(-1, 0.0)`` when there is no candidate."""
    if len(candidate_embs) == 0:
        return -1, 0.0
    sims = F.cosine_similarity(candidate_embs, template_emb[None], dim=1)
    i = int(torch.argmax(sims))
    return i, float(sims[i])


def iou_reward(pred: np.ndarray, gt: np.ndarray, scale: float = 100.0, power: float = 3.0) -> float:
    """FTMU's per-frame reward ``scale · IoU(pred, gt)^power`` (IoU := 1 when the object is absent from both)."""
    return float(scale * mask_iou(np.asarray(pred, bool)[None], np.asarray(gt, bool)[None])[0, 0] ** power)


def discounted_returns(rewards: Sequence[float], gamma: float) -> torch.Tensor:
    """``R_t = r_t + γ R_{t+1}`` with ``R_T = 0`` after the last frame → ``float [T]``."""
    out = torch.zeros(len(rewards))
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def a2c_losses(
    log_probs: torch.Tensor, values: torch.Tensor, returns: torch.Tensor, entropy: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Advantage actor–critic losses of one episode.

    ``log_probs [T]``: log π(a_t | s_t) of the taken actions; ``values [T]``: V(s_t); ``returns [T]``.
    Advantage ``A = R − V`` (detached for the actor); actor ``−mean(log π · A)``, critic ``mean((R − V)²)``,
    plus ``entropy [T]`` (optional) reported as its mean.
    """
    adv = returns - values
    out = {"actor": -(log_probs * adv.detach()).mean(), "critic": adv.pow(2).mean()}
    out["entropy"] = entropy.mean() if entropy is not None else torch.zeros(())
    return out
