"""CLIP-ES: CAMs of a frozen CLIP and a text classifier, refined by CLIP's own attention (the ``clip-es`` method).

Paper: Lin, Chen, Wang, Wu, Li, Lin, Liu, He, "CLIP is Also an Efficient Segmenter: A Text-Driven Approach for
Weakly Supervised Semantic Segmentation", CVPR 2023.

For image ``i`` with labels ``C``: CLIP's ViT runs blocks ``0 .. L-2`` without gradients; the last block runs on
``|C|`` copies of its input tokens at once; each copy ``k`` is scored as CLIP-ES scores an image (patch tokens
mean-pooled, ``ln_post``, ``proj``, cosine to the text rows × ``logit_scale``, softmax over the rows of the
image's classes plus background words) and its target is its own class's probability. One backward pass of the
sum gives every class's gradient at the last block's ``ln_1`` output, because the copies do not interact
(the official code runs one backward per class; ``tests/test_clip_es.py`` checks both agree). GradCAM on those
gradients (:func:`weakseg.cams.clip_es.gradcam_tokens`), then the attention-affinity refinement of
:mod:`weakseg.cams.clip_es`.

Where the CLIP comes from (``clip_weights``):

- a real CLIP file (OpenAI's ``ViT-B-16.pt``, or an open_clip checkpoint with ``clip_model``), or a folder written
  by ``weakseg clip pretrain``: ``train-cls`` trains nothing (its loader yields no step) and records the weights'
  path and digest; ``make-cams`` loads them.
- empty (the default): ``train-cls`` trains the *embedded toy CLIP* (a ~4 M parameter open_clip ViT, most of it the
  BPE token table) contrastively on the split's images with captions made from their labels
  (:mod:`weakseg.data.captions`), and stores it in ``cls/model.safetensors``. It is a stand-in that lets the
  pipeline run offline, not a CLIP: it has seen a few hundred images and ten class names.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.backbones.clip import CLIP_MEAN, CLIP_STD, ClipVisual, import_open_clip, load_clip, tiny_clip
from weakseg.backbones.clip_text import (
    COCO_CLIP_ES_PHRASES,
    VOC_BACKGROUND_WORDS,
    VOC_CLIP_ES_PHRASES,
    PromptSet,
    text_embeddings,
)
from weakseg.cams.cam import View, average_normalized, normalize_cams, undo_view
from weakseg.cams.clip_es import attention_affinity, box_mask, gradcam_tokens, minmax, refine_cam
from weakseg.data.captions import SYNTH_SYNONYMS, article, caption_match, make_captions
from weakseg.data.dataset import SegDataset
from weakseg.data.recipes import image_batches
from weakseg.data.transforms import Jitter, to_tensor
from weakseg.engine.artifacts import load_json
from weakseg.errors import ConfigError
from weakseg.losses.contrastive import multi_positive_clip_loss
from weakseg.methods.base import CamPredictor, LoaderContext, LoaderFactory, Method, register_method

CLIP_FILE = "clip.safetensors"
CLIP_CONFIG = "clip_config.json"

CLIP_ES_PHRASES: dict[str, tuple[str, ...]] = {**COCO_CLIP_ES_PHRASES, **VOC_CLIP_ES_PHRASES}
"""CLIP-ES's prompt phrase of each VOC / COCO class name (``'person with clothes,people,human'``, ...)."""

SYNTH_BACKGROUND_WORDS: tuple[str, ...] = ("background", "texture", "pattern", "noise", "stripes", "dots", "wall")
"""Background rows for the synthetic benchmark (its backgrounds are tinted, patterned planes)."""


