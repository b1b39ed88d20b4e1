"""Plain CAM classifier (Zhou et al., CVPR 2016) in the form MCIS builds on: the ``cam`` method.

Network (MCIS reference, ``Classifier/models/vgg.py``): backbone → head (``head_depth`` ×
[``head_kernel``² conv to ``head_channels``, ReLU]; the paper: three 3×3 conv-512) → 1×1 conv to
``K`` classes (with bias) → global average pooling → multi-label soft-margin loss. CAMs are the
1×1-conv maps, ReLU'd and normalised per class by their maximum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.backbones import Backbone
from weakseg.cams.cam import View, apply_view, average_normalized, fuse_views, normalize_cams
from weakseg.data.dataset import SegDataset
from weakseg.data.recipes import image_batches
from weakseg.data.transforms import Jitter, to_tensor
from weakseg.errors import ConfigError
from weakseg.losses import multilabel_loss
from weakseg.methods.base import CamPredictor, LoaderContext, LoaderFactory, Method, register_method


@dataclass(frozen=True)
class CamConfig:
    """Hyper-parameters of a CAM classifier. Defaults are the MCIS reference's training recipe.

    The reference (MCIS, ECCV 2020, official ``Classifier/`` code) trains VGG-16 "D1" (stride 8,
    ``models/vgg.py``; ``train-cls --backbone vgg16-d1``) + three 3×3 conv-512 for 15 epochs, batch 5, inputs
    resized to 256×256, lr ×0.1 at epochs 5 and 10 (``train.sh``), SGD lr 1e-3 (×1/×2 backbone
    weights/biases, ×10/×20 new layers), momentum 0.9 Nesterov, weight decay 5e-4, no gradient clip
    (``scripts/train.py``). Those values are the defaults here. Not the reference's: the classifier's init
    (std 0.01 here, He fan-out there), ``freeze_bn`` (VGG has no BatchNorm) and ``frozen_stages`` (none
    there). ``snapshots`` is empty by default; the ``paper`` preset keeps epoch 11, the weights ``test.sh``
    makes its CAMs from. The presets change the rest for CPU budgets and tests.
    """

    input_size: int = 256
    """side (px) of the square training input: every image is resized to it"""
    output_stride: int = 8
    """backbone output stride (8, 16 or 32): the CAM grid is input_size / output_stride cells"""
    head_channels: int = 512
    """channels of each head conv layer"""
    head_depth: int = 3
    """conv layers between the backbone and the 1×1 classifier"""
    head_kernel: int = 3
    """kernel size of the head convs"""
    epochs: int = 15
    batch_size: int = 5
    """items per optimiser step (images for CAM, pairs for MCIS), over all torchrun processes together"""
    lr: float = 1e-3
    """base learning rate (SGD)"""
    lr_mult: tuple[float, float, float, float] = (1.0, 2.0, 10.0, 20.0)
    """lr multipliers of: backbone weights, backbone biases, new-layer weights, new-layer biases"""
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_milestones: tuple[int, ...] = (5, 10)
    """epochs at which the lr is multiplied by ``lr_gamma``"""
    lr_gamma: float = 0.1
    jitter: Jitter = field(default_factory=Jitter)
    """colour jitter of training images"""
    freeze_bn: bool = True
    """keep the backbone's BatchNorm statistics fixed (batches of 5 pairs are too small to estimate them)"""
    frozen_stages: int = 0
    """backbone stem + this many early stages kept at their ImageNet weights (as Detectron2's FREEZE_AT): their
    backward pass is skipped (cheaper steps)"""
    grad_clip: float = 0.0
    """clip the total gradient norm to this (0 = off, as the reference); the norm is logged as train/grad_norm"""
    snapshots: tuple[int, ...] = ()
    """epochs (1-based: after that many finished epochs) whose weights are also kept as cls/epoch_<n>.safetensors,
    for make-cams --epoch N"""

    def check(self) -> None:
        if self.input_size < 16 or self.output_stride not in (8, 16, 32):
            raise ConfigError(f"input_size {self.input_size} / output_stride {self.output_stride} not supported")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be at least 1")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if self.frozen_stages < 0:
            raise ConfigError(f"frozen_stages must be >= 0, got {self.frozen_stages}")
        if any(e < 1 for e in self.snapshots):
            raise ConfigError(f"snapshots are epochs counted from 1, got {self.snapshots}")


