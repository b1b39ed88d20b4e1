"""A2GNN: box-supervised pseudo labels from an affinity network and one attention GNN per image (task ``box``).

Paper: Bingfeng Zhang, Jimin Xiao, Jianbo Jiao, Yunchao Wei, Yao Zhao, "Affinity Attention Graph Neural Network
for Weakly Supervised Semantic Segmentation", IEEE TPAMI 44(11):8082-8096, 2022 (arXiv 2106.04054).

The math is in :mod:`weakseg.refine.a2gnn`; this module holds the method's configuration (presets), the affinity
network (:class:`~weakseg.refine.affinity_net.AffinityNet`: a backbone + a 1x1 head at stride 8) and its training
step on box seeds, the node features of an image, and the batched labelling of several images
(:meth:`A2GNNMethod.label_batch`). The stage driver is :mod:`weakseg.stages.box_pseudo`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.backbones import Backbone
from weakseg.data.dataset import IGNORE, Box
from weakseg.errors import ConfigError
from weakseg.methods.base import Method, register_method
from weakseg.refine.a2gnn import (
    BoxTable,
    GNNOptions,
    GraphBatch,
    affinity_regulariser,
    allowed_classes,
    box_seeds,
    dense_batch_adjacency,
    fit_gnn,
    normalise_image,
    window_affinity,
)
from weakseg.refine.affinity import (
    affinity_loss_terms,
    affinity_targets,
    downsample_label,
    neighbour_offsets,
    pair_affinity,
)
from weakseg.refine.affinity_net import AffinityNet
from weakseg.refine.crf import crf_refine
from weakseg.refine.par import par_refine

REFINERS = ("crf", "par", "none")


@dataclass(frozen=True)
class A2GNNConfig:
    """Every knob of A2GNN (box supervision); presets: paper, cpu, tiny."""

    radius: int = 4
    """window radius (feature cells, stride 8) of the affinity pairs and of the graph (A2GNN box: 4)"""
    aff_dim: int = 64
    """channels of the affinity head"""
    aff_epochs: int = 3
    """affinity-network training epochs (A2GNN: 12)"""
    aff_crop: int = 96
    """square training crop of the affinity network (px; A2GNN: 448)"""
    aff_batch: int = 8
    aff_lr: float = 1e-3
    """backbone learning rate (AdamW; the head learns at 10x)"""
    aff_crf_weight: float = 3.0
    """weight of the gated-CRF feature regulariser (A2GNN: 3)"""
    aff_xy_sigma: float = 6.0
    """σ (feature cells) of the regulariser's position kernel"""
    aff_rgb_sigma: float = 0.1
    """σ of its colour kernel (ImageNet-normalised RGB)"""
    seed_fg_threshold: float = 0.5
    """CAM cue of the seeds: the box-normalised CAM of the box's class at least this"""
    seed_core: float = 0.6
    """without CAMs: the cue is the box's central ellipse of this relative size"""
    colour_bins: int = 16
    """colour levels per channel of the seeds' colour cue"""
    seed_box_background: bool = True
    """background seeds inside boxes where the colour and CAM (or ellipse) cues both say: not the object"""
    max_side: int = 128
    """images are labelled at this longer side (px; smaller ones at their own size), then resized back"""
    label_scale: int = 2
    """the GNN's losses run at the feature grid upsampled by this factor (8 = the working resolution, A2GNN's;
    2 = a quarter of it each way, 16x fewer pixels)"""
    aff_freeze_backbone: bool = False
    """train only the affinity head (the backbone's ImageNet features stay; faster on a CPU)"""
    batch_images: int = 8
    """images whose GNNs train together in one batched computation"""
    refine: str = "crf"
    """final refinement of the GNN's probabilities at image resolution: crf (A2GNN's dense CRF, extra ``crf``),
    par (weakseg's torch PAR, no extra) or none"""
    gnn: GNNOptions = field(default_factory=GNNOptions)
    """the per-image GNN (hidden width, layers, epochs, losses)"""

    def check(self) -> None:
        if self.radius < 1 or self.aff_dim < 1 or self.max_side < 16 or self.batch_images < 1:
            raise ConfigError(f"need radius >= 1, aff_dim >= 1, max_side >= 16, batch_images >= 1; got {self}")
        if self.refine not in REFINERS:
            raise ConfigError(f"refine={self.refine!r}; valid: {', '.join(REFINERS)}")
        if self.label_scale not in (1, 2, 4, 8):
            raise ConfigError(f"label_scale must be 1, 2, 4 or 8 (the feature stride is 8), got {self.label_scale}")
        if not 0 <= self.gnn.dropout < 1:
            raise ConfigError(f"gnn.dropout must be in [0, 1), got {self.gnn.dropout}")
        if self.gnn.epochs + self.gnn.crf_epochs < 1:
            raise ConfigError("gnn.epochs + gnn.crf_epochs must be >= 1")


