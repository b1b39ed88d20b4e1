"""``tiny``: a random four-layer conv net for tests (seconds on CPU, no weights file)."""

from __future__ import annotations

import torch
from torch import nn

from weakseg.backbones.base import Backbone
from weakseg.errors import ConfigError


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBackbone(Backbone):
    """Stride 8 or 16, ``out_channels`` 32; ImageNet-style normalisation."""

    def __init__(self, output_stride: int = 16, width: int = 16):
        super().__init__(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        if output_stride not in (8, 16):
            raise ConfigError(f"tiny backbone supports output_stride 8 or 16, not {output_stride}")
        self.output_stride = output_stride
        self.out_channels = 2 * width
        self.body = nn.Sequential(
            _block(3, width, 2),
            _block(width, width, 2),
            _block(width, 2 * width, 2),
            _block(2 * width, 2 * width, 2 if output_stride == 16 else 1),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
