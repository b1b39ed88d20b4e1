"""Few-shot segmentation methods: a PANet-style prototype baseline, SCL, and PI-CLIP's training-free CLIP prior.

Papers:

- **SCL** — Zhang, Xiao, Qin, "Self-Guided and Cross-Guided Learning for Few-Shot
  Segmentation", CVPR 2021 (official code ``zbf1991/SCL``, PFENet variant).
- **PI-CLIP** — Wang et al., "Rethinking Prior Information
  Generation with CLIP for Few-Shot Segmentation", CVPR 2024 (official code ``vangjin/PI-CLIP``).
- **Prototype baseline** — PANet (Wang et al., ICCV 2019): masked average pooling + cosine, with its prototype
  alignment loss.

What runs (pure maths in :mod:`weakseg.cams.fewshot`):

- A **frozen backbone** gives mid-level features (two stages concatenated, SCL's layer2 ⊕ layer3) and high-level
  features (SCL's layer4) at the same stride (:class:`FeatureLevels`). Only the heads below are trained.
- ``prototype``: a 1×1 projection of the mid features, foreground / background prototypes by masked average
  pooling, ``20 × cos`` logits; training adds PANet's alignment loss (the query's prediction segments the support).
- ``scl``: 1×1 reductions (separate for query and support) of the mid features; the support vector ``v`` by MAP;
  a light PFENet-style decoder (``bins`` pyramid scales, residual merges, auxiliary heads) first segments the
  *support* from ``[Fs, v, v]``; the support's covered / uncovered foreground gives the primary / auxiliary vectors,
  which, with the prior, segment the query (and, in training, the support again). With K shots at inference, the
  cross-guided module weights each support's query prediction by how well its vectors segment all supports.
- ``prior``: ``visual`` (PFENet's max-cosine prior on high features, SCL's), ``clip`` (PI-CLIP's visual-text prior
  refined by the high-order attention matrix, from :class:`ClipPrior`), ``visual+clip`` (both channels) or ``none``.

The CLIP prior is computed from the episode's **target class only** ("a photo of {c}." vs "a photo without {c}.");
the official PI-CLIP code puts every class annotated in the query image into the softmax, information an episode
does not give (``clip_query_classes=True`` reproduces it when the query's labels are passed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.backbones import Backbone
from weakseg.backbones.clip import ClipVisual
from weakseg.backbones.clip_text import PromptSet, text_embeddings
from weakseg.backbones.efficientnet_lite import EfficientNetLiteBackbone
from weakseg.backbones.tiny import TinyBackbone
from weakseg.cams.clip_es import box_mask, minmax, refine_cam
from weakseg.cams.fewshot import (
    IGNORE,
    binary_miou,
    cross_guided_weights,
    fg_mask,
    fuse_predictions,
    high_order_affinity,
    masked_average_pool,
    prior_mask,
    prototype_logits,
    split_by_prediction,
)
from weakseg.errors import ConfigError, unknown_name
from weakseg.methods.clip_es import last_block_gradcam

PRIORS = ("visual", "clip", "visual+clip", "none")


@dataclass(frozen=True)
class FewShotConfig:
    """Every knob of the few-shot methods (``weakseg fewshot train --set key=value``)."""

    input_size: int = 96
    """side (px) of the square input of support and query images (SCL: 473)"""
    output_stride: int = 8
    """backbone output stride (SCL: 8)"""
    hidden: int = 32
    """channels of the reduced features and the decoder (SCL: 256)"""
    bins: tuple[float, ...] = (1.0, 0.5)
    """pyramid scales of the SCL decoder as fractions of the feature map (SCL on COCO: 1, 1/2, 1/4, 1/8)"""
    feature_dropout: float = 0.5
    """dropout on the reduced mid features in training (SCL: 0.5)"""
    prior: str = "visual"
    """prior channels of the query path: visual (SCL), clip (PI-CLIP), visual+clip, none"""
    aux_weight: float = 1.0
    """weight of the per-scale auxiliary losses (SCL: 1.0)"""
    proto_scale: float = 20.0
    """cosine scale of the prototype baseline (PANet: 20)"""
    align_weight: float = 1.0
    """weight of PANet's prototype alignment loss (prototype method)"""
    cross_guided: bool = True
    """K-shot inference of SCL: weight the supports by how well they segment each other (off: average the support
    vectors and priors, PFENet's K-shot)"""
    # training
    epochs: int = 8
    """training epochs (each ``episodes_per_epoch`` episodes; the best on the validation episodes is kept)"""
    episodes_per_epoch: int = 320
    batch_size: int = 8
    """episodes per step"""
    optimizer: str = "adamw"
    """adamw (short CPU schedules) or sgd (SCL: lr 0.0025, momentum 0.9, weight decay 1e-4); poly 0.9 decay"""
    lr: float = 3e-3
    """peak learning rate"""
    momentum: float = 0.9
    """SGD momentum"""
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    """fraction of the training images held out for validation episodes (training classes only)"""
    val_episodes: int = 100
    """fixed 1-shot validation episodes scored after each epoch (checkpoint selection)"""
    # PI-CLIP prior
    clip_weights: str = ""
    """CLIP for the clip prior: a `weakseg clip pretrain` folder (toy) or a ViT-B-16.pt path"""
    clip_model: str = ""
    """open_clip model name of clip_weights (empty: OpenAI layout or a clip pretrain folder)"""
    clip_input: int = 96
    """side (px) of the CLIP input, rounded down to the patch size (PI-CLIP: the query's own size, /16)"""
    clip_template: str = "a photo of {}."
    clip_without_template: str = "a photo without {}."
    clip_attn_layers: int = 8
    """attention maps (last blocks) averaged into the high-order matrix; clamped to the CLIP's depth"""
    clip_box_threshold: float = 0.4
    """CAM ≥ threshold·max regions whose boxes may pass activation (PI-CLIP: 0.4)"""
    clip_query_classes: bool = False
    """official PI-CLIP: every class annotated in the query joins the softmax (needs the query's labels)"""

    def check(self) -> None:
        if self.prior not in PRIORS:
            raise unknown_name("prior", self.prior, PRIORS)
        if self.prior in ("clip", "visual+clip") and not self.clip_weights:
            raise ConfigError(
                f"prior={self.prior!r} needs clip_weights: a `weakseg clip pretrain --out DIR` folder or a ViT-B-16.pt"
            )
        if self.optimizer not in ("adamw", "sgd"):
            raise unknown_name("optimizer", self.optimizer, ("adamw", "sgd"))
        if not self.bins or any(not 0 < b <= 1 for b in self.bins):
            raise ConfigError(f"bins must be fractions in (0, 1], got {self.bins}")

    @property
    def prior_channels(self) -> int:
        return {"visual": 1, "clip": 1, "visual+clip": 2, "none": 0}[self.prior]


