"""``timm:<name>``: any convolutional timm model, weights from a user file (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

from weakseg.backbones.base import Backbone
from weakseg.engine.checkpoint import load_weights_file
from weakseg.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_timm_weights(model: torch.nn.Module, path: Path, name: str) -> None:
    """Load a user weight file into a timm model built with ``num_classes=0``.

    The classifier tensors of the file (timm's ``pretrained_cfg['classifier']``) are dropped; any
    other missing/unexpected key or shape mismatch is an error naming the first offenders.
    """
    state = load_weights_file(path)
    classifier = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    heads = classifier if isinstance(classifier, (list, tuple)) else [classifier] if classifier else []
    target = model.state_dict()
    state = {k: v for k, v in state.items() if k in target or not any(k.startswith(f"{h}.") for h in heads)}
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    if missing or unexpected or wrong:
        raise ConfigError(
            f"weights {path} do not match timm model {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {wrong[:5]}; is the file for another architecture?"
        )
    model.load_state_dict(state, strict=True)


class TimmBackbone(Backbone):
    """A timm model's ``forward_features`` (``[B, C, H/os, W/os]``), normalised with its own mean/std."""

    def __init__(self, name: str, weights: Path | None = None, output_stride: int = 16, pretrained: bool = True):
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"timm has no model {name!r}; see timm.list_models() for the names")
        if pretrained and weights is None:
            raise ConfigError(
                f"backbone timm:{name} needs a weights file (--weights PATH, .safetensors or .pth); "
                "nothing is downloaded. Give pretrained=False for random weights."
            )
        kwargs = {} if output_stride == 32 else {"output_stride": output_stride}
        try:
            net = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        except (TypeError, AssertionError, ValueError) as e:  # timm models reject a stride in different ways
            raise ConfigError(
                f"timm model {name!r} does not support output_stride={output_stride} ({type(e).__name__}: {e}); "
                "use output stride 32, or a model family that dilates (e.g. timm:resnet101, timm:resnet50d); "
                "timm's VGG cannot remove its last pooling as the MCIS reference does"
            ) from None
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        super().__init__(mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)))
        self.net = net
        if weights is not None:
            load_timm_weights(net, Path(weights), name)
        with torch.no_grad():
            probe = net.eval().forward_features(torch.zeros(1, 3, 64, 64))
        net.train()
        if probe.ndim != 4:
            raise ConfigError(f"timm model {name!r} gives {probe.ndim}-D features; only convolutional models fit")
        self.out_channels = int(probe.shape[1])
        self.output_stride = output_stride

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)
