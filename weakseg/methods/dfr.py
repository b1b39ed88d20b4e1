"""DFR: dynamic feature regularized loss for scribble-supervised semantic segmentation.

Paper: Bingfeng Zhang, Jimin Xiao, Yao Zhao, "Dynamic Feature Regularized Loss for Weakly Supervised Semantic
Segmentation", arXiv 2108.01296 (2021); Pattern Recognition 164:111540 (2025).

What the abstract states, and this module does: a segmenter trained in one stage from scribbles with a partial
cross entropy on the labelled pixels plus a *regularized loss* (a dense-CRF-style Potts energy of the softmax,
Tang et al. ECCV 2018) whose kernel reads shallow features (colour, position) **and deep features that are
updated dynamically** (recomputed from the current network at every step); a *feature consistency head* (FCH)
on the segmenter, trained on pair-wise relations of labelled pixels, supplies those deep features.

What is ours (the DFR code and paper body were not available; docs/methods/dfr.md lists every choice):
the FCH is two 1×1 convs on the features that feed the segmenter's classifier (DeepLabV3+: its decoder
output), unit-normalised; its pair loss is a balanced BCE on ``(1 + cos) / 2`` of labelled pixel pairs
(:func:`weakseg.losses.regularized.pairwise_feature_loss`), and it also trains the shared decoder/encoder;
the kernel is one local-window Gaussian (radius ``r``) over xy + rgb + deep features (the product of a shallow
and a deep kernel), at ``loss_scale`` × the crop size; the deep features are detached in the kernel.

Switches (:class:`DFRConfig`): ``kernel`` = shallow (the plain regularized loss: rloss / gated CRF), deep, or
both; ``features`` = dynamic (the current FCH output, every step) or static (the FCH output of the initial,
untrained network, kept frozen); ``reg_weight = 0`` and ``fch_weight = 0`` give partial CE alone (preset
``pce``). The trained segmenter is a plain :class:`weakseg.seg.models.Segmenter` (``export``), so ``eval-seg``
and ``predict`` read it like any other.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.errors import ConfigError, unknown_name
from weakseg.losses.dense import partial_cross_entropy
from weakseg.losses.regularized import (
    COMBINES,
    KERNEL_MODES,
    dfr_kernel,
    downsample_labels,
    pairwise_feature_loss,
    regularized_loss,
)
from weakseg.methods.base import Method, register_method
from weakseg.seg.models import Segmenter

FEATURE_MODES = ("dynamic", "static")

HEAD_CONV: dict[str, Callable[[Segmenter], nn.Conv2d]] = {
    "deeplabv3plus": lambda s: s.net.segmentation_head[0],
    "largefov": lambda s: s.net.head[-1],
    "tiny": lambda s: s.net.head,
}
"""per segmenter architecture: its classifier conv, whose input are the features the FCH reads"""


@dataclass(frozen=True)
class DFRConfig:
    """DFR's loss and head; the segmenter, its optimiser and its epochs are the stage's (same as train-seg)."""

    kernel: str = "both"
    """regularized-loss kernel features: shallow (rgb + xy), deep (FCH features + xy) or both"""
    features: str = "dynamic"
    """deep features of the kernel: dynamic (the current network, every step) or static (the initial network)"""
    combine: str = "product"
    """kernel=both: product (one Gaussian over rgb + deep + xy) or sum (mean of the two kernels)"""
    reg_weight: float = 0.05
    """weight of the regularized (Potts) loss; 0 = partial CE (+ FCH) only"""
    reg_start_epoch: int = 1
    """first epoch (0-based) with the regularized loss: the FCH learns from the scribbles before its features
    shape the kernel"""
    radius: int = 5
    """kernel window radius (px at the loss resolution)"""
    xy_sigma: float = 6.0
    """position σ (px at the loss resolution)"""
    rgb_sigma: float = 0.08
    """colour σ on [0, 1] RGB"""
    deep_sigma: float = 0.5
    """deep-feature σ on unit-norm features (‖Δf‖² ∈ [0, 4])"""
    loss_scale: float = 0.5
    """the regularized loss runs at this fraction of the training crop's side"""
    fch_dim: int = 32
    """FCH output channels"""
    fch_hidden: int = 64
    """FCH hidden channels"""
    fch_weight: float = 0.5
    """weight of the FCH pair loss; 0 = the FCH is not trained (its features stay random)"""
    fch_pixels: int = 256
    """labelled pixels per image drawn for the FCH pair loss"""
    fch_detach: bool = False
    """train the FCH on detached segmenter features: its pair loss then trains the FCH only, not the segmenter"""

    def check(self) -> None:
        if self.kernel not in KERNEL_MODES:
            raise unknown_name("DFR kernel", self.kernel, KERNEL_MODES)
        if self.features not in FEATURE_MODES:
            raise unknown_name("DFR features", self.features, FEATURE_MODES)
        if self.combine not in COMBINES:
            raise unknown_name("DFR combine", self.combine, COMBINES)
        if self.radius < 1 or not 0 < self.loss_scale <= 1:
            raise ConfigError(f"need radius >= 1 and 0 < loss_scale <= 1; got {self.radius}, {self.loss_scale}")
        if min(self.reg_weight, self.fch_weight) < 0 or min(self.xy_sigma, self.rgb_sigma, self.deep_sigma) <= 0:
            raise ConfigError("DFR weights must be >= 0 and its sigmas > 0")


