"""A2GNN's pseudo-label math for box supervision, as pure functions on tensors / arrays.

Paper: Bingfeng Zhang, Jimin Xiao, Jianbo Jiao, Yunchao Wei, Yao Zhao, "Affinity Attention Graph Neural Network
for Weakly Supervised Semantic Segmentation", IEEE TPAMI 44(11):8082-8096, 2022 (arXiv 2106.04054).

A2GNN turns boxes into dense pseudo labels, one image at a time (transductive):

1. **Seeds** (:func:`box_seeds`): every pixel outside all boxes is background (certain); inside a box of class
   ``c`` a pixel is ``c`` where two cues agree (a colour model of the box against the outside, GrabCut's first
   step, and the box-normalised CAM of ``c`` above a threshold, or the box's central ellipse when no CAM is
   given); every other box pixel is unknown (255).
2. **Graph** (:func:`window_affinity`): the nodes are the cells of the affinity network's feature grid (stride
   8), the edges link cells within a ``(2r+1)²`` window with weight ``a_ij = exp(-mean_d |f_i - f_j|)``
   (AffinityNet's affinity), ``a_ii = 1``. Stored as ``[B, D, h, w]`` (``D = (2r+1)²`` neighbours of each
   cell, :func:`weakseg.losses.pairwise.neighbours` order), never as a dense ``N x N`` matrix
   (:func:`dense_adjacency` converts one image's for checks).
3. **GNN** (:func:`gnn_forward`): Linear (no bias) → ReLU → dropout → ``L`` affinity-attention layers
   (:func:`attention_layer`: ``softmax_j(β·cos(h_i, h_j) + 10·a_ij)`` over the window, neighbours with negative
   cosine cut) → Linear (no bias) to the image's classes. A new GNN is trained from scratch for every image
   (:func:`fit_gnn`) with balanced partial CE on the seeds (:func:`balanced_pce_per_image`), the multi-point
   loss (:func:`mp_points`, :func:`mp_loss`: the argmax point of every row and column of a box is trained towards
   the box's class, and their hidden features towards each other), consistency checking
   (:func:`consistency_check`: seed pixels of a box whose feature points away from its points' prototype become
   unknown, persistently) and, in the second half, a gated-CRF Potts term on the grid
   (:func:`weakseg.losses.pairwise.gated_crf_loss`).

**Batching.** Several images' GNNs train as one computation: every parameter carries a leading image axis
(:class:`GNNParams`), grids are padded to the batch's largest and padded cells are cut out of every window,
losses are per-image means summed over the images (so each image's gradient is its own), and Adam is
elementwise; a batch therefore trains exactly the GNNs that one-at-a-time training would (same per-image
initialisation and dropout streams, :func:`fit_gnn`), up to float rounding. Logits are upsampled to pixels
after replicating each image's last row/column into its padding (:func:`upsample_grid`), which is what
upsampling the image alone gives.

Also here: the two box baselines (:func:`box_fill`, :func:`box_cam_label`) and the affinity network's
feature regulariser (:func:`affinity_regulariser`). Labels: 0 = background, ``c + 1`` = class ``c``, 255 = unknown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.data.dataset import IGNORE, Box
from weakseg.losses.pairwise import gated_crf_loss, gaussian_kernel, neighbours

NEG = -1e9
"""logit of a class channel an image does not have (softmax gives exactly 0)"""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------- baselines and seeds


def _by_area(boxes: Sequence[Box]) -> list[Box]:
    """Largest first, so that a later (smaller) box is drawn on top."""
    return sorted(boxes, key=lambda b: -b.area)


def box_fill(boxes: Sequence[Box], h: int, w: int) -> np.ndarray:
    """The box-fill baseline ``uint8 [h, w]``: each box's interior is its class, smaller boxes on top, else 0."""
    out = np.zeros((h, w), dtype=np.uint8)
    for b in _by_area(boxes):
        c = b.clip(h, w)
        out[c.y0 : c.y1, c.x0 : c.x1] = b.cls + 1
    return out