@dataclass(frozen=True)
class ToyClipConfig:
    """The embedded toy CLIP (an open_clip ViT CLIP, OpenAI layout; its image side is the method's
    ``input_size``). Pooling is CLIP-ES's scoring: mean of the patch tokens, then ``ln_post`` and ``proj``."""

    embed_dim: int = 64
    """width of the joint image-text space"""
    patch_size: int = 8
    """pixels per side of one image token"""
    width: int = 128
    """ViT token width (heads of 64)"""
    layers: int = 4
    """ViT blocks"""
    text_width: int = 64
    """text transformer width (heads of 64)"""
    text_layers: int = 2
    """text transformer blocks"""
    context_length: int = 32
    """text tokens per caption (captions here are short; CLIP's is 77)"""
    pool: str = "avg"
    """image embedding in training: avg (ln_post of the patch mean, CLIP-ES's score) or tok (the class token, as
    OpenAI trained CLIP)"""

    def model_cfg(self, image_size: int) -> dict[str, Any]:
        """The open_clip model config (``clip_config.json``; ``load_clip(path, model_cfg=...)``)."""
        return {
            "embed_dim": self.embed_dim,
            "quick_gelu": True,
            "vision_cfg": {
                "image_size": image_size,
                "patch_size": self.patch_size,
                "width": self.width,
                "layers": self.layers,
                "head_width": 64,
                "pool_type": self.pool,
                "final_ln_after_pool": self.pool == "avg",
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": 49408,
                "width": self.text_width,
                "heads": max(1, self.text_width // 64),
                "layers": self.text_layers,
            },
        }


@dataclass(frozen=True)
class ClipESConfig:
    """CLIP-ES CAMs (defaults: the official code's values where it has one) + the embedded toy CLIP's training."""

    clip_weights: str = ""
    """CLIP to use: a weights file (OpenAI ViT-B-16.pt, or an open_clip checkpoint with clip_model) or a folder
    written by `weakseg clip pretrain`; empty = train the embedded toy CLIP in train-cls"""
    clip_model: str = ""
    """open_clip architecture of clip_weights (e.g. ViT-B-16); empty = OpenAI layout (read off the weights) or the
    folder's clip_config.json"""
    input_size: int = 128
    """side (px) of the square CLIP input at scale 1 (rounded to a multiple of the patch size)"""
    output_stride: int = 16
    """not used by CLIP (train-cls builds its backbone argument with it; CLIP-ES ignores that backbone)"""
    # ------------------------------------------------------------ text classifier
    templates: tuple[str, ...] = ("a photo of {}.",)
    """prompt templates (CLIP-ES: 'a clean origami {}.')"""
    articles: bool = True
    """put 'a'/'an' before each class phrase (the toy CLIP's captions have them)"""
    synonyms: bool = True
    """class phrases: the synthetic benchmark's synonyms (averaged) and CLIP-ES's phrases for VOC / COCO class
    names ('person with clothes,people,human'); off: the bare class names"""
    background: tuple[str, ...] = SYNTH_BACKGROUND_WORDS
    """background rows of the softmax (CLIP-ES on VOC: its 25 words, weakseg.backbones.clip_text)"""
    rows: str = "present"
    """softmax rows besides the background: present (the image's classes, CLIP-ES) or all (every class)"""
    # ------------------------------------------------------------ refinement
    refine: bool = True
    """attention-affinity refinement (off: the GradCAM alone)"""
    attn_layers: int = 8
    """average the attention of this many last blocks (all blocks when the CLIP has fewer)"""
    sinkhorn_iters: int = 3
    """Sinkhorn rounds (columns, then rows)"""
    affinity_power: int = 2
    """matrix power of the symmetrised transition matrix"""
    box_threshold: float = 0.4
    """box mask: boxes of the regions where the CAM >= this × its max (CLIP-ES: 0.4 VOC, 0.7 COCO)"""
    # ------------------------------------------------------------ toy CLIP training (clip_weights empty)
    toy: ToyClipConfig = field(default_factory=ToyClipConfig)
    """architecture of the embedded toy CLIP"""
    epochs: int = 12
    """contrastive epochs over the split (0 steps are run when clip_weights is set)"""
    batch_size: int = 16
    """images (and captions) per step"""
    lr: float = 5e-4
    """AdamW peak learning rate (linear warm-up over the first epoch, cosine decay to 0)"""
    weight_decay: float = 0.05
    """AdamW weight decay"""
    caption_all: float = 0.5
    """probability that a caption names all of the image's classes (else a random non-empty subset)"""
    jitter: Jitter = field(default_factory=lambda: Jitter(0.0, 0.0, 0.0, 0.0))
    """colour jitter of the training images (off: OpenAI's CLIP trained without it, and the synthetic classes' parts
    differ by colour)"""
    seed: int = 0
    """initialisation seed of the toy CLIP"""

    def check(self) -> None:
        if self.rows not in ("present", "all"):
            raise ConfigError(f"rows must be 'present' or 'all', got {self.rows!r}")
        if self.attn_layers < 1 or self.sinkhorn_iters < 1 or self.affinity_power < 1:
            raise ConfigError("attn_layers, sinkhorn_iters and affinity_power must be at least 1")
        if not 0 < self.box_threshold <= 1:
            raise ConfigError(f"box_threshold must be in (0, 1], got {self.box_threshold}")
        if not self.clip_weights and self.input_size % self.toy.patch_size:
            raise ConfigError(f"input_size {self.input_size} is not a multiple of toy.patch_size {self.toy.patch_size}")
        if self.epochs < 0 or self.batch_size < 2:
            raise ConfigError("epochs must be >= 0 and batch_size >= 2 (a contrastive batch needs negatives)")


PRESETS: dict[str, ClipESConfig] = {
    # toy CLIP at 128 px, patch 8 (16 x 16 tokens); minutes on one CPU core for the small benchmark
    "cpu192": ClipESConfig(),
    # the official CAM settings for a real CLIP on VOC (pass clip_weights=ViT-B-16.pt): CLIP-ES's template, class
    # phrases and 25 background words (COCO: background=<its 23 words>, box_threshold=0.7)
    "paper": ClipESConfig(
        templates=("a clean origami {}.",), articles=False, background=VOC_BACKGROUND_WORDS, input_size=224
    ),
    # seconds: tests
    "tiny": ClipESConfig(
        input_size=32,
        toy=ToyClipConfig(embed_dim=32, patch_size=8, width=64, layers=2, text_width=64, text_layers=1),
        epochs=1,
        batch_size=8,
        attn_layers=2,
    ),
}


def file_digest(path: Path) -> str:
    """blake2b digest of a file (records which CLIP weights a classifier folder used)."""
    h = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_clip_weights(weights: str, model_name: str = "") -> tuple[Path, dict[str, Any] | None]:
    """``(weights file, open_clip model config or None)`` of a ``clip_weights`` value: a file, or a folder
    written by ``weakseg clip pretrain`` (``clip.safetensors`` + ``clip_config.json``)."""
    path = Path(weights).expanduser()
    if path.is_dir():
        if not (path / CLIP_FILE).is_file() or not (path / CLIP_CONFIG).is_file():
            raise ConfigError(f"{path} holds no {CLIP_FILE} + {CLIP_CONFIG}; run `weakseg clip pretrain --out {path}`")
        return path / CLIP_FILE, load_json(path / CLIP_CONFIG)
    return path, None


def load_clip_weights(weights: str, model_name: str = "") -> nn.Module:
    """The CLIP named by ``clip_weights`` / ``clip_model`` (eval, fp32, CPU)."""
    path, model_cfg = resolve_clip_weights(weights, model_name)
    if model_cfg is not None:
        return load_clip(path, model_cfg=model_cfg)
    return load_clip(path, model_name or None)


class ClipESNet(nn.Module):
    """The CLIP of a CLIP-ES "classifier".

    The embedded toy CLIP is a registered submodule (``clip.*``: trained and saved by train-cls). A CLIP loaded
    from ``clip_weights`` is held outside the module tree, so ``model.safetensors`` stays empty instead of
    copying 600 MB of ViT-B/16 weights; ``.to()``/``.float()`` still reach it (:meth:`_apply`).
    """

    def __init__(self, clip: nn.Module, trainable: bool):
        super().__init__()
        self.trainable = trainable
        if trainable:
            self.clip = clip
            self._external: tuple[nn.Module, ...] = ()
        else:
            clip.requires_grad_(False)
            self._external = (clip.eval(),)

    @property
    def clip_model(self) -> nn.Module:
        return self.clip if self.trainable else self._external[0]

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        super()._apply(fn, recurse)
        for m in self._external:
            m._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> ClipESNet:
        super().train(mode)
        for m in self._external:
            m.eval()
        return self

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B, 3, S, S]`` in [0, 1] and caption tokens ``[T, context]`` → embeddings ``[B, E]``, ``[T, E]``."""
        clip = self.clip_model
        mean = images.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(CLIP_STD).view(1, 3, 1, 1)
        return clip.encode_image((images - mean) / std), clip.encode_text(tokens)


def class_prompts(class_names: Sequence[str], cfg: ClipESConfig) -> PromptSet:
    """The text classifier's rows for ``class_names``: classes (with synonyms and articles as configured), then
    the background words."""
    rows: dict[str, tuple[str, ...]] = {}
    for name in class_names:
        phrases = tuple(SYNTH_SYNONYMS.get(name, ()) or CLIP_ES_PHRASES.get(name, ())) if cfg.synonyms else ()
        phrases = phrases or (name,)
        rows[name] = tuple(article(p) for p in phrases) if cfg.articles else phrases
    background = tuple(w for w in cfg.background if w not in rows)
    return PromptSet.build(rows, cfg.templates, tuple(article(w) if cfg.articles else w for w in background))


def clip_scores(visual: ClipVisual, tokens: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP-ES's image score from the last block's output tokens ``[B, 1+N, D]``: patch mean → ``ln_post`` →
    ``proj`` → cosine to the unit text rows ``[R, E]`` × ``scale`` → logits ``[B, R]``."""
    emb = F.normalize(visual.project(tokens[:, 1:].mean(1)), dim=-1)
    return scale * emb @ text.T


