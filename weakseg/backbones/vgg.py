"""VGG-16 "D1": the backbone of the MCIS reference (GuoleiSun/MCIS_wsss, ``Classifier/models/vgg.py``, cfg ``D1``).

torchvision's VGG-16 convolutions (``features.0`` … ``features.28``, so torchvision's ImageNet file
``vgg16-397923af.pth`` loads by name) with, at output stride 8 as in the reference: pool4 replaced by a
3×3 max pool with stride 1 and padding 1 (the reference's ``'N'``), conv5_1–conv5_3 dilated by 2, and
no pool5; features ``[B, 512, H/8, W/8]``. The reference's three 3×3 conv-512 + ReLU layers after conv5
(``extra_convs``, trained as new layers) are not part of the backbone: they are the classifier head
(``head_depth=3``, ``head_kernel=3``, ``head_channels=512`` in the ``paper`` preset of ``cam``/``mcis``).

Also offered: output stride 16 (plain 2×2 pool4, conv5 undilated, no pool5) and 32 (torchvision's
layers, pool5 included). Pools round up (``ceil_mode``), so a side not divisible by the stride gives
``ceil(H / stride)`` cells; for sides divisible by the stride it is the reference's network exactly.
Inputs are normalised with the ImageNet mean/std, as the reference's ``transforms.Normalize``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from weakseg.backbones.base import Backbone
from weakseg.engine.checkpoint import load_weights_file
from weakseg.errors import ConfigError

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
"""torchvision's / the reference's ``cfg['D']``: conv widths, ``M`` = 2×2 max pool"""
TORCHVISION_FILE = "vgg16-397923af.pth"
TORCHVISION_URL = f"https://download.pytorch.org/models/{TORCHVISION_FILE}"


def make_vgg16_features(output_stride: int = 8) -> tuple[nn.Sequential, list[list[int]]]:
    """VGG-16 convolutions at ``output_stride`` 8, 16 or 32, indexed as torchvision's ``vgg16().features``.

    Returns the module and, for each of the five conv blocks, the indices of its conv layers.
    """
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"vgg16-d1 supports output_stride 8, 16 or 32, not {output_stride}")
    layers: list[nn.Module] = []
    blocks: list[list[int]] = [[]]
    cin, pools = 3, 0
    for v in VGG16_CFG:
        if v == "M":
            pools += 1
            if pools == 4 and output_stride == 8:
                layers.append(nn.MaxPool2d(3, stride=1, padding=1))  # the reference's 'N': pool4 without stride
            elif pools < 5 or output_stride == 32:
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            blocks.append([])
            continue
        dilation = 2 if pools == 4 and output_stride == 8 else 1  # conv5 dilated where pool4 lost its stride
        blocks[-1].append(len(layers))
        layers += [nn.Conv2d(cin, int(v), 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
        cin = int(v)
    return nn.Sequential(*layers), [b for b in blocks if b]


def default_weights_path() -> Path:
    """Where torchvision keeps ``vgg16-397923af.pth`` once downloaded (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def load_vgg16_weights(features: nn.Sequential, path: str | Path) -> None:
    """Load the ``features.*`` tensors of a torchvision VGG-16 file into ``features`` (in place).

    ``path``: ``vgg16-397923af.pth`` (read with ``torch.load(..., weights_only=True)``) or a ``.safetensors``
    with the same keys; the file's ``classifier.*`` tensors are ignored.
    """
    state = load_weights_file(path)
    own = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    try:
        missing, unexpected = features.load_state_dict(own, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise ConfigError(f"{path} is not a torchvision VGG-16 weights file ({TORCHVISION_FILE}): {e}") from None
    if missing or unexpected:
        raise ConfigError(
            f"{path} is not a torchvision VGG-16 weights file ({TORCHVISION_FILE}): missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )


class VGG16D1Backbone(Backbone):
    """VGG-16 "D1" (see the module docstring): ``[B, 3, H, W]`` in ``[0, 1]`` → ``[B, 512, H/os, W/os]``.

    ``pretrained`` without ``weights`` reads torchvision's file from its cache; neither there nor given is an
    error naming the file. ``pretrained=False`` (tests) keeps PyTorch's default init.
    """

    out_channels = 512

    def __init__(self, weights: Path | None = None, output_stride: int = 8, pretrained: bool = True):
        super().__init__(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        self.output_stride = output_stride
        self.vgg, self.blocks = make_vgg16_features(output_stride)
        if weights is None and pretrained:
            weights = default_weights_path()
            if not weights.is_file():
                raise ConfigError(
                    f"vgg16-d1 needs torchvision's ImageNet VGG-16 weights, {TORCHVISION_FILE} ({TORCHVISION_URL}); "
                    f"give its path with --weights (not found in torchvision's cache {weights.parent})"
                )
        if weights is not None:
            load_vgg16_weights(self.vgg, weights)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vgg(x)

    def freeze_early(self, n: int) -> None:
        """Freeze the first ``n`` of the five conv blocks (n = 2: conv1 and conv2, everything before stride 4)."""
        if not 0 <= n <= len(self.blocks):
            raise ConfigError(f"frozen_stages must lie in [0, {len(self.blocks)}] for vgg16-d1, got {n}")
        for block in self.blocks[:n]:
            for i in block:
                for p in self.vgg[i].parameters():
                    p.requires_grad_(False)
