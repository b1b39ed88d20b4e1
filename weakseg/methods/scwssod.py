"""SCWSSOD: scribble-supervised salient object detection with local saliency coherence and structure consistency.

Paper: Siyue Yu, Bingfeng Zhang, Jimin Xiao, Eng Gee Lim, "Structure-Consistent Weakly Supervised Salient Object
Detection with Local Saliency Coherence", AAAI 2021 (arXiv 2012.04404); official code github.com/siyueyu/SCWSSOD.

Network (:class:`SCWSSODNet`, GCPANet-style): four encoder levels of a weakseg backbone (strides 4-32 for
EfficientNet-Lite0, 2-16 for ``tiny``), a head on the deepest level (self-refinement of a projected feature, then
a channel gate from its global context), and for each finer level an **aggregation module** (:class:`AGGM`) that
fuses the encoder feature (left), the decoder feature from below (down) and a global-context feature (right) as
three products, each weighted by a learnt scalar gate, normalised by the sum of the gates, then refined. Four
1-channel heads give side outputs at every level, upsampled to the input (logits; saliency = sigmoid).

Loss of side output ``k`` (weights 1, 0.8, 0.6, 0.4 from the finest): balanced partial BCE on the scribbles
(:func:`weakseg.losses.partial.partial_bce`, ``balance=True``) + ``0.3`` × **local saliency coherence**
(:func:`local_saliency_coherence`: ``Σ_j K_ij |s_i - s_j|`` over an 11×11 window at ¼ resolution, ``K`` a Gaussian
of position (σ 6 px) and normalised colour (σ 0.1)); the finest output adds **structure consistency**
(:func:`structure_consistency`: SSIM + L1 between the saliency of the image downscaled ×0.3 and the saliency
downscaled ×0.3; both branches get gradient). Registered methods: ``scwssod`` (all three terms), ``sod-pce``
(partial BCE alone, same network and side weights) and ``sod-full`` (BCE on the full masks: the upper bound).

Differences from the official code (which the method notes list as bugs, not recipe): the image is never divided
by σ in place (the official LSC does ``feature /= sigma`` on the shared sample, so its four side outputs see
σ_rgb = 0.1, 0.01, 0.001, 0.0001; here every call sees 0.1); scribbles are resized with nearest, not bilinear +
``.long()``; the scribble loss is BCE on logits (the official CE re-softmaxes probabilities, which caps p in
[0.27, 0.73]); AGGM gates pass a sigmoid (the official ones are unconstrained and may sum to ≈ 0); the backbone is
any weakseg backbone (EfficientNet-Lite0 on CPU) instead of ResNet-50, at a smaller width and input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from weakseg.backbones import Backbone
from weakseg.backbones.efficientnet_lite import EfficientNetLiteBackbone
from weakseg.backbones.tiny import TinyBackbone
from weakseg.data.dataset import IGNORE
from weakseg.data.saliency import SaliencySet
from weakseg.engine.trainer import poly_lr
from weakseg.errors import ConfigError, unknown_name
from weakseg.losses.pairwise import gaussian_kernel, l1_pairwise_loss
from weakseg.losses.partial import partial_bce, ssim_l1_consistency
from weakseg.methods.base import LoaderContext, LoaderFactory, Method, register_method

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ---------------------------------------------------------------------------- pure tensor functions


def normalise_rgb(image: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` RGB in [0, 1] → ImageNet mean/std-normalised (the colour space of LSC's σ_rgb = 0.1)."""
    mean = image.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (image - mean) / std


