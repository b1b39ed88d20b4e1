"""ABD: adaptive bidirectional displacement for semi-supervised medical segmentation, on cross teaching.

Paper: Hanyang Chi, Jian Pang, Bingfeng Zhang, Weifeng Liu, "Adaptive Bidirectional Displacement for
Semi-Supervised Medical Image Segmentation", CVPR 2024, pp. 4070-4080 (arXiv 2405.00378).

Two networks learn from a few labelled and many unlabelled slices (:func:`weakseg.data.recipes.two_stream_batches`):
model 1 sees the weak view, model 2 the strong view of each slice (:mod:`weakseg.data.acdc` augmentations).
Each is trained on the labelled half with ½(CE + Dice) and on the unlabelled half with the other model's
argmax as target (cross teaching: Dice, weight λ(t) ramped up, :func:`rampup_weight`). ABD adds two sets of
new samples built by moving *patches* (a ``G × G`` grid of ``patch_size`` px) between the two views:

- **ABD-R** (unlabelled): each view's least reliable patch (lowest mean top-softmax confidence,
  :func:`patch_reliability`) is replaced by the other view's reliable patch whose class profile
  (:func:`patch_profile`) is closest in KL divergence among its ``top_k`` most reliable
  (:func:`reliable_displacement`). Both models predict the new images and teach each other (weight λ(t)).
- **ABD-I** (labelled, each sample with probability ``abd_i_prob``): the inverse — each view's *most*
  reliable patch is replaced by the other view's *least* reliable one, the labels moving with the pixels
  (:func:`inverse_displacement`); trained with ½(CE + Dice) at weight ``abd_i_weight``.

Registered methods (one module, one config, one step with three modes; the baselines share every other line):

- ``abd``: all of the above (the paper's ABD on cross teaching);
- ``cross-teaching``: the same two models, views and losses without the displacements;
- ``supervised-only``: model 1 on the labelled weak views only.

Reported predictions are model 1's (the paper reports its U-Net, model 1). Differences from the paper:
both models are segmentation-models-pytorch U-Nets with different random initialisations (the paper pairs
the SSL4MIS U-Net with a Swin-UNet); the ABD-I and ABD-R images go through each model in one forward
pass (the reference code runs two, so BatchNorm statistics are pooled differently); the second
displacement of a pair reads the *original* first view (the reference reads it after the first write,
which differs only when the two patch indices coincide).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.data.acdc import PatientSplit, SliceAugment, SliceViews
from weakseg.data.recipes import two_stream_batches
from weakseg.engine.trainer import poly_lr
from weakseg.errors import ConfigError, unknown_name
from weakseg.losses.dense import partial_cross_entropy
from weakseg.losses.dice import dice_loss
from weakseg.methods.base import LoaderContext, LoaderFactory, Method, register_method

# ---------------------------------------------------------------------------- pure tensor functions


def _grid(h: int, w: int, patch: int) -> tuple[int, int]:
    if h % patch or w % patch:
        raise ValueError(f"a {h}x{w} map does not split into {patch}x{patch} patches")
    return h // patch, w // patch


def to_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, N, C, p, p]``; patch ``n`` is row ``n // (W/p)``, column ``n % (W/p)`` of the grid."""
    b, c, h, w = x.shape
    gh, gw = _grid(h, w, patch)
    return x.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, patch, patch)