PRESETS: dict[str, DFRConfig] = {
    "cpu": DFRConfig(),
    "shallow": DFRConfig(kernel="shallow"),
    "deep": DFRConfig(kernel="deep"),
    "static": DFRConfig(features="static"),
    "pce": DFRConfig(reg_weight=0.0, fch_weight=0.0),
    "tiny": DFRConfig(radius=2, xy_sigma=2.0, fch_dim=8, fch_hidden=8, fch_pixels=32, reg_start_epoch=0),
}


class DFRNet(nn.Module):
    """A segmenter + the feature consistency head on the features its classifier reads.

    ``forward(x [B, 3, H, W] in [0, 1])`` → ``(logits [B, C, H, W], feats [B, fch_dim, h, w])``; ``feats`` are
    unit-norm, at the classifier's grid (DeepLabV3+: stride 4), cropped to the unpadded image. With
    ``static=True`` a frozen copy of the network as built (before any training) gives :meth:`kernel_features`.
    """

    def __init__(
        self,
        seg: Segmenter,
        arch: str,
        fch_dim: int = 32,
        fch_hidden: int = 64,
        static: bool = False,
        detach_fch: bool = False,
    ):
        super().__init__()
        if arch not in HEAD_CONV:
            raise unknown_name("DFR segmenter architecture", arch, HEAD_CONV)
        self.seg, self.arch, self.detach_fch = seg, arch, detach_fch
        cin = HEAD_CONV[arch](seg).in_channels
        self.fch = nn.Sequential(
            nn.Conv2d(cin, fch_hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(fch_hidden, fch_dim, 1)
        )
        self._static: list[DFRNet] = []  # a plain list: not a sub-module, so neither saved nor optimised
        if static:
            twin = copy.deepcopy(self).eval().requires_grad_(False)
            self._static.append(twin)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        # the hook lives only for this call, so deep copies of the net carry no hook of the original
        handle = HEAD_CONV[self.arch](self.seg).register_forward_pre_hook(lambda m, args: captured.append(args[0]))
        try:
            logits = self.seg(x)
        finally:
            handle.remove()
        trunk = captured[0].detach() if self.detach_fch else captured[0]
        feats = F.normalize(self.fch(trunk), dim=1)
        h, w = x.shape[-2:]
        s = self.seg.stride
        fh = math.ceil(h * feats.shape[-2] / (h + (-h) % s))
        fw = math.ceil(w * feats.shape[-1] / (w + (-w) % s))
        return logits, feats[..., :fh, :fw]

    @property
    def is_static(self) -> bool:
        return bool(self._static)

    def kernel_features(self, x: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The deep features the kernel reads (detached): ``feats`` (dynamic) or the initial network's (static)."""
        if not self._static:
            return feats.detach()
        twin = self._static[0].to(x.device)
        with torch.no_grad():
            return twin(x)[1]

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(encoder, new layers)``: the segmenter's groups, the FCH with its decoder."""
        enc, dec = self.seg.param_groups()
        return enc, dec + list(self.fch.parameters())


def dfr_losses(
    cfg: DFRConfig,
    logits: torch.Tensor,
    feats: torch.Tensor,
    kernel_feats: torch.Tensor | None,
    images: torch.Tensor,
    target: torch.Tensor,
    use_reg: bool = True,
) -> dict[str, torch.Tensor]:
    """DFR's losses of one batch: ``{"loss", "pce", "reg", "fch"}`` (scalars).

    ``logits`` ``[B, C, H, W]``, ``feats`` ``[B, d, h, w]`` (the FCH output, with gradient), ``kernel_feats``
    the deep features of the kernel (detached; None for a shallow kernel), ``images`` ``[B, 3, H, W]`` in
    [0, 1], ``target`` ``[B, H, W]`` (255 = unknown). The regularized loss runs at ``loss_scale`` × (H, W)
    on the bilinearly resized softmax, image and features.
    """
    pce = partial_cross_entropy(logits, target)
    zero = pce.new_zeros(())
    reg, fch = zero, zero
    if use_reg and cfg.reg_weight > 0:
        h, w = logits.shape[-2:]
        size = (max(1, round(h * cfg.loss_scale)), max(1, round(w * cfg.loss_scale)))
        probs = F.interpolate(logits.float().softmax(1), size=size, mode="bilinear", align_corners=False)
        small = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
        deep = None
        if cfg.kernel != "shallow" and kernel_feats is not None:
            deep = F.normalize(
                F.interpolate(kernel_feats.float(), size=size, mode="bilinear", align_corners=False), dim=1
            )
        kernel = dfr_kernel(
            small, deep, cfg.kernel, cfg.radius, cfg.xy_sigma, cfg.rgb_sigma, cfg.deep_sigma, cfg.combine
        )
        reg = regularized_loss(probs, kernel)
    if cfg.fch_weight > 0:
        fch = pairwise_feature_loss(feats, downsample_labels(target, tuple(feats.shape[-2:])), cfg.fch_pixels)
    return {"loss": pce + cfg.reg_weight * reg + cfg.fch_weight * fch, "pce": pce, "reg": reg, "fch": fch}


class ScribbleMethod(Method):
    """A method of task ``scribble``: wraps the stage's segmenter, trains it from partial labels, exports it."""

    task = "scribble"

    def wrap(self, seg: Segmenter, arch: str) -> nn.Module:
        raise NotImplementedError

    def export(self, net: nn.Module) -> Segmenter:
        """The trained segmenter (what ``eval-seg`` and ``predict`` load)."""
        raise NotImplementedError

    def extra_modules(self, net: nn.Module) -> dict[str, nn.Module]:
        """Trained modules besides the segmenter, saved as ``<name>.safetensors``; none by default."""
        return {}


@register_method
class DFRMethod(ScribbleMethod):
    name = "dfr"
    description = (
        "segmenter + feature consistency head; partial CE + regularized loss over rgb/xy + dynamic deep features"
    )
    paper = "Zhang, Xiao, Zhao, arXiv 2108.01296 / Pattern Recognition 2025"
    Config = DFRConfig
    presets = PRESETS

    def wrap(self, seg: Segmenter, arch: str) -> DFRNet:
        c = self.cfg
        static = c.features == "static" and c.kernel != "shallow" and c.reg_weight > 0
        return DFRNet(seg, arch, c.fch_dim, c.fch_hidden, static=static, detach_fch=c.fch_detach)

    def export(self, net: nn.Module) -> Segmenter:
        return _unwrap(net).seg

    def extra_modules(self, net: nn.Module) -> dict[str, nn.Module]:
        return {"fch": _unwrap(net).fch}

    def step(self, net: nn.Module, batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        images, target = batch
        logits, feats = net(images)
        c = self.cfg
        use_reg = epoch >= c.reg_start_epoch and c.reg_weight > 0
        kernel_feats = _unwrap(net).kernel_features(images, feats) if use_reg and c.kernel != "shallow" else None
        return dfr_losses(c, logits, feats, kernel_feats, images, target, use_reg)


def _unwrap(net: nn.Module) -> DFRNet:
    return net.module if hasattr(net, "module") else net  # type: ignore[return-value]