PRESETS: dict[str, FewShotConfig] = {
    "cpu": FewShotConfig(),
    "paper": FewShotConfig(
        optimizer="sgd",
        lr=2.5e-3,
        input_size=473,
        hidden=256,
        bins=(1.0, 0.5, 0.25, 0.125),
        epochs=200,
        episodes_per_epoch=5953,
        batch_size=4,
        val_episodes=1000,
        clip_input=480,
    ),  # fmt: skip
    "tiny": FewShotConfig(input_size=64, hidden=16, epochs=1, episodes_per_epoch=8, batch_size=2, val_episodes=4),
}


# ---------------------------------------------------------------------------------------------------- features


class FeatureLevels(nn.Module):
    """A frozen backbone's mid- and high-level features at its output stride: ``x`` ``[B, 3, H, W]`` in [0, 1] →
    ``(mid [B, Cm, h, w], high [B, Ch, h, w])``.

    EfficientNet-Lite: mid = stages 3 ⊕ 5 (40 + 112 channels, SCL's layer2 ⊕ layer3), high = stage 7 (320 channels,
    SCL's layer4; the 1×1 ``conv_head`` is not run). ``tiny``: mid = its last two blocks, high = the last.
    """

    def __init__(self, backbone: Backbone):
        super().__init__()
        if isinstance(backbone, EfficientNetLiteBackbone):
            self.kind = "lite"
        elif isinstance(backbone, TinyBackbone):
            self.kind = "tiny"
        else:
            raise ConfigError(
                "few-shot methods read mid/high features from the efficientnet-lite0 or tiny backbone, not "
                f"{type(backbone).__name__}"
            )
        self.backbone = backbone.eval().requires_grad_(False)
        mid, high = self(torch.zeros(1, 3, 32, 32))  # channel counts from a dry run
        self.mid_channels, self.high_channels = int(mid.shape[1]), int(high.shape[1])

    def train(self, mode: bool = True) -> FeatureLevels:
        super().train(mode)
        self.backbone.eval()  # frozen, BatchNorm statistics included (SCL freezes layer0-4)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.backbone
        x = (x - b.mean) / b.std
        if self.kind == "lite":
            net = b.net
            x = net.bn1(net.conv_stem(x))
            keep = []
            for i, block in enumerate(net.blocks):
                x = block(x)
                if i in (2, 4, 6):
                    keep.append(x)
            f2, f3, f4 = keep
        else:
            body = b.body
            f2 = body[2](body[1](body[0](x)))
            f3 = f4 = body[3](f2)
        if f2.shape[-2:] != f3.shape[-2:]:
            f2 = F.interpolate(f2, size=f3.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([f2, f3], dim=1), f4


# ---------------------------------------------------------------------------------------------------- heads


def _conv3(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1),
                         nn.ReLU(inplace=True))  # fmt: skip