PAPER = A2GNNConfig(
    radius=4,
    aff_epochs=12,
    aff_crop=448,
    aff_batch=4,
    max_side=512,
    label_scale=8,
    batch_images=4,
    gnn=GNNOptions(hidden=256, epochs=150, crf_epochs=150),
)
CPU = A2GNNConfig(aff_freeze_backbone=True)
TINY = A2GNNConfig(
    radius=2, aff_dim=16, aff_epochs=1, aff_crop=48, aff_batch=4, max_side=64, batch_images=4, label_scale=4,
    refine="none", gnn=GNNOptions(hidden=16, layers=2, epochs=6, crf_epochs=4),
)  # fmt: skip


@dataclass
class LabelItem:
    """One image prepared for labelling (see :meth:`A2GNNMethod.prepare`)."""

    image_id: str
    size: tuple[int, int]
    """original ``(H, W)``"""
    boxes: tuple[Box, ...]
    """original-resolution boxes"""
    classes: tuple[int, ...]
    """the image's boxed classes: output channel ``k + 1`` = ``classes[k]``"""
    x: torch.Tensor
    """``[C_in, gh, gw]`` node features"""
    emb: torch.Tensor
    """``[dim, gh, gw]`` affinity embedding"""
    image: torch.Tensor
    """``[3, gh, gw]`` normalised image at the grid"""
    rgb: np.ndarray
    """``uint8 [H, W, 3]`` the original image (final refinement)"""
    seeds: torch.Tensor
    """``int64 [gh·s, gw·s]`` seeds in output channels at label resolution (s = label_scale; 255 = unknown or
    padding)"""
    work_boxes: tuple[tuple[int, int, int, int, int], ...]
    """``(x0, y0, x1, y1, channel)`` at label resolution"""
    work_size: tuple[int, int]
    init_seed: int


def scale_box(b: Box, s: float, h: int, w: int) -> Box:
    """A box of an image scaled by ``s`` (outward rounding, at least one pixel, inside ``h x w``)."""
    x0, y0 = min(math.floor(b.x0 * s), w - 1), min(math.floor(b.y0 * s), h - 1)
    x1, y1 = max(math.ceil(b.x1 * s), x0 + 1), max(math.ceil(b.y1 * s), y0 + 1)
    return Box(x0, y0, min(x1, w), min(y1, h), b.cls)


