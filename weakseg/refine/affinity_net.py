"""AffinityNet: a backbone and a 1x1 head whose features give semantic pixel affinities.

Ahn & Kwak, "Learning Pixel-level Semantic Affinity with Image-level Supervision for Weakly
Supervised Semantic Segmentation", CVPR 2018 (PSA). PSA's head reduces three backbone stages to
448 channels with 1x1 convolutions and an ELU; here one 1x1 convolution (+ ELU) maps the last
feature map of any registered backbone (``weakseg.backbones``; output stride 8 like PSA where the
backbone supports it) to ``dim`` channels. The affinity of two cells is
``exp(-mean |f_i - f_j|)`` (:func:`weakseg.refine.affinity.pair_affinity`).

A trained network lives in a ``train-aff`` folder (:mod:`weakseg.refine.train_affinity`):
``config.json`` (``backbone``, ``output_stride``, ``dim``, ``radius`` and the training config)
and ``model.safetensors``; :func:`load_affinity_net` rebuilds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.backbones import Backbone, create_backbone
from weakseg.engine.artifacts import load_json
from weakseg.engine.checkpoint import load_model
from weakseg.errors import ConfigError

CONFIG = "config.json"
MODEL = "model.safetensors"


class AffinityNet(nn.Module):
    """``forward(x)``: images ``float [B, 3, H, W]`` in ``[0, 1]`` → features ``[B, dim, H/os, W/os]``."""

    def __init__(self, backbone: Backbone, dim: int = 64):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.out_channels, dim, 1)
        self.dim = dim

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.head(self.backbone(x)))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(pretrained backbone, new head) parameters, for per-group learning rates."""
        return list(self.backbone.parameters()), list(self.head.parameters())


def build_affinity_net(
    backbone: str, output_stride: int, dim: int, weights: Path | None = None, pretrained: bool = True
) -> AffinityNet:
    return AffinityNet(create_backbone(backbone, weights, output_stride, pretrained), dim)


def load_affinity_net(folder: str | Path, device: torch.device | str = "cpu") -> tuple[AffinityNet, dict[str, Any]]:
    """Rebuild a trained AffinityNet (eval mode) from a train-aff folder; returns it and its ``config.json``."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / MODEL).is_file():
        raise ConfigError(f"{folder} holds no trained AffinityNet (config.json + model.safetensors); run train-aff")
    meta = load_json(folder / CONFIG)
    net = build_affinity_net(meta["backbone"], int(meta["output_stride"]), int(meta["dim"]), pretrained=False)
    load_model(folder / MODEL, net)
    return net.to(device).eval(), meta


def resize_to_max_side(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """Shrink ``float [3, H, W]`` (antialiased) so that its longer side is at most ``max_side``."""
    h, w = image.shape[-2:]
    if max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


@torch.inference_mode()
def affinity_features(net: AffinityNet, image: torch.Tensor) -> torch.Tensor:
    """Features ``[dim, ceil(H/os), ceil(W/os)]`` of one image ``float [3, H, W]`` in ``[0, 1]``."""
    device = next(net.parameters()).device
    return net(image[None].to(device))[0].float().cpu()