def from_patches(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_patches`: ``[B, N, C, p, p]`` → ``[B, C, H, W]``."""
    b, _, c, p, _ = x.shape
    gh, gw = _grid(h, w, p)
    return x.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def patch_reliability(confidence: torch.Tensor, patch: int) -> torch.Tensor:
    """Mean confidence per patch: ``[B, H, W]`` (max softmax probability per pixel) → ``[B, N]``."""
    return to_patches(confidence[:, None], patch).flatten(2).mean(2)


def patch_profile(logits: torch.Tensor, patch: int) -> torch.Tensor:
    """Class profile per patch: softmax over classes of the patch-mean logits, ``[B, C, H, W]`` → ``[B, N, C]``."""
    return to_patches(logits, patch).mean(dim=(3, 4)).softmax(-1)


class Displacement(NamedTuple):
    """Patch indices ``[B]`` of a bidirectional displacement: view 1's patch ``into1`` takes view 2's patch
    ``from2``; view 2's patch ``into2`` takes view 1's patch ``from1``."""

    into1: torch.Tensor
    from2: torch.Tensor
    into2: torch.Tensor
    from1: torch.Tensor


def reliable_displacement(
    r1: torch.Tensor, r2: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, top_k: int
) -> Displacement:
    """ABD-R indices (unlabelled samples): each view's least reliable patch gets a reliable patch of the other.

    ``r1, r2``: reliabilities ``[B, N]``; ``q1, q2``: class profiles ``[B, N, C]``. View 1's worst patch
    ``b = argmin r1`` takes, among view 2's ``top_k`` most reliable patches ``T2``, the one minimising
    ``KL(q1[b] ‖ q2[j])``; symmetrically ``d = argmin r2`` takes ``argmin_{j ∈ T1} KL(q2[d] ‖ q1[j])``.
    """
    ar = torch.arange(r1.shape[0], device=r1.device)
    b, d = r1.argmin(1), r2.argmin(1)
    t1, t2 = r1.topk(top_k, dim=1).indices, r2.topk(top_k, dim=1).indices  # [B, k]

    def closest(target: torch.Tensor, profiles: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        p = target[:, None, :]  # [B, 1, C]
        q = profiles[ar[:, None], cands]  # [B, k, C]
        kl = (p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum(-1)  # KL(p ‖ q), [B, k]
        return cands[ar, kl.argmin(1)]

    return Displacement(into1=b, from2=closest(q1[ar, b], q2, t2), into2=d, from1=closest(q2[ar, d], q1, t1))


def inverse_displacement(r1: torch.Tensor, r2: torch.Tensor) -> Displacement:
    """ABD-I indices (labelled samples) from reliabilities ``[B, N]``: each view's *most* reliable patch takes the
    other view's *least* reliable one (``argmax r1 ← argmin r2``, ``argmax r2 ← argmin r1``)."""
    return Displacement(into1=r1.argmax(1), from2=r2.argmin(1), into2=r2.argmax(1), from1=r1.argmin(1))


def displace(dst: torch.Tensor, src: torch.Tensor, into: torch.Tensor, source: torch.Tensor, patch: int,
             mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """``dst`` with patch ``into[i]`` of sample ``i`` replaced by patch ``source[i]`` of ``src`` sample ``i``.

    ``dst, src``: ``[B, C, H, W]`` images or ``[B, H, W]`` labels (same shape); ``into, source``: ``[B]``;
    ``mask``: ``[B]`` bool, only those samples change (default: all). Returns a new tensor.
    """
    squeeze = dst.dim() == 3
    if squeeze:
        dst, src = dst[:, None], src[:, None]
    h, w = dst.shape[-2:]
    out = to_patches(dst, patch).clone()
    ar = torch.arange(dst.shape[0], device=dst.device)
    moved = to_patches(src, patch)[ar, source]
    if mask is not None:
        moved = torch.where(mask.view(-1, 1, 1, 1), moved, out[ar, into])
    out[ar, into] = moved
    out = from_patches(out, h, w)
    return out[:, 0] if squeeze else out


def bidirectional_displace(x1: torch.Tensor, x2: torch.Tensor, d: Displacement, patch: int,
                           mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The displaced pair ``(x1', x2')`` of two views (images ``[B, C, H, W]`` or labels ``[B, H, W]``):
    ``x1'`` = ``x1`` with patch ``into1`` from ``x2``'s ``from2``; ``x2'`` = ``x2`` with patch ``into2`` from the
    original ``x1``'s ``from1``. Call it on images and on labels with the same ``d`` and ``mask`` to move both."""
    return displace(x1, x2, d.into1, d.from2, patch, mask), displace(x2, x1, d.into2, d.from1, patch, mask)


def rampup_weight(iteration: int, weight: float, length: int, step: int = 1) -> float:
    """Sigmoid ramp-up ``weight · exp(-5 (1 - t)²)``, ``t = min(⌊iteration / step⌋ · step, length) / length``.

    ``weight · e⁻⁵`` at iteration 0, ``weight`` from ``length`` on; ``step`` holds the value constant over
    blocks of iterations (ABD / SSL4MIS: weight 0.1, length 30000 = 200 × 150, step 150). ``length`` 0: no ramp.
    """
    if length <= 0:
        return float(weight)
    t = min((iteration // max(step, 1)) * max(step, 1), length) / length
    return float(weight * np.exp(-5.0 * (1.0 - t) ** 2))


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """½ (cross entropy + Dice) of ``logits [B, C, H, W]`` against labels ``[B, H, W]`` (255 ignored)."""
    probs = logits.softmax(1) if probs is None else probs
    return 0.5 * (partial_cross_entropy(logits, target) + dice_loss(probs, target))


def cross_supervision(probs: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Dice of ``probs [B, C, H, W]`` against the other model's hard labels ``argmax other`` (no gradient to it)."""
    return dice_loss(probs, other.detach().argmax(1))


# ---------------------------------------------------------------------------- networks


class TwoNets(nn.Module):
    """Model 1 (weak views; the one predictions come from) and, for the cross-teaching modes, model 2."""

    def __init__(self, net1: nn.Module, net2: nn.Module | None = None):
        super().__init__()
        self.net1 = net1
        self.net2 = net2

    def forward(self, x: torch.Tensor, model: int = 1) -> torch.Tensor:
        """``[B, 1, S, S]`` → logits ``[B, C, S, S]`` of model ``model`` (1 or 2)."""
        net = self.net1 if model == 1 else self.net2
        if net is None:
            raise ConfigError("this network has no model 2 (supervised-only trains model 1 alone)")
        return net(x)


def build_unet(encoder: str, depth: int, decoder_channels: tuple[int, ...], num_classes: int) -> nn.Module:
    """A randomly initialised 1-channel segmentation-models-pytorch U-Net (input side divisible by ``2**depth``)."""
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=encoder, encoder_weights=None, encoder_depth=depth,
                    decoder_channels=tuple(decoder_channels), in_channels=1, classes=num_classes)  # fmt: skip


@torch.no_grad()
def predict_volume(net: nn.Module, volume: np.ndarray, size: int, batch: int = 16) -> np.ndarray:
    """Labels ``uint8 [D, H, W]`` of a volume ``float [D, H, W]``, slice by slice: each slice resized to
    ``size × size`` (bilinear), model 1's logits resized back (bilinear), argmax."""
    device = next(net.parameters()).device
    d, h, w = volume.shape
    out = np.zeros((d, h, w), np.uint8)
    x_all = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    for s in range(0, d, batch):
        x = x_all[s : s + batch, None].to(device)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        logits = F.interpolate(net(x).float(), size=(h, w), mode="bilinear", align_corners=False)
        out[s : s + batch] = logits.argmax(1).to(torch.uint8).cpu().numpy()
    return out


# ---------------------------------------------------------------------------- the method


OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class ABDConfig:
    """Every knob of ABD and its two baselines (the ABD-only ones say so). Presets: paper, cpu, tiny."""

    iterations: int = 30000
    """training steps in all"""
    epoch_iters: int = 200
    """steps per epoch: the state is saved (resume point) and the learning curve scored after each epoch"""
    labelled_bs: int = 8
    """labelled slices per step"""
    unlabelled_bs: int = 8
    """unlabelled slices per step (not loaded by supervised-only)"""
    input_size: int = 224
    """side (px) every slice is resized to, in training and prediction"""
    encoder: str = "resnet18"
    """segmentation-models-pytorch encoder of both U-Nets (random init), e.g. resnet18, tu-mobilenetv3_small_100"""
    encoder_depth: int = 5
    """encoder stages; input_size must be divisible by 2**encoder_depth"""
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    """U-Net decoder widths, one per encoder stage"""
    optimizer: str = "sgd"
    """sgd (momentum, the paper) or adamw"""
    lr: float = 0.01
    """base learning rate, decayed by (1 - step / iterations)^0.9"""
    momentum: float = 0.9
    weight_decay: float = 1e-4
    consistency: float = 0.1
    """largest weight λ of the cross pseudo-label Dice terms (reached at the end of the ramp-up)"""
    rampup_iters: int = 30000
    """iterations of the sigmoid ramp-up of λ (0 = none)"""
    rampup_step: int = 150
    """λ is held constant over blocks of this many iterations (the paper's ramp "epochs")"""
    patch_size: int = 56
    """ABD: side (px) of a displaced patch; input_size must be a multiple (224 / 56 = a 4 × 4 grid)"""
    top_k: int = 4
    """ABD-R: candidates among each view's most reliable patches"""
    abd_i_prob: float = 0.5
    """ABD-I: probability that a labelled sample is displaced"""
    abd_i_weight: float = 2.0
    """ABD-I: weight of the displaced labelled samples' ½(CE + Dice)"""
    abd_i_iters: int = 20000
    """ABD-I: the loss is used for iterations 0 .. abd_i_iters - 1 only"""
    augment: SliceAugment = field(default_factory=SliceAugment)
    """the base augmentations (weak and strong views)"""

    def check(self) -> None:
        if self.iterations < 1 or self.epoch_iters < 1 or self.iterations % self.epoch_iters:
            raise ConfigError(f"iterations ({self.iterations}) must be a positive multiple of epoch_iters "
                              f"({self.epoch_iters})")  # fmt: skip
        if self.labelled_bs < 1 or self.unlabelled_bs < 1:
            raise ConfigError("labelled_bs and unlabelled_bs must be >= 1")
        if self.input_size % (2**self.encoder_depth):
            raise ConfigError(f"input_size {self.input_size} is not divisible by 2**encoder_depth = "
                              f"{2**self.encoder_depth}")  # fmt: skip
        if len(self.decoder_channels) != self.encoder_depth:
            raise ConfigError(f"decoder_channels needs {self.encoder_depth} widths (one per encoder stage), "
                              f"got {len(self.decoder_channels)}")  # fmt: skip
        if self.input_size % self.patch_size:
            raise ConfigError(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        n = (self.input_size // self.patch_size) ** 2
        if not 1 <= self.top_k <= n:
            raise ConfigError(f"top_k must be in 1..{n} (patches per image), got {self.top_k}")
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)


PAPER = ABDConfig()
"""the reference schedule (train_ACDC_Cross_Teaching.py): 30k steps of 8 + 8 slices at 224 px, SGD 0.01, poly"""

PRESETS: dict[str, ABDConfig] = {
    "paper": PAPER,
    # minutes on 2 CPU cores (measured in docs/methods/abd.md): a ResNet-10-T U-Net, 96 px, 4 + 4 slices,
    # 300 steps; AdamW at 3e-3 (picked on supervised-only pilots: 1e-2 was worse; the encoder too: ResNet-10-T
    # learnt fastest per CPU second of resnet18, regnetx_002, mobilenetv3_small_100); the ramp-up and the ABD-I
    # cut-off keep the paper's proportions of the schedule (the whole run; its first 2/3)
    "cpu": dataclasses.replace(
        PAPER, iterations=300, epoch_iters=50, labelled_bs=4, unlabelled_bs=4, input_size=96,
        encoder="tu-resnet10t", decoder_channels=(64, 32, 16, 16, 8), optimizer="adamw", lr=3e-3,
        rampup_iters=300, rampup_step=1, patch_size=24, abd_i_iters=200,
    ),
    "tiny": dataclasses.replace(
        PAPER, iterations=2, epoch_iters=1, labelled_bs=2, unlabelled_bs=2, input_size=32,
        encoder="tu-mobilenetv3_small_050", encoder_depth=3, decoder_channels=(16, 8, 8), optimizer="adamw",
        lr=1e-3, rampup_iters=2, rampup_step=1, patch_size=16, top_k=2, abd_i_iters=2,
    ),
}  # fmt: skip


class SemiSupervisedMethod(Method):
    """ABD and its baselines (``mode``) on the semi-supervised task; hooks used by ``train-semi``/``eval-volumes``."""

    task = "semi-supervised"
    paper = "Chi et al., CVPR 2024"
    Config = ABDConfig
    presets = PRESETS
    mode: ClassVar[str] = "abd"

    # ---------------------------------------------------------------- training
    def build(self, backbone: Any = None, num_classes: int = 4) -> TwoNets:
        """Model 1 (and model 2 unless supervised-only); ``backbone`` is unused (the config names the encoder)."""
        c = self.cfg
        nets = [build_unet(c.encoder, c.encoder_depth, c.decoder_channels, num_classes)]
        if self.mode != "supervised-only":
            nets.append(build_unet(c.encoder, c.encoder_depth, c.decoder_channels, num_classes))
        return TwoNets(*nets)

    def optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        c = self.cfg
        if c.optimizer == "sgd":
            return torch.optim.SGD(net.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.AdamW(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    def lr_factor(self, steps_per_epoch: int) -> Callable[[int], float]:
        return poly_lr(self.cfg.iterations)

    @property
    def epochs(self) -> int:
        return self.cfg.iterations // self.cfg.epoch_iters

    def loader(self, data: PatientSplit, ctx: LoaderContext) -> LoaderFactory:  # type: ignore[override]
        """Two streams over ``data`` (labelled / unlabelled slices); supervised-only reads the labelled one only."""
        c = self.cfg
        sup = self.mode == "supervised-only"
        labelled = SliceViews(data.ds, data.labelled, c.input_size, c.augment, strong=not sup)
        unlabelled = None if sup else SliceViews(data.ds, data.unlabelled, c.input_size, c.augment, labelled=False)
        return two_stream_batches(labelled, unlabelled, labelled_bs=c.labelled_bs, unlabelled_bs=0 if sup else
                                  c.unlabelled_bs, steps_per_epoch=c.epoch_iters, seed=ctx.seed, rank=ctx.rank,
                                  world=ctx.world, workers=ctx.workers)  # fmt: skip

    def step(self, net: nn.Module, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        c = self.cfg
        n, it = int(batch["n_labelled"]), int(batch["iteration"])
        xw, yw = batch["image"], batch["label"]
        if self.mode == "supervised-only":
            sup = supervised_loss(net(xw[:n], 1), yw[:n])
            return {"loss": sup, "sup": sup.detach()}
        xs, ys = batch["image_strong"], batch["label_strong"]
        z1, z2 = net(xw, 1), net(xs, 2)
        p1, p2 = z1.softmax(1), z2.softmax(1)
        sup = supervised_loss(z1[:n], yw[:n], p1[:n]) + supervised_loss(z2[:n], ys[:n], p2[:n])
        cps = cross_supervision(p1[n:], p2[n:]) + cross_supervision(p2[n:], p1[n:])
        lam = rampup_weight(it, c.consistency, c.rampup_iters, c.rampup_step)
        out = {"sup": sup.detach(), "cps": cps.detach(), "lambda": torch.tensor(lam)}
        loss = sup + lam * cps
        if self.mode == "abd":
            loss = loss + self._displaced(net, xw, yw, xs, ys, z1.detach(), z2.detach(), n, it, lam, out)
        out["loss"] = loss
        return out

    def _displaced(self, net, xw, yw, xs, ys, z1, z2, n, it, lam, out) -> torch.Tensor:
        """ABD-I (labelled) and ABD-R (unlabelled) samples, both models on them, their weighted losses."""
        c, p = self.cfg, self.cfg.patch_size
        r1, r2 = patch_reliability(z1.softmax(1).amax(1), p), patch_reliability(z2.softmax(1).amax(1), p)
        d_i = inverse_displacement(r1[:n], r2[:n])
        moved = torch.rand(n, device=xw.device) < c.abd_i_prob
        xi1, xi2 = bidirectional_displace(xw[:n], xs[:n], d_i, p, moved)
        yi1, yi2 = bidirectional_displace(yw[:n], ys[:n], d_i, p, moved)
        d_r = reliable_displacement(r1[n:], r2[n:], patch_profile(z1[n:], p), patch_profile(z2[n:], p), c.top_k)
        xr1, xr2 = bidirectional_displace(xw[n:], xs[n:], d_r, p)
        x = torch.cat([xi1, xi2, xr1, xr2])
        o1, o2 = net(x, 1), net(x, 2)
        q1, q2 = o1.softmax(1), o2.softmax(1)
        m, yi = 2 * n, torch.cat([yi1, yi2])
        abd_i = supervised_loss(o1[:m], yi, q1[:m]) + supervised_loss(o2[:m], yi, q2[:m])
        abd_r = cross_supervision(q1[m:], q2[m:]) + cross_supervision(q2[m:], q1[m:])
        w_i = c.abd_i_weight if it < c.abd_i_iters else 0.0
        out.update(abd_i=abd_i.detach(), abd_r=abd_r.detach())
        return w_i * abd_i + lam * abd_r

    # ---------------------------------------------------------------- prediction
    def predict_volume(self, net: nn.Module, volume: np.ndarray) -> np.ndarray:
        """Model 1's labels ``uint8 [D, H, W]`` of a volume ``float [D, H, W]`` (see :func:`predict_volume`)."""
        return predict_volume(net, volume, self.cfg.input_size)


@register_method
class ABDMethod(SemiSupervisedMethod):
    name = "abd"
    description = "ABD: bidirectional patch displacement on cross teaching (semi-supervised medical)"
    mode = "abd"


@register_method
class CrossTeachingMethod(SemiSupervisedMethod):
    name = "cross-teaching"
    description = "cross teaching between two U-Nets (ABD's baseline, semi-supervised medical)"
    paper = "Luo et al., MIDL 2022 (as the base of Chi et al., CVPR 2024)"
    mode = "cross-teaching"


@register_method
class SupervisedOnlyMethod(SemiSupervisedMethod):
    name = "supervised-only"
    description = "one U-Net on the labelled slices only (semi-supervised baseline)"
    paper = ""
    mode = "supervised-only"
