"""WeCLIP: a frozen CLIP as the backbone of a single-stage WSSS model (the ``weclip`` method).

Paper: Zhang, Yu, Wei, Zhao, Xiao, "Frozen CLIP: A Strong Backbone for Weakly Supervised Semantic
Segmentation", CVPR 2024. Independent implementation from the paper and the facts read in the official code
(zbf1991/WeCLIP @0f47db4; no licence, nothing copied).

One training step, for images ``[B, 3, S, S]`` with image-level labels ``[B, K]``:

1. the frozen CLIP ViT runs without gradients and keeps every block's tokens and the last blocks' attention;
2. :class:`LayerFusion` maps the patch tokens of blocks ``0 .. L-2`` through one MLP each, concatenates them and
   mixes them with a 1×1 conv → ``F [B, dim, h, w]``; the decoder affinity is ``A_f = sigmoid(FᵀF) [B, N, N]``;
3. :class:`TransformerDecoder` (post-LN blocks over the ``N`` tokens of ``F``, then a 1×1 conv) → logits
   ``[B, 1 + K, h, w]``;
4. the online pseudo label of each image (:meth:`WeCLIPMethod.pseudo_labels`, no gradients into the decoder):
   CLIP-ES GradCAMs of the image's *labelled* classes from the frozen CLIP's last block, refined by the attention
   affinity — after ``rfm_start_step`` optimiser steps by the RFM (:mod:`weakseg.cams.weclip`) — background
   ``1 − max``, PAR, argmax;
5. loss = balanced CE of the upsampled logits on the pseudo labels + ``aff_weight`` (0.1) × the affinity loss of
   ``A_f`` against the pseudo labels' affinity (:mod:`weakseg.losses.weclip`).

Only the fusion and the decoder train (and are saved); the CLIP is held outside the module tree, as in CLIP-ES.
Prediction (:class:`WeCLIPPredictor`): the decoder's logits over the make-cams views (scales × flip), averaged,
softmax over background + the image's labelled classes; the class channels are the "CAMs". Its ``segment`` is
WeCLIP's own test prediction: the same averaged logits, softmax over *all* classes (no image labels), argmax. Both
take an optional dense CRF (``crf=true``) with the official test script's parameters (:data:`WECLIP_CRF`), which
the released script ships commented out and the paper's 76.4 VOC val uses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.backbones.clip import ClipVisual, tiny_clip
from weakseg.backbones.clip_text import VOC_BACKGROUND_WORDS, text_embeddings
from weakseg.cams.cam import View, undo_view
from weakseg.cams.clip_es import attention_affinity, box_mask, minmax, refine_cam
from weakseg.cams.weclip import background_scores, rfm_active, rfm_affinity, scores_to_label, transition
from weakseg.data.dataset import SegDataset
from weakseg.data.recipes import image_batches
from weakseg.data.transforms import Jitter, to_tensor
from weakseg.errors import ConfigError
from weakseg.losses.weclip import affinity_loss, balanced_ce, label_affinity
from weakseg.methods.base import CamPredictor, LoaderContext, LoaderFactory, Method, register_method
from weakseg.methods.clip_es import (
    SYNTH_BACKGROUND_WORDS,
    ClipESConfig,
    ToyClipConfig,
    class_prompts,
    clip_weights_record,
    last_block_gradcam,
    load_clip_weights,
)
from weakseg.refine.crf import crf_refine
from weakseg.refine.par import par_refine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeCLIPConfig:
    """WeCLIP (defaults: the official VOC recipe where it has one, sized for the toy CLIP on CPU)."""

    clip_weights: str = ""
    """frozen CLIP: a weights file (OpenAI ViT-B-16.pt, or an open_clip checkpoint with clip_model) or a folder
    written by `weakseg clip pretrain`; empty = the embedded toy CLIP architecture with random weights (seed; only
    for tests: its CAMs mean nothing)"""
    clip_model: str = ""
    """open_clip architecture of clip_weights (e.g. ViT-B-16); empty = OpenAI layout or the folder's config"""
    toy: ToyClipConfig = field(default_factory=ToyClipConfig)
    """architecture of the random toy CLIP (clip_weights empty)"""
    seed: int = 0
    """seed of the random toy CLIP and of the decoder's initialisation"""
    input_size: int = 128
    """side (px) of the square training input (a multiple of the CLIP patch size); prediction: long side at scale 1"""
    output_stride: int = 16
    """not used (train-cls builds its backbone argument with it; WeCLIP's backbone is the CLIP)"""
    # ------------------------------------------------------------ network
    fuse_layers: int = 0
    """CLIP blocks whose tokens are fused: the first fuse_layers (0 = all but the last, WeCLIP's 11 of 12)"""
    dim: int = 256
    """width of the fusion output and of the decoder"""
    decoder_layers: int = 3
    """transformer blocks of the decoder"""
    decoder_heads: int = 8
    """attention heads of the decoder"""
    dropout: float = 0.1
    """Dropout2d after the fusion"""
    # ------------------------------------------------------------ online pseudo labels
    templates: tuple[str, ...] = ("a photo of {}.",)
    """prompt templates (WeCLIP: 'a clean origami {}.')"""
    articles: bool = True
    """put 'a'/'an' before each class phrase"""
    synonyms: bool = True
    """class phrases with synonyms (as clip-es)"""
    background: tuple[str, ...] = SYNTH_BACKGROUND_WORDS
    """background rows of the CLIP softmax (WeCLIP on VOC: CLIP-ES's 25 words)"""
    attn_layers: int = 8
    """before the RFM: average the attention of this many last blocks"""
    rfm_layers: int = 6
    """RFM: candidate attention maps of this many last blocks (WeCLIP: 6 on VOC, 10 on COCO)"""
    rfm_start_step: int = 15000
    """optimiser steps after which the RFM refines the pseudo labels (-1: never; counted by optimiser steps, not
    forward passes)"""
    sinkhorn_iters: int = 3
    """Sinkhorn rounds of the transition matrix"""
    affinity_power: int = 2
    """matrix power of the transition matrix"""
    box_threshold: float = 0.4
    """box mask: boxes of the regions where the CAM >= this × its max (0.4 VOC, 0.7 COCO)"""
    bg_power: float = 1.0
    """background score (1 − max CAM)^bg_power"""
    par_iters: int = 20
    """PAR iterations on the pseudo-label scores (0: none)"""
    # ------------------------------------------------------------ losses
    aff_weight: float = 0.1
    """weight of the affinity loss"""
    aff_radius: int = 8
    """affinity loss: pairs within this Chebyshev radius (tokens)"""
    # ------------------------------------------------------------ optimisation
    epochs: int = 8
    """passes over the split"""
    iterations: int = 0
    """length of the warm-up + poly schedule in optimiser steps (0: epochs × steps per epoch); the lr is 0 after it"""
    batch_size: int = 8
    """images per step"""
    lr: float = 2e-4
    """AdamW base learning rate (the fusion and decoder get lr × decoder_lr_mult)"""
    decoder_lr_mult: float = 10.0
    """learning-rate multiplier of the trained parts (WeCLIP: 10, i.e. 2e-3)"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    warmup: int = 50
    """linear warm-up steps (from 1e-6 × lr)"""
    poly_power: float = 1.0
    """power of the poly decay"""
    jitter: Jitter = field(default_factory=lambda: Jitter(0.0, 0.0, 0.0, 0.0))
    """colour jitter of the training images (off: the CLIP is frozen)"""
    # ------------------------------------------------------------ prediction
    crf: bool = False
    """dense CRF on the predicted probabilities (extra 'crf'; WeCLIP's test CRF: 10 iterations, Gaussian 3/3,
    bilateral rgb 5 / weight 4)"""
    crf_bi_xy: float = 64.0
    """spatial std (px) of the CRF's bilateral kernel (WeCLIP: 64 at a 512-px long side; scale it with the image)"""

    def check(self) -> None:
        if self.dim % self.decoder_heads:
            raise ConfigError(f"dim {self.dim} is not divisible by decoder_heads {self.decoder_heads}")
        if min(self.attn_layers, self.rfm_layers, self.sinkhorn_iters, self.affinity_power, self.batch_size) < 1:
            raise ConfigError("attn_layers, rfm_layers, sinkhorn_iters, affinity_power and batch_size must be >= 1")
        if not 0 < self.box_threshold <= 1:
            raise ConfigError(f"box_threshold must be in (0, 1], got {self.box_threshold}")
        if self.crf_bi_xy <= 0:
            raise ConfigError(f"crf_bi_xy must be > 0 (pixels), got {self.crf_bi_xy}")
        if not self.clip_weights and self.input_size % self.toy.patch_size:
            raise ConfigError(f"input_size {self.input_size} is not a multiple of toy.patch_size {self.toy.patch_size}")

    def prompt_config(self) -> ClipESConfig:
        """The CLIP-ES config whose text classifier this config describes."""
        return ClipESConfig(
            templates=self.templates, articles=self.articles, synonyms=self.synonyms, background=self.background
        )