# CPU: small input, stride 16, a 1×1 head, 4 epochs at a constant lr, the gradient norm clipped at 20 (an
# unclipped MCIS run diverged once at 2,000 images). Measurements: docs/methods/mcis.md.
_CPU = CamConfig(
    input_size=128,
    output_stride=16,
    head_channels=256,
    head_depth=1,
    head_kernel=1,
    epochs=4,
    batch_size=8,
    lr_milestones=(),
    grad_clip=20.0,
)

PRESETS: dict[str, CamConfig] = {
    # the reference's training recipe (a GPU job, for --backbone vgg16-d1) + the snapshot its test.sh uses:
    # pascal_voc_epoch_10.pth is written after its 0-based epoch 10, i.e. after 11 epochs
    "paper": CamConfig(snapshots=(11,)),
    "cpu": _CPU,
    # what `weakseg run`/`demo` use: the cpu preset at input 192 with the stem and the stride-2/4 stages frozen
    # (the small synthetic images upsampled: at stride 16 a 128-px input gives an 8x8 CAM)
    "cpu192": dataclasses.replace(_CPU, input_size=192, frozen_stages=2),
    # seconds: for tests with the tiny backbone
    "tiny": CamConfig(
        input_size=64,
        output_stride=8,
        head_channels=32,
        head_depth=1,
        head_kernel=3,
        epochs=2,
        batch_size=4,
        lr=1e-2,
        lr_milestones=(),
    ),
}


def make_head(in_channels: int, hp: CamConfig) -> tuple[nn.Module, int]:
    """``head_depth`` × (conv ``head_kernel`` → ``head_channels``, ReLU); returns (module, out channels)."""
    layers: list[nn.Module] = []
    c = in_channels
    for _ in range(hp.head_depth):
        layers += [nn.Conv2d(c, hp.head_channels, hp.head_kernel, padding=hp.head_kernel // 2), nn.ReLU(inplace=True)]
        c = hp.head_channels
    return nn.Sequential(*layers), c


class CamNet(nn.Module):
    """Backbone + head + 1×1 classifier. ``forward(images [B,3,S,S]) -> {"logits": [B, K]}``."""

    new_prefixes: tuple[str, ...] = ("head.", "classifier.")

    def __init__(self, backbone: Backbone, num_classes: int, hp: CamConfig):
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

    def parameter_groups(self, hp: CamConfig) -> list[dict]:
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


class CamImagePredictor(CamPredictor):
    """CAMs of one image at a time from its own multi-scale + flip views."""

    def __init__(self, net: CamNet, ds: SegDataset, views: Sequence[View], input_size: int, device: torch.device):
        self.net, self.ds, self.views, self.input_size, self.device = net, ds, list(views), input_size, device

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as ``float [1, 3, H, W]`` on the device."""
        return to_tensor(self.ds.load_image(i))[None].to(self.device)

    def __call__(self, i: int, classes: Sequence[int]) -> torch.Tensor:
        image = self.image(i)
        return self.net.predict_cams(image, classes, self.views, self.input_size, tuple(image.shape[-2:]))


@register_method
class CamMethod(Method):
    """Plain CAM: the classifier trained on single images with the multi-label soft-margin loss."""

    name = "cam"
    task = "tags"
    description = "plain CAM classifier (baseline)"
    paper = (
        "Zhou, Khosla, Lapedriza, Oliva, Torralba: Learning Deep Features for Discriminative Localization, CVPR 2016"
    )
    Config = CamConfig
    presets = PRESETS

    def build(self, backbone: Backbone, num_classes: int) -> CamNet:
        return CamNet(backbone, num_classes, self.cfg)

    def loader(self, ds: SegDataset, ctx: LoaderContext) -> LoaderFactory:
        c = self.cfg
        return image_batches(
            ds, input_size=c.input_size, jitter=c.jitter, batch_size=c.batch_size, seed=ctx.seed, rank=ctx.rank,
            world=ctx.world, workers=ctx.workers,
        )  # fmt: skip

    def step(self, net: nn.Module, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        return {"loss": multilabel_loss(net(batch["image"])["logits"], batch["label"])}

    def cam_predictor(
        self, net: nn.Module, ds: SegDataset, views: Sequence[View], device: torch.device, seed: int
    ) -> CamImagePredictor:
        return CamImagePredictor(net, ds, views, self.cfg.input_size, device)  # type: ignore[arg-type]