def last_block_gradcam(
    visual: ClipVisual,
    tokens: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    rows: Sequence[Sequence[int]],
    targets: Sequence[int],
    grid: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GradCAMs of ``K`` targets in ONE backward pass through CLIP's last block.

    ``tokens``: the last block's input ``[1, 1+N, D]`` (computed without gradients); ``text`` ``[R, E]`` unit rows;
    ``rows[k]``: the text rows of target ``k``'s softmax; ``targets[k]``: the position of its class in ``rows[k]``.
    The block runs on ``K`` copies of ``tokens`` (a batch); copy ``k``'s loss is the softmax probability of its
    target. The copies share no computation, so the gradient of the *sum* with respect to copy ``k``'s ``ln_1``
    output is exactly the gradient of copy ``k``'s own target (what one backward per class gives).

    Returns ``(cams [K, h, w] (GradCAM, not normalised), probs [K] (each target's probability),
    attention [1+N, 1+N] of the last block)``.
    """
    k = len(targets)
    block = visual.blocks[-1]
    captured: list[torch.Tensor] = []
    handle = block.ln_1.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.enable_grad():
            x = tokens.detach().expand(k, -1, -1).contiguous().requires_grad_(True)
            out, attn = visual._block_with_attn(block, x)
            logits = clip_scores(visual, out, text, scale)  # [K, R]
            probs = torch.stack(
                [logits[i, list(r)].softmax(-1)[t] for i, (r, t) in enumerate(zip(rows, targets, strict=True))]
            )
            (grads,) = torch.autograd.grad(probs.sum(), captured[0])
    finally:
        handle.remove()
    acts = captured[0][0, 1:].detach()  # [N, D]: the same in every copy
    cams = gradcam_tokens(acts, grads[:, 1:], grid)
    return cams, probs.detach(), attn[0].detach()


class ClipESPredictor(CamPredictor):
    """CLIP-ES CAMs of one image from the views make-cams asks for (each view's refined CAMs are mapped back,
    averaged after max-normalisation, resized to the image and normalised)."""

    def __init__(self, net: ClipESNet, ds: SegDataset, views: Sequence[View], cfg: ClipESConfig, device: torch.device):
        self.ds, self.views, self.cfg, self.device = ds, list(views), cfg, device
        clip = net.clip_model
        self.visual = ClipVisual(clip, freeze=True).to(device)
        self.prompts = class_prompts(ds.class_names, cfg)
        self.text = text_embeddings(clip, self.prompts).to(device)  # [K + B, E]
        self.scale = clip.logit_scale.detach().exp().to(device)
        self.num_classes = self.prompts.num_classes

    def rows_for(self, classes: Sequence[int]) -> tuple[list[list[int]], list[int]]:
        """Softmax rows and target positions per asked class (classes first, then every background row)."""
        bg = list(range(self.num_classes, self.text.shape[0]))
        fg = list(range(self.num_classes)) if self.cfg.rows == "all" else list(classes)
        rows = [fg + bg for _ in classes]
        return rows, [fg.index(c) for c in classes]

    def view_cams(self, image: torch.Tensor, classes: Sequence[int], view: View) -> torch.Tensor:
        """Refined CAMs ``[K', h, w]`` in [0, 1] of one view, on the view's token grid."""
        p = self.visual.patch_size
        side = max(p, int(round(self.cfg.input_size * view.scale / p)) * p)
        x = F.interpolate(
            image, (side, side), mode="bilinear", align_corners=False, antialias=side < max(image.shape[-2:])
        )
        if view.flip:
            x = x.flip(-1)
        n = self.visual.num_layers
        first_attn = max(0, n - self.cfg.attn_layers)
        with torch.no_grad():
            tokens, grid = self.visual.embed(x)
            tokens, _ = self.visual.run_blocks(tokens, 0, first_attn)
            tokens, maps = self.visual.run_blocks(tokens, first_attn, n - 1, attn=True)
        rows, targets = self.rows_for(classes)
        cams, _, last_attn = last_block_gradcam(self.visual, tokens, self.text, self.scale, rows, targets, grid)
        cams = minmax(cams)
        if not self.cfg.refine:
            return cams
        affinity = attention_affinity([m[0] for m in maps] + [last_attn], self.cfg.sinkhorn_iters,
                                      self.cfg.affinity_power)  # fmt: skip
        masks = torch.stack([box_mask(c, self.cfg.box_threshold) for c in cams])
        return refine_cam(cams, affinity, masks)

    def __call__(self, i: int, classes: Sequence[int]) -> torch.Tensor:
        image = to_tensor(self.ds.load_image(i))[None].to(self.device)
        size = tuple(image.shape[-2:])
        if not classes:
            return image.new_zeros((0, *size))
        maps = [undo_view(self.view_cams(image, classes, v)[None], v.flip, size)[0] for v in self.views]
        return normalize_cams(average_normalized(maps)).clamp_(0, 1)


def clip_weights_record(weights: str, model: str) -> dict[str, Any]:
    """What a run records of the CLIP weights it used (path, digest, model); a missing file raises the error that
    says where to get it."""
    path, _ = resolve_clip_weights(weights, model)
    if not path.is_file():
        load_clip_weights(weights, model)  # raises the "where to get it" error
    return {"clip": {"weights": str(path.resolve()), "digest": file_digest(path), "model": model}}


@register_method
class ClipESMethod(Method):
    """CLIP-ES CAMs; train-cls trains the embedded toy CLIP unless ``clip_weights`` names a CLIP."""

    name = "clip-es"
    task = "tags"
    description = "CLIP-ES: GradCAM of a frozen CLIP + text, attention-affinity refinement (no classifier training)"
    paper = "Lin et al.: CLIP is Also an Efficient Segmenter, CVPR 2023"
    Config = ClipESConfig
    presets = PRESETS

    def __init__(self, config: ClipESConfig):
        super().__init__(config)
        self.class_names: tuple[str, ...] = ()

    @property
    def embedded(self) -> bool:
        return not self.cfg.clip_weights

    @property
    def epochs(self) -> int:
        return int(self.cfg.epochs) if self.embedded else 1

    def build(self, backbone: Any, num_classes: int) -> ClipESNet:
        if self.embedded:
            return ClipESNet(tiny_clip(self.cfg.seed, self.cfg.toy.model_cfg(self.cfg.input_size)), trainable=True)
        return ClipESNet(load_clip_weights(self.cfg.clip_weights, self.cfg.clip_model), trainable=False)

    def optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in net.parameters() if p.requires_grad]
        if not params:  # a loaded CLIP trains nothing; the loop still wants an optimiser to save
            params = [nn.Parameter(torch.zeros(1), requires_grad=False)]
        decay = [p for p in params if p.dim() >= 2]
        rest = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=self.cfg.lr)

    def lr_factor(self, steps_per_epoch: int):
        warm = max(1, steps_per_epoch)
        total = max(warm + 1, steps_per_epoch * self.cfg.epochs)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / (total - warm))))

        return factor

    def loader(self, ds: SegDataset, ctx: LoaderContext) -> LoaderFactory:
        self.class_names = tuple(ds.class_names)
        if not self.embedded:
            return (lambda epoch: []), 0
        c = self.cfg
        return image_batches(
            ds, input_size=c.input_size, jitter=c.jitter, batch_size=c.batch_size, seed=ctx.seed, rank=ctx.rank,
            world=ctx.world, workers=ctx.workers,
        )  # fmt: skip

    def describe_data(self) -> dict[str, Any]:
        if self.embedded:
            return {"clip": {"embedded": True}}
        return clip_weights_record(self.cfg.clip_weights, self.cfg.clip_model)

    def step(self, net: nn.Module, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        if not self.class_names:
            raise ConfigError("clip-es: loader() must run before step() (it reads the class names)")
        open_clip = import_open_clip()
        labels = batch["label"].cpu().numpy()
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))  # the loop seeds torch per epoch
        captions, named = make_captions(labels, self.class_names, rng, SYNTH_SYNONYMS, p_all=self.cfg.caption_all)
        clip = net.module.clip_model if hasattr(net, "module") else net.clip_model
        tokens = open_clip.tokenize(captions, context_length=clip.context_length).to(batch["image"].device)
        image_emb, text_emb = net(batch["image"], tokens)
        match = torch.from_numpy(caption_match(labels, named)).to(image_emb.device)
        scale = clip.logit_scale.exp().clamp(max=100.0)
        return {"loss": multi_positive_clip_loss(image_emb, text_emb, match, scale), "logit_scale": scale.detach()}

    def cam_predictor(
        self, net: nn.Module, ds: SegDataset, views: Sequence[View], device: torch.device, seed: int
    ) -> ClipESPredictor:
        return ClipESPredictor(net, ds, views, self.cfg, device)  # type: ignore[arg-type]