def downscale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``[B, C, H, W]`` → bilinear ``[B, C, round(H·scale), round(W·scale)]`` (at least 1 px); a new tensor."""
    h, w = x.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def lsc_kernel(
    image: torch.Tensor, scale: float = 0.25, radius: int = 5, xy_sigma: float = 6.0, rgb_sigma: float = 0.1
) -> torch.Tensor:
    """LSC's kernel ``[B, (2r+1)², h, w]`` of a normalised image ``[B, 3, H, W]`` resized by ``scale``
    (bilinear, ``align_corners=True``); one per image, shared by every side output. Detached; ``image`` unchanged."""
    if scale != 1:
        image = F.interpolate(image, size=_scaled(image, scale), mode="bilinear", align_corners=True)
    return gaussian_kernel([(image, rgb_sigma)], radius=radius, xy_sigma=xy_sigma)


def _scaled(x: torch.Tensor, scale: float) -> tuple[int, int]:
    h, w = x.shape[-2:]
    return max(1, round(h * scale)), max(1, round(w * scale))


def local_saliency_coherence(
    saliency: torch.Tensor,
    image: torch.Tensor,
    scale: float = 0.25,
    radius: int = 5,
    xy_sigma: float = 6.0,
    rgb_sigma: float = 0.1,
    kernel: torch.Tensor | None = None,
) -> torch.Tensor:
    """LSC loss: ``mean_i Σ_j K_ij |s_i - s_j|`` over the ``(2r+1)²`` window, at ``scale`` of the input. Scalar.

    ``saliency`` ``[B, 1, H, W]`` in [0, 1]; ``image`` ``[B, 3, H, W]`` normalised (:func:`normalise_rgb`);
    ``K_ij = exp(-½(‖p_i - p_j‖²/σ_xy² + ‖I_i - I_j‖²/σ_rgb²))`` with σ_xy in px of the downscaled grid.
    Both are resized bilinearly (``align_corners=True``, as the official code) to the same grid. Zero for a
    constant map; a jump in saliency costs less where the image has an edge (neighbours across it have a small
    ``K``). ``kernel``: :func:`lsc_kernel` of ``image`` with the same options, when already computed. The kernel
    is detached; neither input is changed.
    """
    if saliency.shape[0] != image.shape[0] or saliency.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"saliency {tuple(saliency.shape)} and image {tuple(image.shape)} differ in batch or size")
    if kernel is None:
        kernel = lsc_kernel(image, scale, radius, xy_sigma, rgb_sigma)
    if scale != 1:
        saliency = F.interpolate(saliency, size=_scaled(saliency, scale), mode="bilinear", align_corners=True)
    return l1_pairwise_loss(saliency, kernel)


def structure_consistency(saliency_of_small: torch.Tensor, saliency: torch.Tensor, alpha: float = 0.85) -> torch.Tensor:
    """SSC loss between ``s(x↓)`` ``[B, 1, h, w]`` and ``s(x)`` ``[B, 1, H, W]`` downscaled (bilinear) to ``h × w``.

    ``α·mean(clamp((1 - SSIM)/2, 0, 1)) + (1 - α)·mean|·|`` (:func:`weakseg.losses.partial.ssim_l1_consistency`);
    zero when the prediction commutes with the downscaling. Both receive gradient. Scalar.
    """
    down = F.interpolate(saliency, size=saliency_of_small.shape[-2:], mode="bilinear", align_corners=False)
    return ssim_l1_consistency(saliency_of_small, down, alpha)


def scribble_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Balanced partial BCE: mean over salient-scribble pixels + mean over background-scribble pixels.

    ``logits`` ``[B, 1, H, W]``; ``target`` ``[B, H, W]``: 1 salient, 0 background, 255 unknown (ignored). Scalar.
    """
    return partial_bce(logits, target, balance=True)


def full_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE of ``logits [B, 1, H, W]`` against a full binary mask ``target [B, H, W]`` (255 ignored). Scalar."""
    return partial_bce(logits, target, balance=False)


@dataclass(frozen=True)
class LossWeights:
    """What :func:`scwssod_loss` adds to each side output's scribble term."""

    side: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4)
    """weight of each side output's loss, finest first"""
    lsc: float = 0.3
    """local saliency coherence, on every side output (0 = off)"""
    ssc: float = 1.0
    """structure consistency, on the finest output (0 = off)"""
    full: bool = False
    """targets are full masks (plain BCE; no LSC/SSC): the fully supervised upper bound"""