PRESETS: dict[str, WeCLIPConfig] = {
    # the toy CLIP at 128 px: pass clip_weights=<folder of `weakseg clip pretrain`> (a random CLIP teaches nothing)
    "cpu192": WeCLIPConfig(dim=64, decoder_layers=1, decoder_heads=4, rfm_start_step=200, warmup=20),
    # the paper on VOC (pass clip_weights=ViT-B-16.pt): crop 320, batch 4, 30k iterations (≈ 11.3 epochs of
    # train_aug's 10,582 images), AdamW 2e-4 (decoder ×10), wd 0.01, warm-up 50, poly 1.0, RFM after 15k steps
    "paper": WeCLIPConfig(
        input_size=320,
        batch_size=4,
        epochs=12,
        iterations=30000,
        templates=("a clean origami {}.",),
        articles=False,
        background=VOC_BACKGROUND_WORDS,
    ),  # fmt: skip
    # seconds: tests
    "tiny": WeCLIPConfig(
        input_size=32,
        toy=ToyClipConfig(embed_dim=32, patch_size=8, width=64, layers=3, text_width=64, text_layers=1),
        dim=16,
        decoder_layers=1,
        decoder_heads=2,
        attn_layers=2,
        rfm_layers=2,
        rfm_start_step=1,
        epochs=1,
        batch_size=4,
        par_iters=2,
        warmup=1,
    ),  # fmt: skip
}


