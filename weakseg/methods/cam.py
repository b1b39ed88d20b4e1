"""Plain CAM classifier (Zhou et al., CVPR 2016) in the form MCIS builds on, and the shared hyper-parameters.

Network (MCIS reference, ``Classifier/models/vgg.py``): backbone → head (``head_depth`` ×
[``head_kernel``² conv to ``head_channels``, ReLU]; the paper: three 3×3 conv-512) → 1×1 conv to
``K`` classes (with bias) → global average pooling → multi-label soft-margin loss. CAMs are the
1×1-conv maps, ReLU'd and normalised per class by their maximum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.backbones import Backbone
from weakseg.cams.cam import View, apply_view, average_normalized, fuse_views, normalize_cams
from weakseg.data.transforms import Jitter
from weakseg.errors import ConfigError, unknown_name


@dataclass(frozen=True)
class ClsHParams:
    """Classifier hyper-parameters. Defaults are the paper's (MCIS, ECCV 2020, official ``Classifier/`` code).

    The reference trains VGG-16 (stride 8) + three 3×3 conv-512 for 15 epochs, batch 5 pairs,
    inputs resized to 256×256, SGD lr 1e-3 (×1/×2 backbone weights/biases, ×10/×20 new layers),
    momentum 0.9 Nesterov, weight decay 5e-4, lr ×0.1 at epochs 5 and 10.
    """

    input_size: int = 256
    """side of the square training input (the reference resizes every image to 256×256)"""
    output_stride: int = 8
    head_channels: int = 512
    head_depth: int = 3
    head_kernel: int = 3
    epochs: int = 15
    batch_size: int = 5
    """pairs per step for MCIS, images per step for plain CAM"""
    lr: float = 1e-3
    lr_mult: tuple[float, float, float, float] = (1.0, 2.0, 10.0, 20.0)
    """lr multipliers of: backbone weights, backbone biases, new-layer weights, new-layer biases"""
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_milestones: tuple[int, ...] = (5, 10)
    """epochs at which the lr is multiplied by ``lr_gamma``"""
    lr_gamma: float = 0.1
    contrastive_from_epoch: int = 2
    """0-based epoch from which the contrastive co-attention loss is added (the reference: 2)"""
    self_pairs: tuple[tuple[float, bool], ...] = ((1.0, True), (0.75, False), (2.0, False))
    """self-pair copies of the anchor as (scale, flip): flipped, 0.75× and 2× (the reference)"""
    jitter: Jitter = field(default_factory=Jitter)
    freeze_bn: bool = True
    """keep the backbone's BatchNorm statistics fixed (batches of 5 pairs are too small to estimate them)"""
    frozen_stages: int = 0
    """backbone stem + this many early stages kept at their ImageNet weights (as Detectron2's FREEZE_AT): their
    backward pass is skipped. EfficientNet-Lite0 at 192 px, one thread: 2 stages frozen → step time -21 %"""
    grad_clip: float = 0.0
    """clip the total gradient norm to this (0 = off, as the reference); the norm is logged as train/grad_norm"""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClsHParams:
        d = dict(d)
        d["jitter"] = Jitter(**d.get("jitter", {}))
        d["self_pairs"] = tuple((float(s), bool(f)) for s, f in d.get("self_pairs", ()))
        for k in ("lr_mult", "lr_milestones"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# CPU: small input, stride 16, a 1×1 head, one self-pair copy (the flip; the 2× copy alone costs
# 4 anchors), 4 epochs at a constant lr. Measured on 2 shared cores (1 torch thread), 2,000 images
# of 128-160 px: ~2 min/epoch for cam, ~6-7 min/epoch for mcis (anchor + partner + flip copy);
# 600 images (the demo's small set): ~30 s/epoch for cam, ~100 s/epoch for mcis.
# Gradient-norm clip at 20: at 2,000 images an unclipped MCIS run diverged at step 981 of 1,000 (every
# loss jumped at once and never recovered); the logged norms of healthy steps were 2.5-17.
_CPU = ClsHParams(
    input_size=128,
    output_stride=16,
    head_channels=256,
    head_depth=1,
    head_kernel=1,
    epochs=4,
    batch_size=8,
    lr_milestones=(),
    contrastive_from_epoch=1,
    self_pairs=((1.0, True),),
    grad_clip=20.0,
)


PRESETS: dict[str, ClsHParams] = {
    # the paper's recipe (a GPU job)
    "paper": ClsHParams(),
    "cpu": _CPU,
    # what `weakseg run`/`demo` use: the cpu preset at input 192, without the self-pair copy, the stem and the
    # stride-2/4 stages frozen. On the demo's 600 images of 112-128 px (one torch thread, seed 0, CAMs at
    # 1/0.5/1.5/2 + flip; seed mIoU on train): cpu (128, flip copy) 41.5, 160 + flip copy 47.0, 160 45.7,
    # 192 50.9, 192 + 2 frozen stages 50.6. Upsampling the small images is what helps: at stride 16 a 128-px
    # input gives an 8x8 CAM.
    "cpu192": dataclasses.replace(_CPU, input_size=192, self_pairs=(), frozen_stages=2),
    # seconds: for tests with the tiny backbone
    "tiny": ClsHParams(
        input_size=64,
        output_stride=8,
        head_channels=32,
        head_depth=1,
        head_kernel=3,
        epochs=2,
        batch_size=4,
        lr=1e-2,
        lr_milestones=(),
        contrastive_from_epoch=1,
        self_pairs=((1.0, True), (0.75, False)),
    ),
}


def get_preset(name: str) -> ClsHParams:
    if name not in PRESETS:
        raise unknown_name("preset", name, PRESETS)
    return PRESETS[name]


def make_head(in_channels: int, hp: ClsHParams) -> tuple[nn.Module, int]:
    """``head_depth`` × (conv ``head_kernel`` → ``head_channels``, ReLU); returns (module, out channels)."""
    layers: list[nn.Module] = []
    c = in_channels
    for _ in range(hp.head_depth):
        layers += [nn.Conv2d(c, hp.head_channels, hp.head_kernel, padding=hp.head_kernel // 2), nn.ReLU(inplace=True)]
        c = hp.head_channels
    return nn.Sequential(*layers), c


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss (mean over classes and rows), as in the reference."""
    return F.multilabel_soft_margin_loss(logits, targets)


class CamNet(nn.Module):
    """Backbone + head + 1×1 classifier. ``forward(images [B,3,S,S]) -> {"logits": [B, K]}``."""

    new_prefixes: tuple[str, ...] = ("head.", "classifier.")

    def __init__(self, backbone: Backbone, num_classes: int, hp: ClsHParams):
        super().__init__()
        self.backbone = backbone
        self.head, self.dim = make_head(backbone.out_channels, hp)
        self.classifier = nn.Conv2d(self.dim, num_classes, 1)
        self.num_classes = num_classes
        self.freeze_bn = hp.freeze_bn
        backbone.freeze_early(hp.frozen_stages)
        # He init keeps the head's activations at the backbone's scale; a small classifier init starts
        # the logits near 0 (with fan-out He init they start at std ~10 and the first steps kill units)
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def train(self, mode: bool = True) -> CamNet:
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` in ``[0, 1]`` → head features ``[B, D, S/os, S/os]``."""
        return self.head(self.backbone(images))

    def cam_maps(self, feats: torch.Tensor) -> torch.Tensor:
        """Raw class maps ``[B, K, h, w]`` (the classifier applied at every position)."""
        return self.classifier(feats)

    def logits_of(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, K]`` = GAP of :meth:`cam_maps` (pooled first: the classifier is linear)."""
        return F.linear(feats.mean((2, 3)), self.classifier.weight.flatten(1), self.classifier.bias)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.logits_of(self.features(images))}

    def parameter_groups(self, hp: ClsHParams) -> list[dict]:
        """SGD groups: backbone weights/biases and new-layer weights/biases at ``hp.lr × hp.lr_mult``."""
        groups: list[list[nn.Parameter]] = [[], [], [], []]
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            new = not name.startswith("backbone.")
            groups[2 * new + name.endswith("bias")].append(p)
        return [{"params": ps, "lr": hp.lr * mult} for ps, mult in zip(groups, hp.lr_mult, strict=True) if ps]

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def view_features(self, image: torch.Tensor, views: Sequence[View], input_size: int) -> dict[float, torch.Tensor]:
        """Head features of ``image`` ``[1, 3, H, W]`` under each view, by scale: ``{s: [n_views_s, D, h_s, w_s]}``."""
        return {
            scale: self.features(torch.cat([apply_view(image, v, input_size) for v in group]))
            for scale, group in _views_by_scale(views).items()
        }

    @torch.no_grad()
    def predict_cams(
        self,
        image: torch.Tensor,
        classes: Sequence[int],
        views: Sequence[View],
        input_size: int,
        out_size: tuple[int, int],
        anchor_feats: dict[float, torch.Tensor] | None = None,
        **_: Any,
    ) -> torch.Tensor:
        """Multi-scale + flip CAMs of one image for ``classes``: ``[1, 3, H, W]`` → ``[K', *out_size]`` in [0, 1].

        ``anchor_feats``: the image's :meth:`view_features`, when already computed.
        """
        maps, flips = [], []
        feats = anchor_feats if anchor_feats is not None else self.view_features(image, views, input_size)
        for scale, group in _views_by_scale(views).items():
            cams = self.cam_maps(feats[scale])[:, list(classes)]
            maps += list(cams)
            flips += [v.flip for v in group]
        fused = fuse_views(maps, flips, (input_size, input_size))
        return finish_cams([fused], out_size)


def _views_by_scale(views: Sequence[View]) -> dict[float, list[View]]:
    """Views grouped by scale (same input size → one backbone call)."""
    out: dict[float, list[View]] = {}
    for v in views:
        out.setdefault(v.scale, []).append(v)
    return out


def finish_cams(components: Sequence[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
    """Average the normalised components, resize to the image size, normalise: ``[K', *out_size]`` in [0, 1]."""
    fused = average_normalized(components)
    if fused.shape[0] == 0:
        return fused.new_zeros((0, *out_size))
    fused = F.interpolate(fused[None], out_size, mode="bilinear", align_corners=False)[0]
    return normalize_cams(fused).clamp_(0, 1)


def check_hparams(hp: ClsHParams) -> None:
    if hp.input_size < 16 or hp.output_stride not in (8, 16, 32):
        raise ConfigError(f"input_size {hp.input_size} / output_stride {hp.output_stride} not supported")
    if hp.epochs < 1 or hp.batch_size < 1:
        raise ConfigError("epochs and batch_size must be at least 1")
    if hp.grad_clip < 0:
        raise ConfigError(f"grad_clip must be >= 0 (0 = off), got {hp.grad_clip}")
    if hp.frozen_stages < 0:
        raise ConfigError(f"frozen_stages must be >= 0, got {hp.frozen_stages}")