def scwssod_loss(
    logits: Sequence[torch.Tensor],
    target: torch.Tensor,
    image: torch.Tensor,
    weights: LossWeights,
    logits_of_small: torch.Tensor | None = None,
    lsc: dict[str, float] | None = None,
    ssc_alpha: float = 0.85,
) -> dict[str, torch.Tensor]:
    """The total loss and its parts (``loss``, ``pce``, ``lsc``, ``ssc``; the parts detached).

    ``logits``: side outputs ``[B, 1, H, W]`` (finest first, at the input size); ``target`` ``[B, H, W]``
    (scribbles 1/0/255, or full masks when ``weights.full``); ``image`` ``[B, 3, H, W]`` normalised;
    ``logits_of_small``: the finest output of the downscaled image (needed when ``weights.ssc`` > 0);
    ``lsc``: keyword options of :func:`local_saliency_coherence`. Nothing given is modified.
    """
    if len(weights.side) != len(logits):
        raise ValueError(f"{len(logits)} side outputs but {len(weights.side)} side weights")
    total = logits[0].new_zeros(())
    parts = {"pce": 0.0, "lsc": 0.0, "ssc": 0.0}
    lsc = dict(lsc or {})
    if weights.lsc and not weights.full:
        lsc["kernel"] = lsc_kernel(image, **lsc)  # the same image for every side output: one kernel
    for k, (z, w) in enumerate(zip(logits, weights.side, strict=True)):
        sup = full_loss(z, target) if weights.full else scribble_loss(z, target)
        term = sup
        parts["pce"] = parts["pce"] + w * sup.detach()
        if weights.lsc and not weights.full:
            c = local_saliency_coherence(torch.sigmoid(z), image, **lsc)
            term = term + weights.lsc * c
            parts["lsc"] = parts["lsc"] + w * c.detach()
        if k == 0 and weights.ssc and not weights.full:
            if logits_of_small is None:
                raise ValueError("structure consistency needs logits_of_small (the output of the downscaled image)")
            c = structure_consistency(torch.sigmoid(logits_of_small), torch.sigmoid(z), ssc_alpha)
            term = term + weights.ssc * c
            parts["ssc"] = parts["ssc"] + c.detach()
        total = total + w * term
    return {"loss": total, **{k: torch.as_tensor(v, dtype=total.dtype) for k, v in parts.items()}}


# ---------------------------------------------------------------------------- network