# ------------------------------------------------------------------------------------------------ network
class LayerFusion(nn.Module):
    """WeCLIP's fusion of intermediate CLIP layers: ``L`` token tensors ``[B, 1+N, D]`` (class token first) →
    ``F [B, dim, h, w]``. Per layer ``Linear(D, dim) → ReLU → Linear(dim, dim)`` on the patch tokens, concatenation
    over the layers, a 1×1 conv to ``dim``, Dropout2d."""

    def __init__(self, width: int, layers: int, dim: int, dropout: float = 0.1):
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(width, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim)) for _ in range(layers)
        )
        self.mix = nn.Conv2d(layers * dim, dim, 1)
        self.drop = nn.Dropout2d(dropout)

    def forward(self, tokens: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        if len(tokens) != len(self.mlps):
            raise ValueError(f"LayerFusion expects {len(self.mlps)} layers, got {len(tokens)}")
        h, w = grid
        maps = [
            mlp(t[:, 1:].float()).transpose(1, 2).reshape(t.shape[0], -1, h, w)
            for mlp, t in zip(self.mlps, tokens, strict=True)
        ]
        return self.drop(self.mix(torch.cat(maps, dim=1)))


def feature_affinity(feats: torch.Tensor) -> torch.Tensor:
    """WeCLIP's decoder affinity ``sigmoid(FᵀF)``: ``[B, dim, h, w]`` → ``[B, N, N]`` in (0, 1)."""
    f = feats.flatten(2)
    return torch.sigmoid(f.transpose(1, 2) @ f)


class TransformerDecoder(nn.Module):
    """WeCLIP's decoder: ``layers`` post-LN transformer blocks (``heads`` heads, MLP ×4, GELU) over the ``N`` tokens
    of ``F [B, dim, h, w]``, then a 1×1 conv → logits ``[B, classes, h, w]``."""

    def __init__(self, dim: int, layers: int, heads: int, classes: int):
        super().__init__()
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Conv2d(dim, classes, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, d, h, w = feats.shape
        x = self.blocks(feats.flatten(2).transpose(1, 2))
        return self.head(x.transpose(1, 2).reshape(b, d, h, w))


@dataclass
class WeCLIPOutput:
    """One forward pass: ``logits [B, 1+K, h, w]``, decoder affinity ``aff [B, N, N]``, the frozen CLIP's last
    block input ``last_in [B, 1+N, D]``, the attention maps of its last blocks ``attn [B, L', 1+N, 1+N]`` (last
    block last) and the token ``grid``."""

    logits: torch.Tensor
    aff: torch.Tensor
    last_in: torch.Tensor
    attn: torch.Tensor
    grid: tuple[int, int]


class WeCLIPNet(nn.Module):
    """Frozen CLIP (outside the module tree: not saved, never trained) + :class:`LayerFusion` +
    :class:`TransformerDecoder`. ``opt_steps`` (a saved buffer) counts the optimiser steps taken, for the RFM."""

    def __init__(self, clip: nn.Module, num_classes: int, cfg: WeCLIPConfig):
        super().__init__()
        visual = ClipVisual(clip, freeze=True)
        self._frozen: tuple[ClipVisual, ...] = (visual,)
        self.clip_model_ref: tuple[nn.Module, ...] = (clip.eval().requires_grad_(False),)
        n = visual.num_layers
        self.fuse_count = cfg.fuse_layers or max(1, n - 1)
        if not 1 <= self.fuse_count <= n:
            raise ConfigError(f"fuse_layers {cfg.fuse_layers} out of range for a {n}-block CLIP")
        self.attn_count = min(n, max(cfg.attn_layers, cfg.rfm_layers))
        self.fusion = LayerFusion(visual.width, self.fuse_count, cfg.dim, cfg.dropout)
        self.decoder = TransformerDecoder(cfg.dim, cfg.decoder_layers, cfg.decoder_heads, num_classes + 1)
        self.register_buffer("opt_steps", torch.zeros((), dtype=torch.long))

    @property
    def visual(self) -> ClipVisual:
        return self._frozen[0]

    @property
    def clip_model(self) -> nn.Module:
        return self.clip_model_ref[0]

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        super()._apply(fn, recurse)
        self.clip_model._apply(fn, recurse)
        self.visual.mean, self.visual.std = fn(self.visual.mean), fn(self.visual.std)
        return self

    def forward(self, x: torch.Tensor) -> WeCLIPOutput:
        """Images ``[B, 3, H, W]`` in [0, 1] (``H``, ``W`` multiples of the patch size) → :class:`WeCLIPOutput`."""
        v = self.visual
        n = v.num_layers
        first_attn = n - self.attn_count
        kept: list[torch.Tensor] = []
        maps: list[torch.Tensor] = []
        with torch.no_grad():
            tokens, grid = v.embed(x)
            for i, block in enumerate(v.blocks):
                if i == n - 1:
                    last_in = tokens
                if i >= first_attn:
                    tokens, a = v._block_with_attn(block, tokens)
                    maps.append(a)
                else:
                    tokens = v._block(block, tokens)
                if i < self.fuse_count:
                    kept.append(tokens)
        feats = self.fusion(kept, grid)
        aff = feature_affinity(feats)
        logits = self.decoder(feats)
        return WeCLIPOutput(logits, aff, last_in, torch.stack(maps, dim=1), grid)


# ------------------------------------------------------------------------------------------------ pseudo labels
def online_label(
    visual: ClipVisual,
    image: torch.Tensor,
    last_in: torch.Tensor,
    attn: torch.Tensor,
    dec_aff: torch.Tensor | None,
    classes: Sequence[int],
    text: torch.Tensor,
    scale: torch.Tensor,
    rows: Sequence[int],
    grid: tuple[int, int],
    cfg: WeCLIPConfig,
) -> torch.Tensor:
    """WeCLIP's online pseudo label of one image ``[3, H, W]`` in [0, 1] → ``long [H, W]`` (0 = background,
    ``c + 1`` = class ``c``; only ``classes``, the image-level labels, can appear).

    ``last_in`` ``[1, 1+N, D]``: the frozen CLIP's last block input; ``attn`` ``[L', 1+N, 1+N]``: its last blocks'
    attention (last block last); ``dec_aff`` ``[N, N]`` the decoder affinity, or None before the RFM switch;
    ``text`` ``[R, E]`` unit text rows, ``rows``: the background rows' indices (the softmax runs over ``classes`` +
    ``rows``).
    """
    size = tuple(image.shape[-2:])
    if not classes:
        return torch.zeros(size, dtype=torch.long, device=image.device)
    fg = list(classes)
    softmax_rows = [fg + list(rows) for _ in fg]
    cams, _, _ = last_block_gradcam(visual, last_in, text, scale, softmax_rows, list(range(len(fg))), grid)
    cams = minmax(cams)  # [K, h, w]
    if dec_aff is None:
        t = attention_affinity(attn[-cfg.attn_layers :], cfg.sinkhorn_iters, cfg.affinity_power)
    else:
        t = transition(rfm_affinity(attn[-cfg.rfm_layers :, 1:, 1:], dec_aff), cfg.sinkhorn_iters, cfg.affinity_power)
    masks = torch.stack([box_mask(c, cfg.box_threshold) for c in cams])
    cams = refine_cam(cams, t, masks)
    cams = F.interpolate(cams[None], size, mode="bilinear", align_corners=False)[0]
    scores = background_scores(cams, cfg.bg_power)
    if cfg.par_iters > 0:
        scores = par_refine(image[None], scores[None], iters=cfg.par_iters)[0]
    return scores_to_label(scores, fg)


# ------------------------------------------------------------------------------------------------ prediction
WECLIP_CRF: dict[str, float] = {"iters": 10, "pos_xy_std": 3.0, "pos_weight": 3.0, "bi_rgb_std": 5.0, "bi_weight": 4.0}
"""The official WeCLIP test script's DenseCRF parameters besides the bilateral spatial std (``crf_bi_xy``)."""


def crf_probs(image: np.ndarray, probs: torch.Tensor, bi_xy: float) -> torch.Tensor:
    """WeCLIP's test-time dense CRF: ``uint8 [H, W, 3]`` image, probabilities ``[C, H, W]`` (summing to 1 over
    ``C``) → CRF marginals ``[C, H, W]`` (float32, on ``probs``' device)."""
    iters = int(WECLIP_CRF["iters"])
    rest = {k: v for k, v in WECLIP_CRF.items() if k != "iters"}
    out = crf_refine(image, probs.detach().float().cpu().numpy(), iters=iters, bi_xy_std=bi_xy, **rest)
    return torch.from_numpy(out).to(probs.device)


def view_input(image: torch.Tensor, long_side: int, patch: int, flip: bool) -> torch.Tensor:
    """``[1, 3, H, W]`` → resized so the long side is ``long_side`` and both sides are multiples of ``patch``
    (aspect ratio kept, as WeCLIP's multi-scale test), mirrored if ``flip``."""
    h, w = image.shape[-2:]
    s = long_side / max(h, w)
    size = (max(patch, round(h * s / patch) * patch), max(patch, round(w * s / patch) * patch))
    x = F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=size[0] < h)
    return x.flip(-1) if flip else x


class WeCLIPPredictor(CamPredictor):
    """Per-class maps of image ``i`` from WeCLIP's decoder: logits of every view (long side ``input_size × scale``,
    flipped or not) mapped back and averaged, then the softmax over background + the asked classes; returns the
    asked classes' probabilities ``[K', H, W]`` in [0, 1]."""

    def __init__(self, net: WeCLIPNet, ds: SegDataset, views: Sequence[View], cfg: WeCLIPConfig, device: torch.device):
        self.net, self.ds, self.views, self.cfg, self.device = net, ds, list(views), cfg, device

    @torch.no_grad()
    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Image ``[1, 3, H, W]`` → view-averaged logits ``[1 + K, H, W]``."""
        size = tuple(image.shape[-2:])
        total = None
        for v in self.views:
            x = view_input(image, max(8, round(self.cfg.input_size * v.scale)), self.net.visual.patch_size, v.flip)
            out = undo_view(self.net(x).logits, v.flip, size)[0]
            total = out if total is None else total + out
        return total / len(self.views)

    def __call__(self, i: int, classes: Sequence[int]) -> torch.Tensor:
        raw = self.ds.load_image(i)
        image = to_tensor(raw)[None].to(self.device)
        if not classes:
            return image.new_zeros((0, *image.shape[-2:]))
        logits = self.logits(image)
        probs = logits[[0, *(int(c) + 1 for c in classes)]].softmax(0)
        if self.cfg.crf:
            probs = crf_probs(raw, probs, self.cfg.crf_bi_xy)
        return probs[1:].clamp(0, 1)

    def segment(self, image: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """WeCLIP's own prediction of a ``uint8 [H, W, 3]`` image, without its labels: softmax of the view-averaged
        logits over background + every class (then the CRF with ``crf``) → ``(probs [1 + K, H, W], uint8 [H, W]
        mask with 0 = background, c + 1 = class c)``."""
        probs = self.logits(to_tensor(image)[None].to(self.device)).softmax(0)
        if self.cfg.crf:
            probs = crf_probs(image, probs, self.cfg.crf_bi_xy)
        return probs, probs.argmax(0).to(torch.uint8).cpu().numpy()


# ------------------------------------------------------------------------------------------------ the method
@register_method
class WeCLIPMethod(Method):
    """WeCLIP: frozen CLIP + fusion + transformer decoder trained on online CLIP-ES/RFM pseudo labels."""

    name = "weclip"
    task = "tags"
    description = "WeCLIP: frozen CLIP, layer fusion + transformer decoder on online CLIP-ES/RFM pseudo labels"
    paper = "Zhang et al.: Frozen CLIP: A Strong Backbone for WSSS, CVPR 2024"
    Config = WeCLIPConfig
    presets = PRESETS

    def __init__(self, config: WeCLIPConfig):
        super().__init__(config)
        self.class_names: tuple[str, ...] = ()
        self._text: dict[Any, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def load_clip(self) -> nn.Module:
        if self.cfg.clip_weights:
            return load_clip_weights(self.cfg.clip_weights, self.cfg.clip_model)
        log.warning(
            "weclip: no clip_weights, so the frozen CLIP is a RANDOM toy CLIP and its pseudo labels mean nothing "
            "(tests only); run `weakseg clip pretrain` and pass clip_weights=<its folder>, or a real CLIP file"
        )
        return tiny_clip(self.cfg.seed, self.cfg.toy.model_cfg(self.cfg.input_size))

    def build(self, backbone: Any, num_classes: int) -> WeCLIPNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            return WeCLIPNet(self.load_clip(), num_classes, self.cfg)

    def optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        c = self.cfg
        params = [p for p in net.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        rest = [p for p in params if p.dim() < 2]
        lr = c.lr * c.decoder_lr_mult
        groups = [{"params": decay, "weight_decay": c.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999))

    def lr_factor(self, steps_per_epoch: int):
        c = self.cfg
        total = c.iterations or max(1, steps_per_epoch * c.epochs)
        warm = min(c.warmup, total - 1)

        def factor(step: int) -> float:
            if step < warm:  # linear from 1e-6 to 1 (WeCLIP's warm-up ratio)
                return 1e-6 + (1 - 1e-6) * step / warm
            return max(0.0, 1 - step / total) ** c.poly_power

        return factor

    def loader(self, ds: SegDataset, ctx: LoaderContext) -> LoaderFactory:
        self.class_names = tuple(ds.class_names)
        c = self.cfg
        return image_batches(
            ds, input_size=c.input_size, jitter=c.jitter, batch_size=c.batch_size, seed=ctx.seed, rank=ctx.rank,
            world=ctx.world, workers=ctx.workers,
        )  # fmt: skip

    def describe_data(self) -> dict[str, Any]:
        if not self.cfg.clip_weights:
            return {"clip": {"random_toy": True, "seed": self.cfg.seed}}
        return clip_weights_record(self.cfg.clip_weights, self.cfg.clip_model)

    def text(self, net: WeCLIPNet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(unit text rows [K + B, E], logit scale, K)`` of the class names, cached per device."""
        if not self.class_names:
            raise ConfigError("weclip: loader() must run before step() (it reads the class names)")
        if device not in self._text:
            prompts = class_prompts(self.class_names, self.cfg.prompt_config())
            clip = net.clip_model
            text = text_embeddings(clip, prompts).to(device)
            self._text[device] = (text, clip.logit_scale.detach().exp().to(device), prompts.num_classes)
        return self._text[device]

    def pseudo_labels(self, net: WeCLIPNet, images: torch.Tensor, labels: torch.Tensor, out: WeCLIPOutput,
                      use_rfm: bool) -> torch.Tensor:  # fmt: skip
        """Online pseudo labels ``long [B, S, S]`` of a batch from its image-level ``labels`` ``[B, K]`` (never
        from masks); the decoder affinity enters only when ``use_rfm``."""
        text, scale, k = self.text(net, images.device)
        rows = list(range(k, text.shape[0]))
        out_labels = []
        for b in range(images.shape[0]):
            classes = torch.nonzero(labels[b] > 0.5).flatten().tolist()
            dec_aff = out.aff[b].detach() if use_rfm else None
            out_labels.append(
                online_label(
                    net.visual,
                    images[b],
                    out.last_in[b : b + 1],
                    out.attn[b],
                    dec_aff,
                    classes,
                    text,
                    scale,
                    rows,
                    out.grid,
                    self.cfg,
                )  # fmt: skip
            )
        return torch.stack(out_labels)

    def step(self, net: nn.Module, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        model: WeCLIPNet = net.module if hasattr(net, "module") else net
        images = batch["image"]
        out = net(images)
        steps = int(model.opt_steps)
        use_rfm = rfm_active(steps, self.cfg.rfm_start_step)
        pseudo = self.pseudo_labels(model, images, batch["label"], out, use_rfm)
        logits = F.interpolate(out.logits, pseudo.shape[-2:], mode="bilinear", align_corners=False)
        seg = balanced_ce(logits.float(), pseudo)
        small = F.interpolate(pseudo[:, None].float(), out.grid, mode="nearest")[:, 0].long()
        target, valid = label_affinity(small, self.cfg.aff_radius)
        aff = affinity_loss(out.aff.float(), target, valid)
        if model.training and torch.is_grad_enabled():
            model.opt_steps += 1  # one step() per optimiser update; prediction never comes here
        return {"loss": seg + self.cfg.aff_weight * aff, "seg": seg.detach(), "aff": aff.detach(),
                "rfm": torch.tensor(float(use_rfm))}  # fmt: skip

    def cam_predictor(
        self, net: nn.Module, ds: SegDataset, views: Sequence[View], device: torch.device, seed: int
    ) -> WeCLIPPredictor:
        return WeCLIPPredictor(net, ds, views, self.cfg, device)  # type: ignore[arg-type]