def _cls_head(c: int, dropout: float = 0.1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
                         nn.Conv2d(c, 2, 1))  # fmt: skip


class SCLDecoder(nn.Module):
    """A light PFENet feature-enrichment decoder shared by the support and query paths.

    Per scale ``s`` of ``bins``: the features pooled to that size, concatenated with the two support vectors
    (broadcast) and, on the query path, the prior channels → a 1×1 merge (separate for the two paths) → a residual
    merge with the previous scale → two 3×3 convs (residual) → an auxiliary 2-class head. All scales are upsampled
    to the feature size, concatenated, merged and classified (logits ``[B, 2, h, w]``).
    """

    def __init__(self, hidden: int, bins: Sequence[float], prior_channels: int):
        super().__init__()
        self.bins = tuple(bins)
        n = len(self.bins)
        self.merge_query = nn.ModuleList(nn.Conv2d(3 * hidden + prior_channels, hidden, 1) for _ in range(n))
        self.merge_support = nn.ModuleList(nn.Conv2d(3 * hidden, hidden, 1) for _ in range(n))
        self.residual = nn.ModuleList(nn.Conv2d(2 * hidden, hidden, 1) for _ in range(n - 1))
        self.blocks = nn.ModuleList(_conv3(hidden) for _ in range(n))
        self.aux = nn.ModuleList(nn.Conv2d(hidden, 2, 1) for _ in range(n))
        self.fuse = nn.Sequential(nn.Conv2d(n * hidden, hidden, 1), nn.ReLU(inplace=True))
        self.res = _conv3(hidden)
        self.cls = _cls_head(hidden)

    def forward(
        self, feat: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, prior: torch.Tensor | None, query: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``feat`` ``[B, C, h, w]``, support vectors ``[B, C]``, prior ``[B, P, h', w']`` (query path; None when
        ``P = 0``) → logits ``[B, 2, h, w]`` and the per-scale auxiliary logits."""
        h, w = feat.shape[-2:]
        outs, aux, prev = [], [], None
        merges = self.merge_query if query else self.merge_support
        for i, b in enumerate(self.bins):
            size = (max(1, round(h * b)), max(1, round(w * b)))
            x = feat if size == (h, w) else F.adaptive_avg_pool2d(feat, size)
            parts = [x, v1[:, :, None, None].expand(-1, -1, *size), v2[:, :, None, None].expand(-1, -1, *size)]
            if prior is not None:
                parts.append(F.interpolate(prior, size=size, mode="bilinear", align_corners=True))
            x = F.relu(merges[i](torch.cat(parts, 1)))
            if prev is not None:
                p = F.interpolate(prev, size=size, mode="bilinear", align_corners=True)
                x = F.relu(self.residual[i - 1](torch.cat([x, p], 1))) + x
            x = self.blocks[i](x) + x
            prev = x
            aux.append(self.aux[i](x))
            outs.append(x if size == (h, w) else F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True))
        x = self.fuse(torch.cat(outs, 1))
        x = self.res(x) + x
        return self.cls(x), aux


@dataclass
class EpisodeFeatures:
    """Cached backbone features of one episode batch (B episodes, K shots).

    ``q_mid`` ``[B, Cm, h, w]``, ``q_high`` ``[B, Ch, h, w]``; ``s_mid`` ``[B, K, Cm, h, w]``, ``s_high``
    ``[B, K, Ch, h, w]``; ``s_target`` ``[B, K, S, S]`` binary support masks (0 / 1 / 255) at the input size;
    ``clip_prior`` ``[B, 1, h', w']`` or None.
    """

    q_mid: torch.Tensor
    q_high: torch.Tensor
    s_mid: torch.Tensor
    s_high: torch.Tensor
    s_target: torch.Tensor
    clip_prior: torch.Tensor | None = None


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=True)
    if not (target != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target.long(), ignore_index=IGNORE)


class FewShotNet(nn.Module):
    """Common interface: ``loss(ep, q_target) -> dict`` (training, 1-shot or K-shot) and ``predict(ep) -> logits
    [B, 2, h, w]`` at the feature size."""

    def loss(self, ep: EpisodeFeatures, q_target: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, ep: EpisodeFeatures) -> torch.Tensor:
        raise NotImplementedError


class PrototypeNet(FewShotNet):
    """PANet-style baseline: projected mid features, fg/bg prototypes averaged over the shots, scaled cosine."""

    def __init__(self, mid_channels: int, cfg: FewShotConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Conv2d(mid_channels, cfg.hidden, 1)

    def _protos(self, feat: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feat`` ``[B, K, C, h, w]``, targets ``[B, K, S, S]`` → fg, bg prototypes ``[B, C]`` (mean over K)."""
        b, k, c, h, w = feat.shape
        f = feat.flatten(0, 1)
        t = target.flatten(0, 1)
        fg = fg_mask(t, (h, w))
        bg = fg_mask(((t == 0) & (t != IGNORE)).to(torch.uint8), (h, w))
        return (
            masked_average_pool(f, fg).reshape(b, k, c).mean(1),
            masked_average_pool(f, bg).reshape(b, k, c).mean(1),
        )

    def _project(self, mid: torch.Tensor) -> torch.Tensor:
        return self.proj(mid)

    def predict(self, ep: EpisodeFeatures) -> torch.Tensor:
        b, k = ep.s_mid.shape[:2]
        fs = self._project(ep.s_mid.flatten(0, 1)).unflatten(0, (b, k))
        fg, bg = self._protos(fs, ep.s_target)
        return prototype_logits(self._project(ep.q_mid), fg, bg, self.cfg.proto_scale)

    def loss(self, ep: EpisodeFeatures, q_target: torch.Tensor) -> dict[str, torch.Tensor]:
        b, k = ep.s_mid.shape[:2]
        fs = self._project(ep.s_mid.flatten(0, 1)).unflatten(0, (b, k))
        fq = self._project(ep.q_mid)
        fg, bg = self._protos(fs, ep.s_target)
        logits = prototype_logits(fq, fg, bg, self.cfg.proto_scale)
        main = _ce(logits, q_target)
        # PANet's alignment: the query's own prediction gives prototypes that must segment the supports
        up = F.interpolate(logits.detach(), size=q_target.shape[-2:], mode="bilinear", align_corners=True).argmax(1)
        qfg, qbg = self._protos(fq[:, None], up[:, None].to(torch.uint8))
        s_logits = prototype_logits(fs.flatten(0, 1), qfg.repeat_interleave(k, 0), qbg.repeat_interleave(k, 0),
                                    self.cfg.proto_scale)  # fmt: skip
        align = _ce(s_logits, ep.s_target.flatten(0, 1))
        return {"loss": main + self.cfg.align_weight * align, "query": main.detach(), "align": align.detach()}


class SCLNet(FewShotNet):
    """SCL: self-guided support vectors, a prior, a PFENet-style decoder; cross-guided K-shot inference."""

    def __init__(self, mid_channels: int, cfg: FewShotConfig):
        super().__init__()
        self.cfg = cfg
        self.down_query = nn.Sequential(nn.Conv2d(mid_channels, cfg.hidden, 1), nn.ReLU(inplace=True),
                                        nn.Dropout2d(cfg.feature_dropout))  # fmt: skip
        self.down_support = nn.Sequential(nn.Conv2d(mid_channels, cfg.hidden, 1), nn.ReLU(inplace=True),
                                          nn.Dropout2d(cfg.feature_dropout))  # fmt: skip
        self.decoder = SCLDecoder(cfg.hidden, cfg.bins, cfg.prior_channels)

    # -- pieces ----------------------------------------------------------------------------------------------

    def _support_vectors(self, fs: torch.Tensor, ms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Self-guidance: ``fs`` ``[N, C, h, w]``, ``ms`` ``[N, 1, h, w]`` → primary, auxiliary ``[N, C]`` and the
        first support pass (logits, aux logits)."""
        v = masked_average_pool(fs, ms)
        logits0, aux0 = self.decoder(fs, v, v, None, query=False)
        covered, uncovered = split_by_prediction(ms, logits0.argmax(1))
        return masked_average_pool(fs, covered), masked_average_pool(fs, uncovered), [logits0, aux0]

    def _priors(self, ep: EpisodeFeatures, k: int | None) -> torch.Tensor | None:
        """Prior channels ``[B, P, h, w]`` from support ``k`` (None: the mean of the K shots' visual priors)."""
        parts = []
        if self.cfg.prior in ("visual", "visual+clip"):
            b, n = ep.s_high.shape[:2]
            h, w = ep.q_high.shape[-2:]
            shots = range(n) if k is None else [k]
            pri = []
            for j in shots:
                ms = fg_mask(ep.s_target[:, j], ep.s_high.shape[-2:])
                pri.append(prior_mask(ep.q_high, ep.s_high[:, j], ms))
            parts.append(torch.stack(pri).mean(0))
        if self.cfg.prior in ("clip", "visual+clip"):
            if ep.clip_prior is None:
                raise ConfigError(f"prior={self.cfg.prior!r} but the episode carries no CLIP prior")
            parts.append(F.interpolate(ep.clip_prior, size=ep.q_mid.shape[-2:], mode="bilinear", align_corners=True))
        return torch.cat(parts, 1) if parts else None

    def _query(self, fq: torch.Tensor, vpri: torch.Tensor, vaux: torch.Tensor, prior: torch.Tensor | None):
        return self.decoder(fq, vpri, vaux, prior, query=True)

    # -- training ----------------------------------------------------------------------------------------------

    def loss(self, ep: EpisodeFeatures, q_target: torch.Tensor) -> dict[str, torch.Tensor]:
        """1-shot training losses (shot 0 of each episode): CE of the query, of the first and of the second
        support pass, plus ``aux_weight`` × the mean over scales of the auxiliary CEs of the three paths."""
        fq = self.down_query(ep.q_mid)
        fs = self.down_support(ep.s_mid[:, 0])
        st = ep.s_target[:, 0]
        ms = fg_mask(st, fs.shape[-2:])
        vpri, vaux, (s0, s0_aux) = self._support_vectors(fs, ms)
        q, q_aux = self._query(fq, vpri, vaux, self._priors(ep, 0))
        s1, s1_aux = self.decoder(fs, vpri, vaux, None, query=False)
        main = _ce(q, q_target) + _ce(s0, st) + _ce(s1, st)
        aux = sum(
            torch.stack([_ce(a, t) for a in auxes]).mean()
            for auxes, t in ((q_aux, q_target), (s0_aux, st), (s1_aux, st))
        )
        return {"loss": main + self.cfg.aux_weight * aux, "query": _ce(q, q_target).detach(), "aux": aux.detach()}

    # -- inference ---------------------------------------------------------------------------------------------

    def predict(self, ep: EpisodeFeatures) -> torch.Tensor:
        b, k = ep.s_mid.shape[:2]
        fq = self.down_query(ep.q_mid)
        fs = self.down_support(ep.s_mid.flatten(0, 1))  # [B*K, C, h, w]
        h, w = fs.shape[-2:]
        ms = fg_mask(ep.s_target.flatten(0, 1), (h, w))
        vpri, vaux, _ = self._support_vectors(fs, ms)
        vpri, vaux = vpri.unflatten(0, (b, k)), vaux.unflatten(0, (b, k))
        if k == 1 or not self.cfg.cross_guided:
            logits, _ = self._query(fq, vpri.mean(1), vaux.mean(1), self._priors(ep, None if k > 1 else 0))
            return logits
        weights = self.cross_guided_weights(fs.unflatten(0, (b, k)), vpri, vaux, ep.s_target)  # [B, K]
        per_shot = torch.stack([self._query(fq, vpri[:, j], vaux[:, j], self._priors(ep, j))[0] for j in range(k)])
        return torch.stack([fuse_predictions(per_shot[:, i], weights[i]) for i in range(b)])

    def cross_guided_weights(
        self, fs: torch.Tensor, vpri: torch.Tensor, vaux: torch.Tensor, s_target: torch.Tensor
    ) -> torch.Tensor:
        """``[B, K]``: support ``k``'s vectors segment every support ``j`` through the support path; score = mean
        of bg/fg IoU against ``j``'s mask; weights = mean over ``j``, normalised (SCL's cross-guided module)."""
        b, k, c, h, w = fs.shape
        # pairs (k, j): features of j, vectors of k — one batched decoder pass of B·K·K items
        f = fs[:, None].expand(b, k, k, c, h, w).flatten(0, 2)
        v1 = vpri[:, :, None].expand(b, k, k, c).flatten(0, 2)
        v2 = vaux[:, :, None].expand(b, k, k, c).flatten(0, 2)
        logits, _ = self.decoder(f, v1, v2, None, query=False)
        # scored at the feature size (the support masks resized nearest): K² support passes are the module's cost
        small = F.interpolate(s_target.float(), size=(h, w), mode="nearest").to(s_target.dtype)
        tgt = small[:, None].expand(b, k, k, h, w).flatten(0, 2)
        scores = binary_miou(logits.argmax(1), tgt).reshape(b, k, k)
        return torch.stack([cross_guided_weights(scores[i]) for i in range(b)])


FEWSHOT_METHODS: dict[str, type[FewShotNet]] = {"prototype": PrototypeNet, "scl": SCLNet}


def build_fewshot_net(method: str, mid_channels: int, cfg: FewShotConfig) -> FewShotNet:
    """The head of ``method`` (``prototype`` or ``scl``) on ``mid_channels``-channel mid features."""
    if method not in FEWSHOT_METHODS:
        raise unknown_name("few-shot method", method, FEWSHOT_METHODS)
    cfg.check()
    return FEWSHOT_METHODS[method](mid_channels, cfg)


# ---------------------------------------------------------------------------------------------------- CLIP prior


class ClipPrior:
    """PI-CLIP's visual-text prior (VTP) refined by the high-order attention matrix (PIR), training-free.

    For a query image and a target class ``c``: the text rows "a photo of {c}." and "a photo without {c}."; the
    GradCAM of the softmax probability of the first row at CLIP's last block (CLIP-ES's batched
    :func:`~weakseg.methods.clip_es.last_block_gradcam`), min-max; propagated by :func:`high_order_affinity` of
    the last ``attn_layers`` attention maps, with sources outside the CAM's high-region boxes masked out; min-max.
    Returns ``[h, w]`` on CLIP's token grid. ``extra`` classes (the official code's other query labels) add their
    own two rows to the softmax.
    """

    def __init__(self, clip_model: nn.Module, class_names: Sequence[str], cfg: FewShotConfig):
        self.visual = ClipVisual(clip_model, freeze=True)
        self.cfg = cfg
        fg = PromptSet.build(list(class_names), cfg.clip_template)
        bg = PromptSet.build(list(class_names), cfg.clip_without_template)
        self.text_fg = text_embeddings(clip_model, fg)[: len(class_names)]
        self.text_bg = text_embeddings(clip_model, bg)[: len(class_names)]
        self.scale = clip_model.logit_scale.detach().exp()
        p = self.visual.patch_size
        self.side = max(p, cfg.clip_input // p * p)

    def to(self, device: torch.device) -> ClipPrior:
        self.visual.to(device)
        self.text_fg, self.text_bg, self.scale = (t.to(device) for t in (self.text_fg, self.text_bg, self.scale))
        return self

    def __call__(self, image: torch.Tensor, cls: int, extra: Sequence[int] = ()) -> torch.Tensor:
        """``image`` ``[1, 3, H, W]`` in [0, 1] → prior ``[h, w]`` in [0, 1]."""
        x = F.interpolate(image, size=(self.side, self.side), mode="bilinear", align_corners=False, antialias=True)
        n = self.visual.num_layers
        k = max(1, min(self.cfg.clip_attn_layers, n))
        with torch.no_grad():
            toks = self.visual.forward_tokens(x, layers=[n - 2] if n > 1 else None, attn=list(range(n - k, n - 1)))
        tokens = toks.tokens[0] if n > 1 else self.visual.embed(x)[0]
        classes = [cls, *[c for c in extra if c != cls]]
        text = torch.cat([torch.stack([self.text_fg[c], self.text_bg[c]]) for c in classes])
        cams, _, last_attn = last_block_gradcam(
            self.visual, tokens, text, self.scale, [list(range(len(text)))], [0], toks.grid
        )
        cam = minmax(cams)  # [1, h, w]
        attn = torch.stack([a[0] for a in toks.attn] + [last_attn])
        t = high_order_affinity(attn)
        return refine_cam(cam, t, box_mask(cam[0], self.cfg.clip_box_threshold)[None])[0]