def _cbr(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x if x.shape[-2:] == like.shape[-2:] else F.interpolate(x, like.shape[-2:], mode="bilinear",
                                                                   align_corners=False)  # fmt: skip


class SelfRefine(nn.Module):
    """Conv-BN-ReLU, then a 3×3 conv predicts a per-pixel scale ``w`` and shift ``b``: ``ReLU(w·f + b)``."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        self.conv = _cbr(cin, width)
        self.affine = nn.Conv2d(width, 2 * width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        w, b = self.affine(f).chunk(2, dim=1)
        return F.relu(w * f + b)


class ChannelGate(nn.Module):
    """``cbr1×1(left) ⊙ σ(MLP(GAP(top)))``: a feature gated channel-wise by the global context of ``top``."""

    def __init__(self, c_left: int, c_top: int, width: int):
        super().__init__()
        self.left = _cbr(c_left, width, 1)
        self.mlp = nn.Sequential(nn.Conv2d(c_top, width, 1), nn.ReLU(True), nn.Conv2d(width, width, 1))

    def forward(self, left: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        return self.left(left) * torch.sigmoid(self.mlp(top.mean(dim=(2, 3), keepdim=True)))


class AGGM(nn.Module):
    """Aggregation module: fuse ``left`` (encoder), ``down`` (coarser decoder) and ``right`` (global context).

    ``z1 = ReLU(conv(l) ⊙ up(d))``, ``z2 = ReLU(l ⊙ up(conv(d)))``, ``z3 = ReLU(l ⊙ up(conv(r)))``; each gets a
    scalar gate ``g_k = σ(GAP(conv_k(z_k)))`` (positive; the official gates are unconstrained); output
    ``cbr(Σ g_k z_k / (Σ g_k + ε))``. Shapes: ``left [B, c_l, H, W]``, ``down``/``right`` ``[B, width, h, w]``
    (upsampled to ``H × W``) → ``[B, width, H, W]``.
    """

    def __init__(self, c_left: int, width: int, eps: float = 1e-6):
        super().__init__()
        self.l, self.d, self.r = _cbr(c_left, width), _cbr(width, width), _cbr(width, width)
        self.conv_l, self.conv_d, self.conv_r = (nn.Conv2d(width, width, 3, padding=1) for _ in range(3))
        self.gates = nn.ModuleList(nn.Conv2d(width, 1, 3, padding=1) for _ in range(3))
        self.out = _cbr(width, width)
        self.eps = eps

    def forward(self, left: torch.Tensor, down: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        lf, df, rf = self.l(left), self.d(down), self.r(right)
        z = (F.relu(self.conv_l(lf) * _up(df, lf)), F.relu(lf * _up(self.conv_d(df), lf)),
             F.relu(lf * _up(self.conv_r(rf), lf)))  # fmt: skip
        g = [torch.sigmoid(gate(zk).mean(dim=(2, 3), keepdim=True)) for gate, zk in zip(self.gates, z, strict=True)]
        fused = sum(gk * zk for gk, zk in zip(g, z, strict=True)) / (sum(g) + self.eps)
        return self.out(fused)


def pyramid(backbone: Backbone, x: torch.Tensor) -> list[torch.Tensor]:
    """Four encoder levels (finest first) of ``x`` ``[B, 3, H, W]`` in [0, 1].

    EfficientNet-Lite (built at output stride 32): blocks 1, 2, 4, 6 (strides 4, 8, 16, 32; 24/40/112/320 ch for
    Lite0). ``tiny``: its four conv blocks (strides 2, 4, 8, 16 at output stride 16).
    """
    if not isinstance(backbone, (EfficientNetLiteBackbone, TinyBackbone)):
        raise ConfigError(f"SCWSSOD needs multi-level features; backbone {type(backbone).__name__} does not give them "
                          "(use efficientnet-lite0 or tiny)")  # fmt: skip
    x = (x - backbone.mean) / backbone.std
    if isinstance(backbone, EfficientNetLiteBackbone):
        net, feats = backbone.net, []
        h = net.bn1(net.conv_stem(x))
        for i, block in enumerate(net.blocks):
            h = block(h)
            if i in (1, 2, 4, 6):
                feats.append(h)
        return feats
    feats = []
    for block in backbone.body:  # TinyBackbone
        x = block(x)
        feats.append(x)
    return feats


class SCWSSODNet(nn.Module):
    """Encoder levels → head (SelfRefine + ChannelGate) → three AGGM + SelfRefine levels → four 1-channel heads.

    ``forward(x [B, 3, H, W] in [0, 1])`` → list of 4 logits ``[B, 1, H, W]``, finest first.
    """

    def __init__(self, backbone: Backbone, width: int = 64):
        super().__init__()
        self.backbone = backbone
        was = backbone.training
        backbone.eval()
        with torch.no_grad():
            chans = [f.shape[1] for f in pyramid(backbone, torch.zeros(2, 3, 64, 64))]
        backbone.train(was)
        c5 = chans[3]
        self.head = SelfRefine(c5, width)
        self.head_gate = ChannelGate(width, c5, width)
        self.head_refine = SelfRefine(width, width)
        self.context = nn.ModuleList(ChannelGate(c5, c5, width) for _ in range(3))  # for levels 4, 3, 2
        self.aggm = nn.ModuleList(AGGM(c, width) for c in reversed(chans[:3]))
        self.refine = nn.ModuleList(SelfRefine(width, width) for _ in range(3))
        self.heads = nn.ModuleList(nn.Conv2d(width, 1, 3, padding=1) for _ in range(4))

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f2, f3, f4, f5 = pyramid(self.backbone, x)
        d = self.head_refine(self.head_gate(self.head(f5), f5))
        outs = [d]
        for left, ctx, agg, ref in zip((f4, f3, f2), self.context, self.aggm, self.refine, strict=True):
            d = ref(agg(left, d, ctx(f5, f5)))
            outs.append(d)
        outs = outs[::-1]  # finest first
        return [_up(head(o), x) for head, o in zip(self.heads, outs, strict=True)]


@torch.no_grad()
def predict_saliency(net: nn.Module, image: np.ndarray, input_size: int) -> np.ndarray:
    """``float32 [H, W]`` saliency in [0, 1] of ``uint8 [H, W, 3]``: resized to ``input_size²``, sigmoid of the
    finest output, resized back (bilinear)."""
    device = next(net.parameters()).device
    h, w = image.shape[:2]
    small = np.array(Image.fromarray(image).resize((input_size, input_size), Image.BILINEAR))
    x = torch.from_numpy(small).permute(2, 0, 1)[None].float().div(255).to(device)
    s = torch.sigmoid(net(x)[0].float())
    return F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).cpu().numpy()


# ---------------------------------------------------------------------------- data


class SalientTensors(torch.utils.data.Dataset):
    """A :class:`SaliencySet` preloaded at ``size × size``: ``{"image": [3, S, S] in [0, 1], "target": [S, S]}``.

    ``target``: the scribbles (1 / 0 / 255) or, with ``full``, the ground-truth mask (1 / 0). Random horizontal
    flip with ``flip`` (the official recipe's only augmentation besides the resize).
    """

    def __init__(self, data: SaliencySet, size: int, full: bool = False, flip: bool = True):
        images, targets = [], []
        for i in range(len(data)):
            images.append(data.load_image(i, (size, size)))
            if full:
                gt = data.load_gt(i, (size, size))
                if gt is None:
                    raise ConfigError(f"the fully supervised baseline needs masks; image {data[i].image_id!r} has none")
                targets.append(gt.astype(np.uint8))
            else:
                targets.append(data.load_scribbles(i, (size, size)))
        self.images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        self.targets = torch.from_numpy(np.stack(targets))
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def labelled_fraction(self) -> float:
        return float((self.targets != IGNORE).float().mean())

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        x, y = self.images[k].float() / 255, self.targets[k].long()
        if self.flip and torch.rand(()) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return {"image": x, "target": y}


# ---------------------------------------------------------------------------- the method

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("triangle", "poly")


@dataclass(frozen=True)
class SCWSSODConfig:
    """Every knob of SCWSSOD and its two baselines. Presets: paper, cpu, tiny."""

    input_size: int = 320
    """side (px) every image is resized to, in training and prediction"""
    width: int = 256
    """decoder channels"""
    epochs: int = 40
    batch_size: int = 16
    optimizer: str = "sgd"
    """sgd (Nesterov momentum, the paper) or adamw"""
    lr: float = 1e-2
    """peak learning rate of the decoder (the backbone gets backbone_lr_mult of it)"""
    lr_min: float = 1e-5
    """triangle schedule: learning rate at the start and the end"""
    schedule: str = "triangle"
    """triangle (linear lr_min → lr → lr_min over the run, the paper) or poly (lr·(1 - t)^0.9)"""
    backbone_lr_mult: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    flip: bool = True
    """random horizontal flips"""
    side_weights: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4)
    """loss weight of each side output, finest first"""
    lsc_weight: float = 0.3
    """local saliency coherence weight β"""
    lsc_scale: float = 0.25
    """LSC is computed on the image and saliency resized by this factor"""
    lsc_radius: int = 5
    """LSC window radius (px of the resized grid): an 11×11 window"""
    lsc_xy_sigma: float = 6.0
    """σ of the position term (px of the resized grid)"""
    lsc_rgb_sigma: float = 0.1
    """σ of the colour term (ImageNet-normalised RGB)"""
    ssc_weight: float = 1.0
    """structure consistency weight (finest output)"""
    ssc_scale: float = 0.3
    """the downscaling factor of the structure consistency"""
    ssc_alpha: float = 0.85
    """SSIM share of the structure consistency (the rest is L1)"""

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule not in SCHEDULES:
            raise unknown_name("schedule", self.schedule, SCHEDULES)
        if len(self.side_weights) != 4:
            raise ConfigError(f"side_weights needs 4 values (one per side output), got {len(self.side_weights)}")
        if self.input_size < 32 or self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("input_size must be >= 32, batch_size and epochs >= 1")
        if not 0 < self.ssc_scale < 1 or not 0 < self.lsc_scale <= 1:
            raise ConfigError("ssc_scale must lie in (0, 1) and lsc_scale in (0, 1]")


PAPER = SCWSSODConfig()
"""the official recipe (train.py): 320 px, batch 16, 40 epochs, SGD Nesterov, triangular lr 1e-5 → 1e-2 → 1e-5"""

PRESETS: dict[str, SCWSSODConfig] = {
    "paper": PAPER,
    # minutes on 2 CPU cores: 128 px, a 32-channel decoder, AdamW + poly (SGD's one-cycle needs the 40 epochs)
    "cpu": dataclasses.replace(PAPER, input_size=128, width=32, epochs=12, batch_size=8, optimizer="adamw", lr=1e-3,
                               schedule="poly", weight_decay=1e-4),
    "tiny": dataclasses.replace(PAPER, input_size=32, width=8, epochs=1, batch_size=2, optimizer="adamw", lr=1e-3,
                                schedule="poly", lsc_scale=0.5, lsc_radius=2),
}  # fmt: skip


def triangle_lr(total_steps: int, floor: float) -> Callable[[int], float]:
    """Factor of the peak lr: linear from ``floor`` up to 1 at mid-run, then back down to ``floor``."""
    half = max(total_steps / 2, 1)
    return lambda step: floor + (1 - floor) * max(0.0, 1 - abs(step - half) / half)


class SaliencyMethod(Method):
    """SCWSSOD and its baselines (``mode``) on the saliency task; hooks used by ``train-saliency``."""

    task = "saliency"
    paper = "Yu et al., AAAI 2021"
    Config = SCWSSODConfig
    presets = PRESETS
    mode: ClassVar[str] = "scwssod"

    @property
    def reads_masks(self) -> bool:
        """Whether training reads the full masks (only the fully supervised baseline)."""
        return self.mode == "full"

    def loss_weights(self) -> LossWeights:
        c = self.cfg
        if self.mode == "pce":
            return LossWeights(c.side_weights, 0.0, 0.0)
        return LossWeights(c.side_weights, c.lsc_weight, c.ssc_weight, full=self.mode == "full")

    def build(self, backbone: Backbone, num_classes: int = 1) -> SCWSSODNet:
        return SCWSSODNet(backbone, self.cfg.width)

    def optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        c = self.cfg
        encoder = [p for p in net.backbone.parameters() if p.requires_grad]
        decoder = net.decoder_parameters()
        groups = [{"params": encoder, "lr": c.lr * c.backbone_lr_mult}, {"params": decoder, "lr": c.lr}]
        if c.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=True)
        return torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)

    def lr_factor(self, steps_per_epoch: int) -> Callable[[int], float]:
        total = self.cfg.epochs * steps_per_epoch
        if self.cfg.schedule == "triangle":
            return triangle_lr(total, self.cfg.lr_min / self.cfg.lr)
        return poly_lr(total)

    def loader(self, data: SaliencySet, ctx: LoaderContext) -> LoaderFactory:  # type: ignore[override]
        c = self.cfg
        tensors = SalientTensors(data, c.input_size, full=self.reads_masks, flip=c.flip)
        self.labelled_fraction = tensors.labelled_fraction()
        batch = min(c.batch_size, len(tensors))
        steps = len(tensors) // batch

        def make(epoch: int) -> torch.utils.data.DataLoader:
            g = torch.Generator().manual_seed(ctx.seed * 1000 + epoch)
            return torch.utils.data.DataLoader(tensors, batch_size=batch, shuffle=True, drop_last=True, generator=g,
                                               num_workers=ctx.workers)  # fmt: skip

        return make, steps

    def step(self, net: nn.Module, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        c, w = self.cfg, self.loss_weights()
        x, y = batch["image"], batch["target"]
        logits = net(x)
        small = net(downscale(x, c.ssc_scale))[0] if (w.ssc and not w.full) else None
        lsc = {"scale": c.lsc_scale, "radius": c.lsc_radius, "xy_sigma": c.lsc_xy_sigma, "rgb_sigma": c.lsc_rgb_sigma}
        return scwssod_loss(logits, y, normalise_rgb(x), w, small, lsc, c.ssc_alpha)

    def predict(self, net: nn.Module, image: np.ndarray) -> np.ndarray:
        """Saliency ``float32 [H, W]`` in [0, 1] of an image ``uint8 [H, W, 3]`` (:func:`predict_saliency`)."""
        return predict_saliency(net, image, self.cfg.input_size)

    def describe_data(self) -> dict[str, Any]:
        return {"reads": "full masks" if self.reads_masks else "scribbles only"}


@register_method
class SCWSSODMethod(SaliencyMethod):
    name = "scwssod"
    description = "SCWSSOD: scribble SOD with local saliency coherence + structure consistency"
    mode = "scwssod"


@register_method
class SODPartialCEMethod(SaliencyMethod):
    name = "sod-pce"
    description = "SCWSSOD's network on scribbles with the balanced partial BCE alone (baseline)"
    mode = "pce"


@register_method
class SODFullMethod(SaliencyMethod):
    name = "sod-full"
    description = "SCWSSOD's network trained on the full masks (the upper bound of scribble SOD)"
    paper = ""
    mode = "full"
