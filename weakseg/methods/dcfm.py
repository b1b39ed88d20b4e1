"""DCFM: co-salient object detection by democratic prototype generation and feature enhancement.

Paper: Siyue Yu, Jimin Xiao, Bingfeng Zhang, Eng Gee Lim, "Democracy Does Matter: Comprehensive Feature
Mining for Co-Salient Object Detection", CVPR 2022 (arXiv 2203.05787). Written from the paper and
``shared/method-notes/fewshot-semi-cosal-vos.md`` §3; no code of the official repository is copied.

Input: a *group* of ``N`` images that share one salient object (:mod:`weakseg.data.groups`). Per group:

1. backbone features at stride ``output_stride``, projected to ``channels`` (1×1 conv + ReLU);
2. **democratic prototype generation** (:func:`weakseg.cams.democratic.democratic_prototype`): every image
   votes for every position of the group; each image's most-voted position is its seed; the seeds' mean
   cosine gives a response map ``R`` per image and the group prototype ``P``; features ``f ⊙ P + f ⊙ R``;
3. **democratic feature enhancement**: per-image self-attention with rank-amplified weights
   (:func:`weakseg.cams.democratic.rank_attention`), plus a residual;
4. a decoder to one saliency logit map per image (a coarse map at the feature stride and a fine one after
   fusing a shallow stride-4 image branch; both deeply supervised);
5. **self-contrastive loss** (training only, :func:`weakseg.losses.cosal.self_contrastive_loss`): DPG re-run
   on foreground-only and background-only features (``f ⊙ G``, ``f ⊙ (1 − G)``, ``G`` the ground truth at the
   feature grid) gives ``P⁺`` and ``P⁻``; ``P`` should match ``P⁺`` and not ``P⁻``.

Loss: Σ over the two maps of the foreground + background soft-IoU loss (+ ``bce_weight`` · BCE, not in the
paper), + ``scl_weight`` · L_scl.

Registered methods (task ``co-saliency``):

- ``dcfm``: all of the above;
- ``single-saliency``: the same network without steps 2 and 5 (each image alone: no group interaction);
  the single-image saliency baseline.

Supervision: the training groups' co-saliency masks (as the paper: CoCo-SEG masks); at test time only the
group membership. Differences from the paper: any registry backbone (EfficientNet-Lite0 by default) with a
``channels``-wide projection instead of VGG-16's 512-channel conv5; the decoder fuses one shallow image branch
instead of an FPN over the four VGG stages (the registry backbones give one feature map); two deep-supervision
maps instead of four; the response map's ReLU is applied at test time only, as the official code does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.backbones import Backbone
from weakseg.cams.democratic import democratic_prototype, rank_attention
from weakseg.data.dataset import SegDataset
from weakseg.data.groups import GroupLabels, group_batches
from weakseg.data.transforms import Jitter
from weakseg.errors import ConfigError
from weakseg.losses.cosal import fg_bg_iou_loss, self_contrastive_loss
from weakseg.methods.base import LoaderContext, LoaderFactory, Method, register_method


@dataclass(frozen=True)
class DCFMConfig:
    """Every knob of DCFM and of its single-image baseline."""

    input_size: int = 128
    """side (px) of the square input of every group member"""
    output_stride: int = 16
    """backbone output stride (the grid DPG votes on: input_size / output_stride per side)"""
    channels: int = 128
    """width of the projected backbone features DPG and DFE work on (DCFM: VGG conv5, 512)"""
    group_size: int = 5
    """images per training group (DCFM: up to 16)"""
    eval_group_size: int = 8
    """images per evaluation group (DCFM: the whole group)"""
    groups_per_epoch: int = 0
    """training groups per epoch; 0 = one per labelled image (every image is an anchor once)"""
    epochs: int = 4
    lr: float = 5e-4
    """Adam learning rate of the new layers"""
    backbone_lr: float = 5e-5
    """Adam learning rate of the backbone"""
    weight_decay: float = 1e-4
    frozen_stages: int = 2
    """backbone stages kept at their initial weights (DCFM freezes all of VGG but conv5_3)"""
    scl_weight: float = 0.1
    """weight of the self-contrastive loss"""
    bce_weight: float = 1.0
    """weight of a binary cross-entropy on each map, added to the soft-IoU losses (DCFM: 0, IoU only; without
    it short CPU runs collapse to all-background maps)"""
    dfe_power: float = 3.0
    """exponent of the rank weights of the feature enhancement (DCFM: 3)"""
    dfe_renormalise: bool = True
    """divide each row of the rank-weighted attention by its sum (DCFM: no; its weights sum to thousands)"""
    grad_clip: float = 5.0
    """gradient-norm clip (0 = none); the rank weights can make early gradients large"""
    jitter: Jitter = field(default_factory=Jitter)
    """colour jitter of training images (plus a random horizontal flip)"""

    def check(self) -> None:
        if self.input_size % self.output_stride:
            raise ConfigError(f"input_size {self.input_size} must be a multiple of output_stride {self.output_stride}")
        if self.group_size < 1 or self.eval_group_size < 1:
            raise ConfigError("group_size and eval_group_size must be at least 1")
        if self.groups_per_epoch < 0:
            raise ConfigError(f"groups_per_epoch must be >= 0, got {self.groups_per_epoch}")


PAPER = DCFMConfig(input_size=224, group_size=16, eval_group_size=64, channels=512, epochs=200, lr=1e-4,
                   backbone_lr=1e-5, frozen_stages=6, grad_clip=0.0, dfe_renormalise=False,
                   bce_weight=0.0)  # fmt: skip
"""DCFM's recipe: 224 px, ≤ 16 images per group, 200 epochs, Adam 1e-4 (backbone 1e-5), wd 1e-4"""