def _box_normalised(cam: np.ndarray, b: Box) -> np.ndarray:
    region = np.asarray(cam[b.y0 : b.y1, b.x0 : b.x1], dtype=np.float32)
    top = float(region.max()) if region.size else 0.0
    return region / top if top > 1e-6 else np.zeros_like(region)


def box_cam_label(
    boxes: Sequence[Box], cams: Mapping[int, np.ndarray], h: int, w: int, threshold: float, fill_empty: bool = False
) -> np.ndarray:
    """The box ∩ CAM baseline ``uint8 [h, w]``: inside a box of class ``c``, ``c`` where ``c``'s CAM divided by its
    maximum inside the box is at least ``threshold``; everything else 0. Smaller boxes are drawn on top (their
    foreground overwrites a larger box's). ``cams``: class → ``float [h, w]``; a box whose class has no CAM is
    filled (box-fill), and so is one whose CAM is 0 all over the box when ``fill_empty``."""
    out = np.zeros((h, w), dtype=np.uint8)
    for b in _by_area(boxes):
        c = b.clip(h, w)
        view = out[c.y0 : c.y1, c.x0 : c.x1]
        empty = b.cls in cams and float(np.max(cams[b.cls][c.y0 : c.y1, c.x0 : c.x1])) <= 1e-6
        if b.cls in cams and not (fill_empty and empty):
            view[_box_normalised(cams[b.cls], c) >= threshold] = b.cls + 1
        else:
            view[...] = b.cls + 1
    return out


def colour_foreground(image: np.ndarray, box: Box, outside: np.ndarray, bins: int = 8) -> np.ndarray:
    """``bool [bh, bw]``: the box's pixels whose colour is more frequent inside the box than outside all boxes.

    ``image`` ``uint8 [H, W, 3]``; ``outside`` ``bool [H, W]`` (pixels outside every box). Colours are quantised
    to ``bins`` levels per channel; the two histograms are normalised to densities (GrabCut's first colour
    model, as histograms). With no outside pixel, every box pixel counts as foreground.
    """
    q = (image.astype(np.int64) * bins) // 256
    code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    inner = code[box.y0 : box.y1, box.x0 : box.x1]
    if not outside.any():
        return np.ones(inner.shape, dtype=bool)
    h_in = np.bincount(inner.ravel(), minlength=bins**3) / max(inner.size, 1)
    h_out = np.bincount(code[outside], minlength=bins**3) / int(outside.sum())
    return h_in[inner] > h_out[inner]


def central_ellipse(box: Box, core: float) -> np.ndarray:
    """``bool [bh, bw]``: the ellipse centred in the box with semi-axes ``core`` × half its sides."""
    yy = (np.arange(box.height) + 0.5 - box.height / 2) / max(core * box.height / 2, 0.5)
    xx = (np.arange(box.width) + 0.5 - box.width / 2) / max(core * box.width / 2, 0.5)
    return yy[:, None] ** 2 + xx[None, :] ** 2 <= 1


