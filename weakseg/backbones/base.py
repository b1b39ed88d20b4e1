"""The backbone contract: float RGB images in ``[0, 1]`` in, a feature map out."""

from __future__ import annotations

import torch
from torch import nn

from weakseg.errors import ConfigError


class Backbone(nn.Module):
    """A feature extractor that normalises its own input.

    ``forward(x)`` takes ``float [B, 3, H, W]`` RGB in ``[0, 1]`` and returns
    ``float [B, out_channels, ceil(H / output_stride), ceil(W / output_stride)]``.
    Subclasses set ``out_channels``/``output_stride`` and implement :meth:`features` on the normalised input.
    """

    out_channels: int
    output_stride: int

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]):
        super().__init__()
        # non-persistent: the normalisation is part of the architecture, not of the weights file
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def freeze_early(self, n: int) -> None:
        """Keep the stem and the first ``n`` stages at their initial weights (no gradients: no backward pass
        through them either). Backbones that support it override this; ``n = 0`` is always allowed."""
        if n:
            raise ConfigError(f"backbone {type(self).__name__} cannot freeze early stages; set frozen_stages to 0")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)