PRESETS: dict[str, DCFMConfig] = {
    "paper": PAPER,
    # minutes on 2 CPU cores: 128 px, groups of 5, EfficientNet-Lite0 at stride 16 (8×8 grid)
    "cpu": DCFMConfig(),
    "tiny": DCFMConfig(input_size=32, output_stride=8, channels=16, group_size=3, eval_group_size=3,
                       groups_per_epoch=2, epochs=1, frozen_stages=0),
}  # fmt: skip


def _conv(cin: int, cout: int, k: int = 1, relu: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DemocraticPrototype(nn.Module):
    """DPG: ``feat [N, C, h, w]`` → ``(features + conv(features), prototype [C], response [N, 1, h, w])``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = feat + self.conv(feat)
        proto, response, _ = democratic_prototype(x, self.query(x), self.key(x), relu=not self.training)
        return x, proto, response


class FeatureEnhancement(nn.Module):
    """DFE: ``x = ReLU(conv(X))``; ``x + rank_attention(Q(x), K(x), V(x))`` per image."""

    def __init__(self, channels: int, power: float, renormalise: bool):
        super().__init__()
        self.power, self.renormalise = power, renormalise
        self.inp = _conv(channels, channels, relu=True)
        self.query = nn.Sequential(_conv(channels, channels), _conv(channels, channels))
        self.key = nn.Sequential(_conv(channels, channels), _conv(channels, channels))
        self.value = nn.Sequential(_conv(channels, channels), _conv(channels, channels))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        x = self.inp(feat)
        return x + rank_attention(self.query(x), self.key(x), self.value(x), self.power, self.renormalise)


class DCFMNet(nn.Module):
    """Backbone → projection → [DPG] → DFE → decoder; ``group=False`` is the single-image baseline."""

    def __init__(self, backbone: Backbone, cfg: DCFMConfig, group: bool = True):
        super().__init__()
        c = cfg.channels
        self.backbone, self.group = backbone, group
        self.reduce = _conv(backbone.out_channels, c, relu=True)
        self.dpg = DemocraticPrototype(c) if group else None
        self.dfe = FeatureEnhancement(c, cfg.dfe_power, cfg.dfe_renormalise)
        self.top = nn.Sequential(_conv(c, 64, relu=True), _conv(64, 64))
        self.coarse = nn.Sequential(_conv(64, 64, 3, relu=True), _conv(64, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(inplace=True), nn.Conv2d(16, 32, 3, 2, 1),
                                  nn.ReLU(inplace=True))  # fmt: skip
        self.lateral = nn.Sequential(_conv(32, 64, 3, relu=True), _conv(64, 64, 3))
        self.fine = nn.Sequential(_conv(64, 64, 3, relu=True), _conv(64, 64, 3, relu=True), _conv(64, 1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Projected backbone features ``[N, channels, S/os, S/os]``."""
        return self.reduce(self.backbone(x))

    def forward(self, x: torch.Tensor, gt: torch.Tensor | None = None) -> dict[str, Any]:
        """``x [N, 3, S, S]`` (one group) → ``{"logits": [coarse, fine] each [N, 1, S, S]}``; in training with
        ``gt [N, 1, S, S]`` and group interaction, also the prototypes ``proto``, ``proto_fg``, ``proto_bg`` [C]."""
        feat = self.encode(x)
        out: dict[str, Any] = {}
        if self.dpg is not None:
            x5, proto, response = self.dpg(feat)
            enhanced = x5 * proto[None, :, None, None] + x5 * response
            out.update(proto=proto, response=response)
            if gt is not None and self.training:
                g = F.interpolate(gt, size=feat.shape[-2:], mode="bilinear", align_corners=False)
                out["proto_fg"] = self.dpg(feat * g)[1]
                out["proto_bg"] = self.dpg(feat * (1 - g))[1]
        else:
            enhanced = feat
        p = self.top(self.dfe(enhanced))
        size = x.shape[-2:]
        coarse = self.coarse(p)
        skip = self.lateral(self.stem(x))
        fine = self.fine(F.interpolate(p, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip)
        out["logits"] = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in (coarse, fine)]
        return out

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters that train, every other parameter)."""
        bb = [p for p in self.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in self.backbone.parameters()}
        return bb, [p for p in self.parameters() if id(p) not in ids]


class CoSaliencyMethod(Method):
    """DCFM and its single-image baseline (``group``); hooks used by ``train-cosal`` / ``eval-cosal``."""

    task = "co-saliency"
    paper = "Yu et al., CVPR 2022"
    Config = DCFMConfig
    presets = PRESETS
    group: ClassVar[bool] = True

    def build(self, backbone: Backbone, num_classes: int = 1) -> DCFMNet:
        """The network on ``backbone`` (``num_classes`` is unused: the output is one saliency map)."""
        if self.cfg.frozen_stages:
            backbone.freeze_early(self.cfg.frozen_stages)
        return DCFMNet(backbone, self.cfg, group=self.group)

    def optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        c = self.cfg
        bb, head = net.param_groups()  # type: ignore[operator]
        groups = [{"params": head, "lr": c.lr}] + ([{"params": bb, "lr": c.backbone_lr}] if bb else [])
        return torch.optim.Adam(groups, lr=c.lr, betas=(0.9, 0.99), weight_decay=c.weight_decay)

    def lr_factor(self, steps_per_epoch: int) -> Callable[[int], float]:
        return lambda step: 1.0  # constant, as DCFM

    def loader(self, ds: SegDataset, ctx: LoaderContext) -> LoaderFactory:
        raise ConfigError(f"method {self.name!r} trains on groups: its stage calls group_loader(ds, groups, ctx)")

    def group_loader(self, ds: SegDataset, gl: GroupLabels, ctx: LoaderContext) -> LoaderFactory:
        """One training group per step (:func:`weakseg.data.groups.group_batches`)."""
        c = self.cfg
        return group_batches(ds, gl, input_size=c.input_size, group_size=c.group_size, jitter=c.jitter,
                             seed=ctx.seed, max_groups=c.groups_per_epoch or None, rank=ctx.rank, world=ctx.world,
                             workers=ctx.workers)  # fmt: skip

    def step(self, net: nn.Module, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        gt, valid = batch["gt"], batch["valid"]
        out = net(batch["image"], gt)
        maps = sum(fg_bg_iou_loss(m, gt, valid) for m in out["logits"])
        if self.cfg.bce_weight > 0:
            bce = sum(F.binary_cross_entropy_with_logits(m, gt, valid) for m in out["logits"])
            maps = maps + self.cfg.bce_weight * bce
        losses = {"maps": maps.detach()}
        loss = maps
        if "proto_fg" in out and self.cfg.scl_weight > 0:
            scl = self_contrastive_loss(out["proto"], out["proto_fg"], out["proto_bg"])
            loss = loss + self.cfg.scl_weight * scl
            losses["scl"] = scl.detach()
        losses["loss"] = loss
        return losses

    @torch.no_grad()
    def predict_group(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Saliency ``[N, 1, S, S]`` in [0, 1] of one group ``images [N, 3, S, S]`` (the fine map)."""
        net.eval()
        return torch.sigmoid(net(images)["logits"][-1])


@register_method
class DCFMMethod(CoSaliencyMethod):
    name = "dcfm"
    description = "DCFM: democratic prototype + feature enhancement + self-contrastive loss (co-saliency)"
    group = True


@register_method
class SingleSaliencyMethod(CoSaliencyMethod):
    name = "single-saliency"
    description = "DCFM's network without group interaction (single-image saliency baseline)"
    paper = ""
    group = False