def box_seeds(
    boxes: Sequence[Box],
    image: np.ndarray,
    cams: Mapping[int, np.ndarray] | None = None,
    fg_threshold: float = 0.5,
    core: float = 0.6,
    bins: int = 16,
    box_background: bool = True,
) -> np.ndarray:
    """A2GNN's box seeds ``uint8 [H, W]`` (module docstring, step 1).

    ``image`` ``uint8 [H, W, 3]``; ``boxes`` inside it; ``cams``: class → ``float [H, W]`` (None, a missing
    class or a CAM that is 0 all over the box: the box's central ellipse of relative size ``core`` replaces the CAM
    cue). A box pixel is ``c`` where
    the colour cue (:func:`colour_foreground`) and the CAM (or ellipse) cue agree; when they agree nowhere in a
    box, the CAM/ellipse cue alone, and failing that the box's centre pixel, so every box keeps a seed. A pixel
    claimed by boxes of two classes is unknown. Outside every box: 0. ``box_background``: a box pixel where both
    cues say "not the object" (its colour is more frequent outside the boxes, and the CAM is low or the pixel is
    outside the ellipse) is background too, when every box holding it says so (GrabCut-style background inside
    the box; without it the only background seeds are outside the boxes).
    """
    h, w = image.shape[:2]
    inside = np.zeros((h, w), dtype=bool)
    for b in boxes:
        c = b.clip(h, w)
        inside[c.y0 : c.y1, c.x0 : c.x1] = True
    outside = ~inside
    claim = np.full((h, w), -1, dtype=np.int64)
    conflict = np.zeros((h, w), dtype=bool)
    holders = np.zeros((h, w), dtype=np.int64)  # boxes holding the pixel
    says_bg = np.zeros((h, w), dtype=np.int64)  # of those, the ones whose cues both say background
    for b in boxes:
        c = b.clip(h, w)
        if c.area == 0:
            continue
        cam = cams.get(b.cls) if cams is not None else None
        if cam is not None and float(np.max(cam[c.y0 : c.y1, c.x0 : c.x1])) > 1e-6:
            cue = _box_normalised(cam, c) >= fg_threshold
        else:  # no CAM, or one that is zero all over the box
            cue = central_ellipse(c, core)
        colour = colour_foreground(image, c, outside, bins)
        seed = cue & colour
        holders[c.y0 : c.y1, c.x0 : c.x1] += 1
        says_bg[c.y0 : c.y1, c.x0 : c.x1] += ~cue & ~colour
        if not seed.any():
            seed = cue
        if not seed.any():
            seed = np.zeros_like(cue)
            seed[c.height // 2, c.width // 2] = True
        view_claim = claim[c.y0 : c.y1, c.x0 : c.x1]
        view_conf = conflict[c.y0 : c.y1, c.x0 : c.x1]
        view_conf |= seed & (view_claim >= 0) & (view_claim != b.cls)
        view_claim[seed & (view_claim < 0)] = b.cls
    out = np.where(inside, IGNORE, 0).astype(np.uint8)
    if box_background:
        out[inside & (says_bg == holders) & (claim < 0)] = 0
    keep = (claim >= 0) & ~conflict
    out[keep] = (claim[keep] + 1).astype(np.uint8)
    return out


def allowed_classes(boxes: Sequence[Box], h: int, w: int, classes: Sequence[int]) -> np.ndarray:
    """``bool [1 + len(classes), h, w]``: which output channels a pixel may take (0 = background: always; channel
    ``k + 1`` = ``classes[k]``: inside a box of that class). The box constraint of the final labels."""
    out = np.zeros((1 + len(classes), h, w), dtype=bool)
    out[0] = True
    index = {c: k + 1 for k, c in enumerate(classes)}
    for b in boxes:
        c = b.clip(h, w)
        out[index[b.cls], c.y0 : c.y1, c.x0 : c.x1] = True
    return out


# ---------------------------------------------------------------------------- the graph


def window_affinity(features: torch.Tensor, radius: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Window adjacency ``[B, D, h, w]``: ``a_ij = exp(-mean_d |f_i - f_j|)`` for cells ``j`` within ``radius``.

    ``features`` ``[B, C, h, w]``; ``valid`` ``[B, 1, h, w]`` 0/1 (padding = 0; None = all valid). Entries whose
    neighbour leaves the grid or is padding are 0, as is every entry of a padded cell; ``a_ii = 1`` on valid cells.
    """
    b, _, h, w = features.shape
    if valid is None:
        valid = features.new_ones(b, 1, h, w)
    valid = valid.to(features.dtype)
    dist = (neighbours(features, radius) - features[:, :, None]).abs().mean(1)
    gate = neighbours(valid, radius)[:, 0] * valid  # neighbour inside the grid and valid, and the cell valid
    return torch.exp(-dist) * gate


def dense_adjacency(adj: torch.Tensor, radius: int) -> torch.Tensor:
    """One image's window adjacency ``[D, h, w]`` as the dense ``[N, N]`` matrix (``N = h·w``, raster order)."""
    d, h, w = adj.shape
    k = 2 * radius + 1
    if d != k * k:
        raise ValueError(f"adjacency has {d} neighbours; radius {radius} needs {k * k}")
    dy, dx = torch.meshgrid(torch.arange(-radius, radius + 1), torch.arange(-radius, radius + 1), indexing="ij")
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ty = ys[None] + dy.reshape(-1, 1, 1)
    tx = xs[None] + dx.reshape(-1, 1, 1)
    inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    src = (ys * w + xs)[None].expand(d, h, w)[inside]
    dst = (ty * w + tx)[inside]
    out = adj.new_zeros(h * w, h * w)
    out[src, dst] = adj[inside]
    return out


# ---------------------------------------------------------------------------- the GNN


def attention_layer(h: torch.Tensor, adj: torch.Tensor, beta: torch.Tensor, edge_scale: float = 10.0) -> torch.Tensor:
    """One affinity-attention layer: ``h'_i = Σ_j P_ij h_j``, ``P_i = softmax_j(β·cos(h_i, h_j) + s·a_ij)``.

    ``h`` ``[B, C, h, w]``; ``adj`` ``[B, D, h, w]`` from :func:`window_affinity`; ``beta`` ``[B]`` (one learnable
    scalar per image); ``s`` = ``edge_scale``. Neighbours with ``a_ij = 0`` (outside the window, padding) or a
    negative cosine get ``P_ij = 0``; the cell itself is always kept, so every row sums to 1.
    """
    r = math.isqrt(adj.shape[1]) // 2
    nb = neighbours(h, r)  # [B, C, D, h, w], one unfold serves the cosine and the aggregation
    norm = h.norm(dim=1, keepdim=True)
    cos = (nb * h[:, :, None]).sum(1) / (neighbours(norm, r)[:, 0] * norm).clamp_min(1e-12)  # [B, D, h, w]
    keep = (adj > 0) & (cos >= 0)
    keep[:, adj.shape[1] // 2] = True
    logits = (beta.view(-1, 1, 1, 1) * cos + edge_scale * adj).masked_fill(~keep, float("-inf"))
    p = torch.softmax(logits, dim=1)
    return (p[:, None] * nb).sum(2)


@dataclass
class GNNParams:
    """The parameters of ``B`` independent GNNs, image axis first (each image trains its own)."""

    w_in: torch.Tensor
    """``[B, C_in, H]`` input projection (no bias)"""
    beta: torch.Tensor
    """``[B, L]`` one attention temperature per layer"""
    w_out: torch.Tensor
    """``[B, H, K]`` output projection (no bias); ``K`` = the batch's largest class count + 1"""

    def tensors(self) -> list[torch.Tensor]:
        return [self.w_in, self.beta, self.w_out]


def _xavier(shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    bound = math.sqrt(6.0 / (shape[0] + shape[1]))
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def init_params(in_dim: int, hidden: int, layers: int, n_out: Sequence[int], seeds: Sequence[int]) -> GNNParams:
    """Fresh GNNs for ``len(seeds)`` images: image ``b`` has ``n_out[b]`` output channels and draws its weights
    from ``torch.Generator().manual_seed(seeds[b])`` (Xavier-uniform projections, β ~ U(0, 1)), so its start does
    not depend on the batch it is in. Channels beyond ``n_out[b]`` are zero."""
    k = max(n_out)
    w_in, beta, w_out = [], [], []
    for n, s in zip(n_out, seeds, strict=True):
        gen = torch.Generator().manual_seed(int(s))
        w_in.append(_xavier((in_dim, hidden), gen))
        beta.append(torch.rand(layers, generator=gen))
        w_out.append(F.pad(_xavier((hidden, n), gen), (0, k - n)))
    return GNNParams(torch.stack(w_in), torch.stack(beta), torch.stack(w_out))


def dense_batch_adjacency(adj: torch.Tensor, radius: int) -> torch.Tensor:
    """``[B, D, h, w]`` window adjacencies → dense ``[B, N, N]`` (``N = h·w``, raster order; zeros off-window)."""
    return torch.stack([dense_adjacency(a, radius) for a in adj])


def attention_dense(h: torch.Tensor, adj: torch.Tensor, beta: torch.Tensor, edge_scale: float = 10.0) -> torch.Tensor:
    """:func:`attention_layer` on dense matrices, the official code's form: ``h`` ``[B, N, C]``, ``adj``
    ``[B, N, N]`` (:func:`dense_batch_adjacency`), ``beta`` ``[B]`` → ``[B, N, C]``. Two batched matrix products
    per layer; faster than the window form on a CPU for the grids used here (N of a few hundred)."""
    hn = F.normalize(h, dim=2)
    cos = hn @ hn.transpose(1, 2)
    eye = torch.eye(h.shape[1], dtype=torch.bool, device=h.device)
    keep = ((adj > 0) & (cos >= 0)) | eye
    logits = (beta.view(-1, 1, 1) * cos + edge_scale * adj).masked_fill(~keep, float("-inf"))
    return torch.softmax(logits, dim=2) @ h


def gnn_forward(
    x: torch.Tensor,
    adj: torch.Tensor,
    params: GNNParams,
    channels: torch.Tensor,
    keep: torch.Tensor | None = None,
    edge_scale: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``B`` GNNs at once: node features ``x`` ``[B, C_in, h, w]`` → (logits ``[B, K, h, w]``, hidden ``[B, H, h, w]``).

    ``adj``: the dense ``[B, N, N]`` adjacency (:func:`dense_batch_adjacency`); ``channels`` ``bool [B, K]``: the
    output channels image ``b`` has (others get :data:`NEG`); ``keep``: dropout mask ``[B, H, h, w]`` already
    scaled by ``1 / (1 - p)`` (None = no dropout).
    """
    b, _, h, w = x.shape
    z = torch.relu(x.flatten(2).transpose(1, 2) @ params.w_in)  # [B, N, H]
    if keep is not None:
        z = z * keep.flatten(2).transpose(1, 2)
    for layer in range(params.beta.shape[1]):
        z = attention_dense(z, adj, params.beta[:, layer], edge_scale)
    logits = (z @ params.w_out).transpose(1, 2).reshape(b, -1, h, w)
    hidden = z.transpose(1, 2).reshape(b, -1, h, w)
    return logits.masked_fill(~channels[:, :, None, None], NEG), hidden


def upsample_grid(x: torch.Tensor, grids: Sequence[tuple[int, int]], scale: int) -> torch.Tensor:
    """``[B, C, gh, gw]`` → ``[B, C, gh·scale, gw·scale]`` (bilinear), each image's own grid ``grids[b]`` first
    extended into the padding by repeating its last row and column: a valid pixel gets the value upsampling the
    image's grid alone gives (pad, upsample, then crop: no shift)."""
    b, c, gh, gw = x.shape
    iy = torch.stack([torch.arange(gh).clamp(max=g[0] - 1) for g in grids]).to(x.device)
    ix = torch.stack([torch.arange(gw).clamp(max=g[1] - 1) for g in grids]).to(x.device)
    x = x.gather(2, iy[:, None, :, None].expand(b, c, gh, gw)).gather(3, ix[:, None, None, :].expand(b, c, gh, gw))
    return F.interpolate(x, size=(gh * scale, gw * scale), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------- losses


def balanced_pce_per_image(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B]``: mean CE over each image's background seeds + mean CE over its foreground seeds (255 ignored).

    :func:`weakseg.losses.partial.balanced_partial_cross_entropy` per image (that one averages over the batch).
    ``logits`` ``[B, K, H, W]``, ``target`` ``[B, H, W]`` in output channels.
    """
    ce = F.cross_entropy(logits, target.long(), ignore_index=IGNORE, reduction="none")
    bg = (target == 0).to(ce.dtype)
    fg = ((target != 0) & (target != IGNORE)).to(ce.dtype)
    return (ce * bg).sum((1, 2)) / bg.sum((1, 2)).clamp_min(1) + (ce * fg).sum((1, 2)) / fg.sum((1, 2)).clamp_min(1)


@dataclass(frozen=True)
class BoxTable:
    """The boxes of a batch as tensors (channel = the box class's output channel in its image)."""

    image: torch.Tensor
    """``int64 [NB]`` image of each box"""
    coords: torch.Tensor
    """``int64 [NB, 4]`` ``x0, y0, x1, y1`` (exclusive ends) in label pixels"""
    channel: torch.Tensor
    """``int64 [NB]``"""

    @staticmethod
    def build(boxes: Sequence[Sequence[tuple[int, int, int, int, int]]]) -> BoxTable:
        """From ``boxes[b]`` = ``(x0, y0, x1, y1, channel)`` of image ``b``."""
        rows = [(b, *box) for b, image_boxes in enumerate(boxes) for box in image_boxes]
        t = torch.tensor(rows, dtype=torch.int64).reshape(-1, 6)
        return BoxTable(t[:, 0], t[:, 1:5], t[:, 5])

    def __len__(self) -> int:
        return int(self.image.numel())

    def masks(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows ``bool [NB, h]``, columns ``bool [NB, w]``, inside ``bool [NB, h, w]``) of every box."""
        ys, xs = torch.arange(h), torch.arange(w)
        rows = (ys[None] >= self.coords[:, 1:2]) & (ys[None] < self.coords[:, 3:4])
        cols = (xs[None] >= self.coords[:, 0:1]) & (xs[None] < self.coords[:, 2:3])
        return rows, cols, rows[:, :, None] & cols[:, None, :]


@dataclass(frozen=True)
class MPPoints:
    """The multi-point (MP) points of every box: the argmax column of each box row, the argmax row of each box
    column (``P = H + W`` slots per box, ``valid`` marks the box's own rows and columns)."""

    ys: torch.Tensor
    """``int64 [NB, P]``"""
    xs: torch.Tensor
    """``int64 [NB, P]``"""
    valid: torch.Tensor
    """``bool [NB, P]``"""


def mp_points(logits: torch.Tensor, boxes: BoxTable) -> MPPoints:
    """A2GNN's MP points (box tightness: every row and column of a tight box crosses its object) from
    ``logits`` ``[B, K, H, W]`` (the box class's channel, inside the box; no gradient)."""
    h, w = logits.shape[-2:]
    rows, cols, inside = boxes.masks(h, w)
    maps = logits.detach()[boxes.image, boxes.channel].masked_fill(~inside, float("-inf"))  # [NB, H, W]
    ys = torch.cat([torch.arange(h).expand(len(boxes), h), maps.argmax(1)], 1)
    xs = torch.cat([maps.argmax(2), torch.arange(w).expand(len(boxes), w)], 1)
    return MPPoints(ys, xs, torch.cat([rows, cols], 1))


def mp_loss(logits: torch.Tensor, hidden: torch.Tensor, boxes: BoxTable, points: MPPoints) -> torch.Tensor:
    """``[B]``: per image, the CE of all its MP points' logits towards their box's class (summed, ÷ the image's
    point count) + the mean over its boxes of ``mean_{p,q} (1 - cos(h_p, h_q))`` over the box's point pairs.

    ``logits`` ``[B, K, H, W]`` and ``hidden`` ``[B, C, H, W]`` at label resolution.
    """
    b = logits.shape[0]
    at = (boxes.image[:, None], slice(None), points.ys, points.xs)
    pl = logits[at]  # [NB, P, K]
    ce = F.cross_entropy(pl.flatten(0, 1), boxes.channel.repeat_interleave(pl.shape[1]), reduction="none")
    ce = ce.view_as(points.ys) * points.valid
    n_points = torch.zeros(b, dtype=logits.dtype).index_add_(0, boxes.image, points.valid.sum(1).to(logits.dtype))
    ce_img = torch.zeros(b, dtype=logits.dtype).index_add_(0, boxes.image, ce.sum(1)) / n_points.clamp_min(1)
    f = F.normalize(hidden[at], dim=-1)  # [NB, P, C]
    pair = points.valid[:, :, None] & points.valid[:, None, :]
    dissim = ((1 - f @ f.transpose(1, 2)) * pair).sum((1, 2)) / pair.sum((1, 2)).clamp_min(1)
    n_boxes = torch.zeros(b, dtype=logits.dtype).index_add_(0, boxes.image, torch.ones_like(dissim))
    feat_img = torch.zeros(b, dtype=logits.dtype).index_add_(0, boxes.image, dissim) / n_boxes.clamp_min(1)
    return ce_img + feat_img


@torch.no_grad()
def consistency_check(labels: torch.Tensor, hidden: torch.Tensor, boxes: BoxTable, points: MPPoints) -> torch.Tensor:
    """A2GNN's consistency checking: inside box ``n`` (image ``b``, channel ``c``), seed pixels labelled ``c``
    whose hidden feature has a negative cosine to the mean feature of the box's MP points become 255.

    ``labels`` ``[B, H, W]`` (output channels), ``hidden`` ``[B, C, H, W]``. Returns a new map; no other pixel
    changes.
    """
    h, w = labels.shape[-2:]
    f = hidden[boxes.image[:, None], :, points.ys, points.xs]  # [NB, P, C]
    proto = F.normalize((f * points.valid[..., None]).sum(1), dim=1)  # [NB, C]
    hn = F.normalize(hidden, dim=1)
    cos = torch.einsum("nc,nchw->nhw", proto, hn[boxes.image])
    _, _, inside = boxes.masks(h, w)
    drop = inside & (cos < 0) & (labels[boxes.image] == boxes.channel[:, None, None])
    per_image = torch.zeros(labels.shape, dtype=hidden.dtype).index_add_(0, boxes.image, drop.to(hidden.dtype))
    return labels.masked_fill(per_image > 0, IGNORE)


def gated_crf_per_image(probs: torch.Tensor, image: torch.Tensor, valid: torch.Tensor, **kernel) -> torch.Tensor:
    """``Σ_b`` of each image's gated-CRF Potts loss (its own mean over its valid cells), one batched call of
    :func:`weakseg.losses.pairwise.gated_crf_loss`: ``valid / n_b`` as the source gate makes each image's terms
    its own mean, and the call's division by the gates' sum (= ``B``) is undone. Scalar."""
    n = valid.sum((1, 2, 3), keepdim=True).clamp_min(1)
    return probs.shape[0] * gated_crf_loss(probs, image, mask_src=valid / n, mask_dst=valid, **kernel)


def affinity_regulariser(
    features: torch.Tensor, image: torch.Tensor, radius: int, xy_sigma: float = 6.0, rgb_sigma: float = 0.1
) -> torch.Tensor:
    """A2GNN's gated-CRF regulariser of the affinity network: ``Σ_ij K_ij · mean_c |f_i - f_j| / (B·h·w)``, with
    ``K`` the xy + RGB Gaussian kernel over the window (``image`` ``[B, 3, h, w]`` normalised, at the feature
    grid). Pulls together the features of nearby, similarly coloured cells. Scalar."""
    k = gaussian_kernel([(image, rgb_sigma)], radius=radius, xy_sigma=xy_sigma)
    d = (neighbours(features, radius) - features[:, :, None]).abs().mean(1)
    return (k * d).sum() / (features.shape[0] * features.shape[2] * features.shape[3])


def normalise_image(image: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] → ImageNet mean/std normalised (the gated CRF's σ_rgb = 0.1 is in these units)."""
    mean = image.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (image - mean) / std


# ---------------------------------------------------------------------------- per-image training


@dataclass(frozen=True)
class GNNOptions:
    """The knobs of :func:`fit_gnn` (the method config copies them)."""

    hidden: int = 64
    layers: int = 3
    dropout: float = 0.5
    edge_scale: float = 10.0
    lr: float = 0.035
    weight_decay: float = 5e-4
    epochs: int = 30
    """epochs of balanced CE + MP loss (A2GNN box: 150)"""
    crf_epochs: int = 20
    """further epochs with the gated-CRF term added (A2GNN box: 150)"""
    crf_weight: float = 0.01
    crf_radius: int = 5
    crf_xy_sigma: float = 6.0
    crf_rgb_sigma: float = 0.1
    mp_weight: float = 1.0
    consistency: bool = True


@dataclass
class GraphBatch:
    """Everything :func:`fit_gnn` needs for ``B`` images, padded to one grid (``gh x gw``) and label size
    (``gh·stride x gw·stride``)."""

    x: torch.Tensor
    """``[B, C_in, gh, gw]`` node features"""
    adj: torch.Tensor
    """``[B, N, N]`` dense window adjacency (:func:`dense_batch_adjacency`)"""
    valid: torch.Tensor
    """``[B, 1, gh, gw]`` 1 on each image's own cells"""
    grids: list[tuple[int, int]]
    """each image's own grid size"""
    image: torch.Tensor
    """``[B, 3, gh, gw]`` normalised image at the grid (gated-CRF kernel)"""
    seeds: torch.Tensor
    """``int64 [B, H, W]`` seed labels in output channels, 255 = unknown (and padding)"""
    boxes: BoxTable
    channels: torch.Tensor
    """``bool [B, K]``"""
    stride: int
    init_seeds: list[int]
    """per-image random seeds (weights, dropout)"""


def fit_gnn(batch: GraphBatch, opt: GNNOptions) -> tuple[torch.Tensor, list[float]]:
    """Train one A2GNN per image of ``batch`` (module docstring) and return (probabilities ``[B, K, H, W]`` at
    label resolution, the summed loss per epoch)."""
    n_out = batch.channels.sum(1).tolist()
    params = init_params(batch.x.shape[1], opt.hidden, opt.layers, n_out, batch.init_seeds)
    for t in params.tensors():
        t.requires_grad_(True)
    optim = torch.optim.Adam(params.tensors(), lr=opt.lr, weight_decay=opt.weight_decay)
    gens = [torch.Generator().manual_seed(int(s) + 1) for s in batch.init_seeds]
    labels = batch.seeds.clone()
    gh, gw = batch.x.shape[-2:]
    history = []
    for epoch in range(opt.epochs + opt.crf_epochs):
        keep = None
        if opt.dropout > 0:
            masks = [(torch.rand(opt.hidden, g[0], g[1], generator=gen) >= opt.dropout) for g, gen in
                     zip(batch.grids, gens, strict=True)]  # fmt: skip
            keep = torch.stack([F.pad(m, (0, gw - m.shape[2], 0, gh - m.shape[1])) for m in masks]).float()
            keep = keep / (1 - opt.dropout)
        logits_g, hid_g = gnn_forward(batch.x, batch.adj, params, batch.channels, keep, opt.edge_scale)
        logits = upsample_grid(logits_g, batch.grids, batch.stride)
        hidden = upsample_grid(hid_g, batch.grids, batch.stride)
        loss = balanced_pce_per_image(logits, labels)
        points = mp_points(logits, batch.boxes) if len(batch.boxes) else None
        if points is not None:
            loss = loss + opt.mp_weight * mp_loss(logits, hidden, batch.boxes, points)
        total = loss.sum()
        if epoch >= opt.epochs and opt.crf_weight > 0:
            probs_g = torch.softmax(logits_g, 1)
            crf = gated_crf_per_image(probs_g, batch.image, batch.valid, radius=opt.crf_radius,
                                      xy_sigma=opt.crf_xy_sigma, rgb_sigma=opt.crf_rgb_sigma)  # fmt: skip
            total = total + opt.crf_weight * crf
        optim.zero_grad(set_to_none=True)
        total.backward()
        optim.step()
        history.append(float(total.detach()))
        if opt.consistency and points is not None:
            labels = consistency_check(labels, hidden.detach(), batch.boxes, points)
    with torch.no_grad():
        logits_g, _ = gnn_forward(batch.x, batch.adj, params, batch.channels, None, opt.edge_scale)
        probs = torch.softmax(upsample_grid(logits_g, batch.grids, batch.stride), 1)
    return probs, history