@register_method
class A2GNNMethod(Method):
    name = "a2gnn"
    task = "box"
    description = "A2GNN: box seeds -> affinity network -> one affinity-attention GNN per image -> pseudo labels"
    paper = "Zhang et al., TPAMI 2021"
    Config = A2GNNConfig
    presets = {"paper": PAPER, "cpu": CPU, "tiny": TINY}

    @property
    def epochs(self) -> int:
        return int(self.cfg.aff_epochs)

    # ---------------------------------------------------------------- affinity network
    def build(self, backbone: Backbone, num_classes: int) -> nn.Module:
        return AffinityNet(backbone, self.cfg.aff_dim)

    def affinity_step(self, net: AffinityNet, images: torch.Tensor, seeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """PSA's pair loss on the box seeds (bg-pos / 4 + fg-pos / 4 + neg / 2) + the gated-CRF regulariser."""
        c = self.cfg
        if c.aff_freeze_backbone:
            with torch.no_grad():
                base = net.backbone(images)
            features = F.elu(net.head(base)).float()
        else:
            features = net(images).float()
        grid = tuple(features.shape[-2:])
        offsets = neighbour_offsets(c.radius)
        targets = affinity_targets(downsample_label(seeds, grid), offsets)
        bg_pos, fg_pos, neg = affinity_loss_terms(pair_affinity(features, offsets), targets)
        small = F.interpolate(normalise_image(images), size=grid, mode="bilinear", align_corners=False)
        reg = affinity_regulariser(features, small, c.radius, c.aff_xy_sigma, c.aff_rgb_sigma)
        loss = bg_pos / 4 + fg_pos / 4 + neg / 2 + c.aff_crf_weight * reg
        return {"loss": loss, "bg_pos": bg_pos.detach(), "fg_pos": fg_pos.detach(), "neg": neg.detach(),
                "regulariser": reg.detach()}  # fmt: skip

    # ---------------------------------------------------------------- one image
    def working_size(self, h: int, w: int) -> tuple[int, int]:
        s = min(1.0, self.cfg.max_side / max(h, w))
        return max(1, round(h * s)), max(1, round(w * s))

    @torch.no_grad()
    def prepare(
        self,
        net: AffinityNet,
        image_id: str,
        image: np.ndarray,
        boxes: Sequence[Box],
        cams: Mapping[int, np.ndarray] | None,
        init_seed: int,
    ) -> LabelItem:
        """Resize one image to the working size, compute its node features, embedding and seeds.

        ``image`` ``uint8 [H, W, 3]``; ``boxes`` in its pixels; ``cams``: class → CAM (any size) or None.
        """
        h, w = image.shape[:2]
        wh, ww = self.working_size(h, w)
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        if (wh, ww) != (h, w):
            t = F.interpolate(t[None], size=(wh, ww), mode="bilinear", align_corners=False, antialias=True)[0]
        work_image = (t.permute(1, 2, 0) * 255).round().clamp(0, 255).byte().numpy()
        s = wh / h
        work_boxes = tuple(scale_box(b, s, wh, ww) for b in boxes)
        device = next(net.parameters()).device
        feats = net.backbone(t[None].to(device))
        emb = F.elu(net.head(feats))[0].float().cpu()
        feats = feats[0].float().cpu()
        gh, gw = emb.shape[-2:]
        stride = net.output_stride
        x = torch.cat([F.normalize(feats, dim=0), F.normalize(emb, dim=0)]) / math.sqrt(2)
        classes = tuple(sorted({b.cls for b in boxes}))
        channel = {c: k + 1 for k, c in enumerate(classes)}
        seeds_global = self.seeds(work_image, work_boxes, cams)
        lut = np.full(256, IGNORE, dtype=np.int64)
        lut[0] = 0
        for c, k in channel.items():
            lut[c + 1] = k
        seeds = torch.full((gh * stride, gw * stride), IGNORE, dtype=torch.int64)
        seeds[:wh, :ww] = torch.from_numpy(lut[seeds_global])
        step = stride // self.cfg.label_scale  # label pixel = the centre pixel of a step x step block
        seeds = seeds[step // 2 :: step, step // 2 :: step].contiguous()
        small = F.interpolate(normalise_image(t[None]), size=(gh, gw), mode="area")[0]
        lh, lw = seeds.shape
        wb = tuple((*scale_box(b, 1 / step, lh, lw).as_tuple(), channel[b.cls]) for b in work_boxes)
        return LabelItem(image_id, (h, w), tuple(boxes), classes, x, emb, small, image, seeds, wb, (wh, ww), init_seed)

    # ---------------------------------------------------------------- several images at once
    def graph_batch(self, items: Sequence[LabelItem]) -> GraphBatch:
        """Pad the items to one grid and build their window graphs in one call."""
        gh = max(it.x.shape[1] for it in items)
        gw = max(it.x.shape[2] for it in items)
        k = max(len(it.classes) for it in items) + 1

        def pad(t: torch.Tensor, value: float = 0.0) -> torch.Tensor:
            return F.pad(t, (0, gw - t.shape[-1], 0, gh - t.shape[-2]), value=value)

        x = torch.stack([pad(it.x) for it in items])
        emb = torch.stack([pad(it.emb) for it in items])
        valid = torch.stack([pad(torch.ones(1, *it.x.shape[1:])) for it in items])
        ls = self.cfg.label_scale
        seeds = torch.stack([F.pad(it.seeds, (0, gw * ls - it.seeds.shape[1], 0, gh * ls - it.seeds.shape[0]),
                                   value=IGNORE) for it in items])  # fmt: skip
        channels = torch.zeros(len(items), k, dtype=torch.bool)
        for b, it in enumerate(items):
            channels[b, : len(it.classes) + 1] = True
        return GraphBatch(
            x=x,
            adj=dense_batch_adjacency(window_affinity(emb, self.cfg.radius, valid), self.cfg.radius),
            valid=valid,
            grids=[tuple(it.x.shape[1:]) for it in items],
            image=torch.stack([pad(it.image) for it in items]),
            seeds=seeds,
            boxes=BoxTable.build([it.work_boxes for it in items]),
            channels=channels,
            stride=ls,
            init_seeds=[it.init_seed for it in items],
        )

    def label_batch(self, items: Sequence[LabelItem], stride: int) -> list[np.ndarray]:
        """Train the items' GNNs together and return each image's pseudo label ``uint8 [H, W]`` (original size):
        the argmax of the GNN's probabilities among background and the classes of the boxes covering a pixel
        (so every pixel outside all boxes is background)."""
        with_boxes = [it for it in items if it.work_boxes]
        probs = fit_gnn(self.graph_batch(with_boxes), self.cfg.gnn)[0] if with_boxes else None
        out, j = [], 0
        for it in items:
            h, w = it.size
            if not it.work_boxes:
                out.append(np.zeros((h, w), dtype=np.uint8))
                continue
            gh, gw = it.x.shape[1:]
            p = probs[j, : len(it.classes) + 1, : gh * self.cfg.label_scale, : gw * self.cfg.label_scale]
            j += 1
            if self.cfg.label_scale != stride:  # back to the (padded) working resolution, then crop
                p = F.interpolate(p[None], size=(gh * stride, gw * stride), mode="bilinear", align_corners=False)[0]
            p = p[:, : it.work_size[0], : it.work_size[1]]
            if (h, w) != it.work_size:
                p = F.interpolate(p[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            p = self.refine_probs(it.rgb, p)
            allowed = torch.from_numpy(allowed_classes(it.boxes, h, w, it.classes))
            k = p.masked_fill(~allowed, -1.0).argmax(0).numpy()
            lut = np.array([0, *[c + 1 for c in it.classes]], dtype=np.uint8)
            out.append(lut[k])
        return out

    def refine_probs(self, image: np.ndarray, probs: torch.Tensor) -> torch.Tensor:
        """A2GNN's last step: probabilities ``[C, H, W]`` refined on the image (``uint8 [H, W, 3]``)."""
        if self.cfg.refine == "crf":  # A2GNN's settings: Gaussian sxy 2 compat 3; bilateral sxy 50, srgb 5, compat 10
            q = crf_refine(image, probs.numpy(), 10, pos_xy_std=2, pos_weight=3, bi_xy_std=50, bi_rgb_std=5,
                           bi_weight=10)  # fmt: skip
            return torch.from_numpy(q)
        if self.cfg.refine == "par":
            t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None] / 255
            return par_refine(t, probs[None])[0]
        return probs

    def seeds(self, image: np.ndarray, boxes: Sequence[Box], cams: Mapping[int, np.ndarray] | None) -> np.ndarray:
        """Box seeds ``uint8 [H, W]`` of an image (:func:`weakseg.refine.a2gnn.box_seeds` with the config's
        thresholds); ``cams``: class → map at any size (resized to the image), or None for box-only seeds."""
        c = self.cfg
        h, w = image.shape[:2]
        if cams:
            cams = {k: _resize(v, h, w) for k, v in cams.items()}
        return box_seeds(
            boxes, image, cams or None, c.seed_fg_threshold, c.seed_core, c.colour_bins, c.seed_box_background
        )


def _resize(m: np.ndarray, h: int, w: int) -> np.ndarray:
    if m.shape == (h, w):
        return m
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
