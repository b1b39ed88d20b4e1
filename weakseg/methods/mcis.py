"""MCIS: Mining Cross-Image Semantics for WSSS (Sun, Wang, Dai, Van Gool, ECCV 2020).

On top of the plain CAM classifier (:mod:`weakseg.methods.cam`), for a pair of images (m, n)
sharing a class, with head features ``F_m``, ``F_n``:

- co-attention (:func:`weakseg.cams.coattention.co_attention`, ``W``: bias-free ``C×C`` linear map)
  gives ``F_m^co`` and ``F_n^co``;
- a co-attention classifier (bias-free 1×1 conv to K + GAP) scores ``F^co``: target = the classes
  the two images share;
- a gate ``g = σ(conv1×1(F^co))`` (bias-free, one channel) marks the shared regions; the *same*
  co-attention classifier scores the contrastive features ``F ⊙ (1 − g)``: target = the image's
  classes minus the shared ones (added from epoch ``contrastive_from_epoch``; ``contrastive_rows``
  chooses the rows: ``nonempty``, only rows whose target is non-empty, or ``all``, as the reference's
  ``train.py``: the whole batch, all-negative targets included, once any row is non-empty);
- self-pairs: the anchor paired with transformed copies of itself (flip, 0.75×, 2× in the
  reference): plain and co logits of both vs the anchor's labels, no contrastive term.

All losses are multi-label soft-margin losses, summed as in the reference. Efficiency: every image
of a step (anchors, partners, self-pair copies) goes through the backbone exactly once, images of
the same size in one batch; the anchor's features are reused for all its pairs.

At test time the CAMs are fused by one of :data:`TEST_FUSIONS` (``test_fusion``):

- ``weakseg`` (:meth:`MCISNet.predict_cams`): for each class c of an image, ``k`` partners with class
  c give co-attention maps (channel c, averaged over partners); self-pairs pair the base view with
  every other view; plain CAMs, partner co-attention CAMs and self-pair CAMs are each fused over
  make-cams' scales/flips, normalised, and averaged. With ``test_partners=0`` and no self-pairs it is
  exactly the plain CAM network's prediction (what ``cpu192`` uses).
- ``official`` (:meth:`MCISNet.official_cams`): the reference's ``Classifier/scripts/test.py``:
  co-attention maps only, A/B/C/D from the image paired with its flipped, 0.75× and 2× copies and P
  from ``test_partners`` partners per class (drawn with replacement, the image itself allowed), gated
  and fused by :func:`weakseg.cams.mcis_fusion.official_fusion`; it uses its own views (1×, flip,
  0.75×, 2×) and ignores make-cams' scales.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.backbones import Backbone
from weakseg.cams.cam import View, apply_view, fuse_views
from weakseg.cams.coattention import co_attend, co_attention, shared_labels, unshared_labels
from weakseg.cams.mcis_fusion import finish_official, official_fusion, to_base_grid
from weakseg.data.dataset import SegDataset
from weakseg.data.extra import ExtraSet, open_extra, parse_extra
from weakseg.data.pairs import class_index, sample_partners
from weakseg.data.recipes import pair_batches
from weakseg.errors import ConfigError, unknown_name
from weakseg.losses import multilabel_loss
from weakseg.methods.base import LoaderContext, LoaderFactory, Method, register_method
from weakseg.methods.cam import PRESETS as CAM_PRESETS
from weakseg.methods.cam import (
    CamConfig,
    CamImagePredictor,
    CamNet,
    _views_by_scale,
    finish_cams,
)
from weakseg.methods.mcis_extra import WebFilter, extra_pair_loss, query_scores, web_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MCISConfig(CamConfig):
    """MCIS hyper-parameters: the CAM classifier's (:class:`CamConfig`) plus pairs, contrast and test-time fusion.

    Which defaults are the official code's (GuoleiSun/MCIS_wsss): the training recipe of
    :class:`CamConfig` (``Classifier/train.sh``: 15 epochs, batch 5, 256 px, lr 1e-3 ×0.1 at epochs 5 and
    10; ``Classifier/scripts/train.py``: SGD groups ×1/×2/×10/×20, Nesterov, weight decay 5e-4, no clip),
    ``contrastive_from_epoch=2`` and the three self-pair copies (``train.py``), ``test_partners=3``
    (``Classifier/utils/LoadData.py``'s ``num_sampling``). Not the official code's: ``contrastive_rows``
    defaults to ``nonempty`` (``train.py`` uses ``all``) and ``test_fusion`` to ``weakseg``
    (``Classifier/scripts/test.py`` is ``official``); the ``paper`` preset sets both to the official
    values, plus the VGG-16 "D1" backbone it is meant for (``train-cls --backbone vgg16-d1``) and the
    epoch-11 snapshot (``test.sh``'s ``pascal_voc_epoch_10.pth``, saved after its 0-based epoch 10).
    """

    contrastive_from_epoch: int = 2
    """0-based epoch from which the contrastive co-attention loss is added (the reference: 2)"""
    contrastive_rows: str = "nonempty"
    """rows of the batch the contrastive loss averages over: nonempty (pairs where the image has a class its
    partner lacks) or all (the reference: every row, all-negative targets included, once any row has one)"""
    self_pairs: tuple[tuple[float, bool], ...] = ((1.0, True), (0.75, False), (2.0, False))
    """training self-pair copies of the anchor as (scale, flip): flipped, 0.75× and 2× (the reference)"""
    test_partners: int = 3
    """CAMs: partner images per labelled class whose co-attention maps are fused in (0: none; with test_fusion
    weakseg and no self-pairs, the plain-head CAMs alone)"""
    test_self_pairs: bool = True
    """CAMs (test_fusion weakseg): add co-attention maps of the image paired with its own other views"""
    test_fusion: str = "weakseg"
    """CAMs: weakseg (plain-head + partner + self-pair CAMs over make-cams' views, averaged) or official (the
    reference's test.py: co-attention maps of the image with its flip/0.75×/2× copies and partners, gated, /5)"""
    cache_mb: int = 512
    """CAMs: memory (MiB) for image features reused across pairs (partners recur); 0 = no cache"""
    extra: tuple[str, ...] = ()
    """extra training data (settings 2 and 3): single:DIR[:RATIO] (clean single-label images) or web:DIR[:RATIO]
    (noisy web images); RATIO = extra pairs per main pair in each epoch (default 0.5)"""
    web: WebFilter = field(default_factory=WebFilter)
    """the web-pair noise filter (setting 3; see weakseg.methods.mcis_extra)"""

    def check(self) -> None:
        super().check()
        if self.test_partners < 0 or self.cache_mb < 0:
            raise ConfigError(f"test_partners and cache_mb must be >= 0, got {self.test_partners}, {self.cache_mb}")
        if self.test_fusion not in TEST_FUSIONS:
            raise unknown_name("test_fusion", self.test_fusion, TEST_FUSIONS)
        if self.contrastive_rows not in CONTRASTIVE_ROWS:
            raise unknown_name("contrastive_rows", self.contrastive_rows, CONTRASTIVE_ROWS)
        for entry in self.extra:
            parse_extra(entry)


def _mcis(cam: CamConfig, **kw: Any) -> MCISConfig:
    return MCISConfig(**{**{f.name: getattr(cam, f.name) for f in dataclasses.fields(cam)}, **kw})


PRESETS: dict[str, MCISConfig] = {
    # the official code's training recipe, contrastive rows and test-time fusion (a GPU job; --backbone vgg16-d1)
    "paper": _mcis(CAM_PRESETS["paper"], contrastive_rows="all", test_fusion="official"),
    # one self-pair copy (the flip; the 2× copy alone costs 4 anchors); test-time pairing off: at CPU resolution
    # the plain-head CAMs of the MCIS-trained classifier scored higher (docs/methods/mcis.md)
    "cpu": _mcis(CAM_PRESETS["cpu"], contrastive_from_epoch=1, self_pairs=((1.0, True),), test_partners=0,
                 test_self_pairs=False),
    # what `weakseg run`/`demo` use: cpu at input 192 without the self-pair copy, stem + stride-2/4 stages frozen
    "cpu192": _mcis(CAM_PRESETS["cpu192"], contrastive_from_epoch=1, self_pairs=(), test_partners=0,
                    test_self_pairs=False),
    "tiny": _mcis(CAM_PRESETS["tiny"], contrastive_from_epoch=1, self_pairs=((1.0, True), (0.75, False)),
                  test_partners=1),
}  # fmt: skip


def _by_size(tensors: Sequence[torch.Tensor]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape[-2:]), []).append(i)
    return groups


class MCISNet(CamNet):
    """Plain CAM network + W (``coatt``), co-attention classifier and gate.

    ``forward(anchor [B,3,S,S], partner [B,3,S,S], views=[[B,3,s_v,s_v], ...], contrastive=bool)``
    returns logits ``[B, K]``: ``logits``/``logits_p``/``logits_v`` (plain: anchor, partner, each
    self copy), ``co_a``/``co_p`` (co-attention), ``co_self`` (list of ``(anchor, copy)`` co logits),
    and with ``contrastive`` ``contrast_a``/``contrast_p``.
    """

    new_prefixes = (*CamNet.new_prefixes, "coatt.", "co_classifier.", "gate.")

    def __init__(self, backbone: Backbone, num_classes: int, hp: MCISConfig):
        super().__init__(backbone, num_classes, hp)
        self.coatt = nn.Linear(self.dim, self.dim, bias=False)
        self.co_classifier = nn.Conv2d(self.dim, num_classes, 1, bias=False)
        nn.init.normal_(self.co_classifier.weight, std=0.01)  # like the plain classifier: logits start near 0
        self.gate = nn.Conv2d(self.dim, 1, 1, bias=False)

    def co_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Co-attention classifier, pooled first (it is linear): ``[B, D, h, w]`` → ``[B, K]``."""
        return F.linear(feats.mean((2, 3)), self.co_classifier.weight.flatten(1))

    def batched_features(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Head features of each tensor of ``images``; tensors of the same size share one backbone call."""
        out: list[torch.Tensor | None] = [None] * len(images)
        for idx in _by_size(images).values():
            sizes = [images[i].shape[0] for i in idx]
            feats = self.features(torch.cat([images[i] for i in idx]) if len(idx) > 1 else images[idx[0]])
            for i, f in zip(idx, feats.split(sizes), strict=True):
                out[i] = f
        return out  # type: ignore[return-value]

    def forward(
        self,
        anchor: torch.Tensor,
        partner: torch.Tensor,
        views: Sequence[torch.Tensor] = (),
        contrastive: bool = False,
    ) -> dict[str, Any]:
        f_a, f_p, *f_v = self.batched_features([anchor, partner, *views])
        b = f_a.shape[0]
        pooled = torch.cat([f.mean((2, 3)) for f in (f_a, f_p, *f_v)])
        plain = F.linear(pooled, self.classifier.weight.flatten(1), self.classifier.bias).split(b)
        # co-attention of (anchor, partner) and (anchor, copy): pairs whose second image has the same
        # size are attended in one batched call
        seconds = [f_p, *f_v]
        co_m: list[torch.Tensor | None] = [None] * len(seconds)
        co_n: list[torch.Tensor | None] = [None] * len(seconds)
        for idx in _by_size(seconds).values():
            fm = f_a.repeat(len(idx), 1, 1, 1) if len(idx) > 1 else f_a
            fn = torch.cat([seconds[i] for i in idx]) if len(idx) > 1 else seconds[idx[0]]
            m_co, n_co = co_attention(fm, fn, self.coatt.weight)
            for i, mc, nc in zip(idx, m_co.split(b), n_co.split(b), strict=True):
                co_m[i], co_n[i] = mc, nc
        co_pooled = torch.cat([f.mean((2, 3)) for f in (*co_m, *co_n)])  # type: ignore[union-attr]
        co_logits = F.linear(co_pooled, self.co_classifier.weight.flatten(1)).split(b)
        n2 = len(seconds)
        out: dict[str, Any] = {
            "logits": plain[0],
            "logits_p": plain[1],
            "logits_v": list(plain[2:]),
            "co_a": co_logits[0],
            "co_p": co_logits[n2],
            "co_self": [(co_logits[i], co_logits[n2 + i]) for i in range(1, n2)],
        }
        if contrastive:
            g = torch.sigmoid(self.gate(torch.cat([co_m[0], co_n[0]])))  # type: ignore[list-item]
            rest = torch.cat([f_a, f_p]) * (1 - g)
            out["contrast_a"], out["contrast_p"] = self.co_logits(rest).split(b)
        return out

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict_cams(
        self,
        image: torch.Tensor,
        classes: Sequence[int],
        views: Sequence[View],
        input_size: int,
        out_size: tuple[int, int],
        partners: Sequence[torch.Tensor] = (),
        partner_rows: dict[int, list[int]] | None = None,
        self_pairs: bool = True,
        anchor_feats: dict[float, torch.Tensor] | None = None,
        partner_feats: Sequence[dict[float, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """CAMs ``[K', *out_size]`` in [0, 1] of one image (``[1, 3, H, W]``) for ``classes``.

        ``partners``: unique partner images (``[1, 3, H_j, W_j]`` each, any size); ``partner_rows[c]``:
        indices into ``partners`` of class c's partners (repeats allowed). Each partner is forwarded
        once per view (its features serve every class it was drawn for). ``anchor_feats`` /
        ``partner_feats``: the same images' features from :meth:`view_features`, computed earlier
        (e.g. cached across images by ``make-cams``); when given, the backbone is not called.
        """
        classes = list(classes)
        grid = (input_size, input_size)
        partner_rows = partner_rows or {}
        plain, plain_f, co, co_f = [], [], [], []
        view_feats: dict[View, torch.Tensor] = {}
        rows_of = [partner_rows.get(c, []) for c in classes]
        n_part = len(partner_feats) if partner_feats is not None else len(partners)
        for scale, group in _views_by_scale(views).items():
            if anchor_feats is not None and (partner_feats is not None or not partners):
                f_anchor = anchor_feats[scale]
                if n_part:
                    f_part = torch.stack([pf[scale] for pf in partner_feats], dim=1)  # type: ignore[union-attr]
            else:
                imgs = [apply_view(image, v, input_size) for v in group]
                imgs += [apply_view(p, v, input_size) for v in group for p in partners]
                feats = self.features(torch.cat(imgs))
                f_anchor = feats[: len(group)]
                if n_part:
                    f_part = feats[len(group) :].unflatten(0, (len(group), len(partners)))
            plain += list(self.cam_maps(f_anchor)[:, classes])
            plain_f += [v.flip for v in group]
            for j, v in enumerate(group):
                view_feats[v] = f_anchor[j : j + 1]
                if not n_part:
                    continue
                # the anchor's co-attended features against every partner at once
                fa = f_anchor[j : j + 1].expand(n_part, -1, -1, -1)
                maps = self.co_classifier(co_attend(f_part[j], fa, self.coatt.weight))  # [M, K, h, w]
                per_class = [
                    maps[rows, c].mean(0) if rows else maps.new_zeros(maps.shape[-2:])
                    for c, rows in zip(classes, rows_of, strict=True)
                ]
                co.append(torch.stack(per_class))
                co_f.append(v.flip)
        components = [fuse_views(plain, plain_f, grid)]
        if co:
            components.append(fuse_views(co, co_f, grid))
        if self_pairs and len(views) > 1:
            components.append(self._self_pair_cams(view_feats, views, classes, grid))
        return finish_cams(components, out_size)

    def _self_pair_cams(
        self, feats: dict[View, torch.Tensor], views: Sequence[View], classes: list[int], grid: tuple[int, int]
    ) -> torch.Tensor:
        """Co-attention CAMs of the base view paired with each other view (both sides), fused."""
        base = next((v for v in views if v.scale == 1.0 and not v.flip), views[0])
        maps, flips = [], []
        for v in views:
            if v == base:
                continue
            m_co, n_co = co_attention(feats[base], feats[v], self.coatt.weight)
            maps += [self.co_classifier(m_co)[0, classes], self.co_classifier(n_co)[0, classes]]
            flips += [base.flip, v.flip]
        return fuse_views(maps, flips, grid)

    @torch.no_grad()
    def official_maps(
        self,
        base: torch.Tensor,
        copies: Sequence[tuple[View, torch.Tensor]],
        classes: Sequence[int],
        partner_feats: torch.Tensor | None = None,
        partner_rows: dict[int, list[int]] | None = None,
    ) -> list[torch.Tensor]:
        """The raw co-attention maps the reference's ``test.py`` fuses, each ``[K', h, w]`` on the base grid.

        Args:
            base: ``[1, D, h, w]`` head features of the image at the base view (input size, not flipped).
            copies: ``(view, [1, D, h_v, w_v] features)`` of the image's copies (the reference: flip, 0.75×, 2×).
            classes: the ``K'`` classes whose channels are returned.
            partner_feats: ``[M, D, h, w]`` base-view features of the partners (None: no P map).
            partner_rows: ``{class: indices into partner_feats}`` (repeats allowed).

        Returns:
            ``[A, one map per copy, P]``: A = the image's map in the pair (image, first copy); per copy, the
            copy's map in the pair (image, copy), flipped back and bicubic-resized to the base grid; P = the
            image's maps against each partner of a class, averaged (channel of that class).
        """
        classes = list(classes)
        w, grid = self.coatt.weight, tuple(base.shape[-2:])
        maps: list[torch.Tensor] = []
        for view, feats in copies:
            # the reference's pair (image, copy): one affinity F_imageᵀ W F_copy for both sides
            image_co, copy_co = co_attention(base, feats, w)
            if not maps:
                maps.append(self.co_classifier(image_co)[0, classes])
            maps.append(to_base_grid(self.co_classifier(copy_co)[0, classes], view.flip, grid))  # type: ignore[arg-type]
        if partner_feats is not None and len(partner_feats):
            rows = partner_rows or {}
            per = self.co_classifier(co_attend(partner_feats, base.expand(len(partner_feats), -1, -1, -1), w))
            maps.append(torch.stack([per[rows[c], c].mean(0) if rows.get(c) else per.new_zeros(grid) for c in classes])
                        if classes else per[0, :0])  # fmt: skip
        return maps


def _nonempty_rows(target: torch.Tensor) -> torch.Tensor:
    return target.sum(1) > 0


def _all_rows(target: torch.Tensor) -> torch.Tensor:
    return (target.sum(1) > 0).any().expand(target.shape[0])


CONTRASTIVE_ROWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "nonempty": _nonempty_rows,
    "all": _all_rows,
}
"""``contrastive_rows``: targets ``[B, K]`` → ``bool [B]``, the rows one side's contrastive loss averages over
(``all``: every row once any row has a target class, none otherwise, as the reference's ``train.py``)"""


def mcis_loss(out: dict[str, Any], batch: dict, epoch: int, hp: MCISConfig) -> dict[str, torch.Tensor]:
    """The MCIS objective (sum of multi-label soft-margin terms); returns ``loss`` and its parts."""
    ya, yp = batch["label_a"], batch["label_p"]
    shared = shared_labels(ya, yp)
    loss_plain = multilabel_loss(torch.cat([out["logits"], out["logits_p"]]), torch.cat([ya, yp]))
    keep = shared.sum(1) > 0
    loss_co = (
        multilabel_loss(torch.cat([out["co_a"][keep], out["co_p"][keep]]), torch.cat([shared[keep], shared[keep]]))
        if keep.any()
        else out["co_a"].sum() * 0
    )
    loss_self = out["co_a"].new_zeros(())
    y2 = torch.cat([ya, ya])
    for logits_v, (co_a_v, co_v) in zip(out["logits_v"], out["co_self"], strict=True):
        loss_self = loss_self + multilabel_loss(torch.cat([out["logits"], logits_v]), y2)
        loss_self = loss_self + multilabel_loss(torch.cat([co_a_v, co_v]), y2)
    loss = loss_plain + loss_co + loss_self
    parts = {"plain": loss_plain.detach(), "co": loss_co.detach(), "self": loss_self.detach()}
    if epoch >= hp.contrastive_from_epoch and "contrast_a" in out:
        loss_contrast = out["co_a"].new_zeros(())
        for logits, target in (
            (out["contrast_a"], unshared_labels(ya, yp)),
            (out["contrast_p"], unshared_labels(yp, ya)),
        ):
            rows = CONTRASTIVE_ROWS[hp.contrastive_rows](target)
            if rows.any():
                loss_contrast = loss_contrast + multilabel_loss(logits[rows], target[rows])
        loss = loss + loss_contrast
        parts["contrast"] = loss_contrast.detach()
    return {"loss": loss, **parts}


def mcis_step(net: nn.Module, batch: dict, epoch: int, hp: MCISConfig) -> dict[str, torch.Tensor]:
    """One MCIS training step's losses (``net`` may be DDP-wrapped: everything goes through ``forward``)."""
    contrastive = epoch >= hp.contrastive_from_epoch
    out = net(batch["anchor"], batch["partner"], batch["views"], contrastive=contrastive)
    return mcis_loss(out, batch, epoch, hp)


def extra_step(net: nn.Module, batch: dict, epoch: int, hp: MCISConfig) -> dict[str, torch.Tensor]:
    """One step on a batch of any source, losses keyed per source (``main/co``, ``web/co``, ...).

    ``net`` may be DDP-wrapped: everything goes through its ``forward``.
    """
    source = batch["source"]
    if source == "main":
        losses = mcis_step(net, batch, epoch, hp)
        return {"loss": losses["loss"], **{f"main/{k}": v for k, v in losses.items() if k != "loss"}}
    out = net(batch["anchor"], batch["partner"], (), contrastive=False)
    logs: dict[str, torch.Tensor] = {}
    weights = None
    if source == "web":
        scores = query_scores(out["co_a"], out["co_p"], batch["query"])
        weights = web_weights(scores, epoch, hp.web)
        logs = {"score": scores.mean(), "kept": (weights >= 1).float().mean()}
    losses = extra_pair_loss(out, batch, weights)
    logs = {"plain": losses["plain"], "co": losses["co"], **logs}
    return {"loss": losses["loss"], **{f"{source}/{k}": v for k, v in logs.items()}}


class FeatureCache:
    """Head features of images under every view, kept in an LRU bounded in bytes.

    Each image is also drawn as a partner of ~k images per class, so caching its features means the
    backbone runs about once per image and view instead of once per pair.
    """

    def __init__(self, images: CamImagePredictor, net: CamNet, budget_bytes: int):
        self.images, self.net, self.budget, self.used = images, net, budget_bytes, 0
        self.items: OrderedDict[int, dict[float, torch.Tensor]] = OrderedDict()

    def features(self, i: int, image: torch.Tensor | None = None) -> dict[float, torch.Tensor]:
        if i in self.items:
            self.items.move_to_end(i)
            return self.items[i]
        p = self.images
        feats = self.net.view_features(p.image(i) if image is None else image, p.views, p.input_size)
        self.items[i] = feats
        self.used += sum(f.numel() * f.element_size() for f in feats.values())
        while self.used > self.budget and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.used -= sum(f.numel() * f.element_size() for f in old.values())
        return feats


class MCISPredictor(CamImagePredictor):
    """MCIS CAMs of one image, fused by the config's ``test_fusion`` mode (:data:`TEST_FUSIONS`)."""

    def __init__(self, net: MCISNet, ds: SegDataset, views: Sequence[View], cfg: MCISConfig, device, seed: int):
        self.fusion = TEST_FUSIONS[cfg.test_fusion]
        if self.fusion.views and list(views) != list(self.fusion.views):
            log.info("MCIS test_fusion %s uses its own views %s, not the %d given", cfg.test_fusion,
                     [(v.scale, v.flip) for v in self.fusion.views], len(views))  # fmt: skip
        super().__init__(net, ds, self.fusion.views or views, cfg.input_size, device)
        self.cfg, self.seed = cfg, seed
        self.labels = [r.labels for r in ds.records]
        self.members = class_index(self.labels, ds.num_classes)
        # only partners recur: without pairing, caching would only hold memory
        self.cache = FeatureCache(self, net, cfg.cache_mb * 2**20 if cfg.test_partners > 0 else 0)

    def partners(self, i: int) -> tuple[list[dict[float, torch.Tensor]], dict[int, list[int]]]:
        """Features of image ``i``'s ``test_partners`` partners per class (each unique partner once, cached) and
        ``{class: indices into that list}``."""
        drawn = sample_partners(
            self.labels, self.members, i, self.cfg.test_partners, self.seed, include_self=self.fusion.include_self
        )
        unique = sorted({j for js in drawn.values() for j in js})
        pos = {j: n for n, j in enumerate(unique)}
        return [self.cache.features(j) for j in unique], {c: [pos[j] for j in js] for c, js in drawn.items()}

    def __call__(self, i: int, classes: Sequence[int]) -> torch.Tensor:
        return self.fusion.predict(self, i, list(classes))


def _predict_weakseg(p: MCISPredictor, i: int, classes: list[int]) -> torch.Tensor:
    image = p.image(i)
    kwargs: dict[str, Any] = {"self_pairs": p.cfg.test_self_pairs, "anchor_feats": p.cache.features(i, image)}
    if p.cfg.test_partners > 0:
        kwargs["partner_feats"], kwargs["partner_rows"] = p.partners(i)
    net: MCISNet = p.net  # type: ignore[assignment]
    return net.predict_cams(image, classes, p.views, p.input_size, tuple(image.shape[-2:]), **kwargs)


def _view_feature(feats: dict[float, torch.Tensor], views: Sequence[View], view: View) -> torch.Tensor:
    """``[1, D, h, w]`` features of ``view`` out of :meth:`CamNet.view_features` of ``views``."""
    j = _views_by_scale(views)[view.scale].index(view)
    return feats[view.scale][j : j + 1]


def _predict_official(p: MCISPredictor, i: int, classes: list[int]) -> torch.Tensor:
    image = p.image(i)
    feats = p.cache.features(i, image)
    base = _view_feature(feats, p.views, OFFICIAL_BASE)
    copies = [(v, _view_feature(feats, p.views, v)) for v in OFFICIAL_COPIES]
    partner_feats, rows = None, None
    if p.cfg.test_partners > 0:
        partners, rows = p.partners(i)
        partner_feats = torch.cat([_view_feature(f, p.views, OFFICIAL_BASE) for f in partners])
    net: MCISNet = p.net  # type: ignore[assignment]
    maps = net.official_maps(base, copies, classes, partner_feats, rows)
    return finish_official(official_fusion(maps), tuple(image.shape[-2:]))


@dataclass(frozen=True)
class FusionMode:
    """A test-time fusion of MCIS CAMs: ``predict(predictor, i, classes) -> [K', H, W]`` in [0, 1]."""

    predict: Callable[[MCISPredictor, int, list[int]], torch.Tensor]
    views: tuple[View, ...] = ()
    """the views it always uses (empty: make-cams' --scales/--flip)"""
    include_self: bool = False
    """partners may be the image itself"""


OFFICIAL_BASE = View(1.0, False)
OFFICIAL_COPIES = (View(1.0, True), View(0.75, False), View(2.0, False))
"""the reference's test-time copies of the image (``test_data_loader``'s ``tsfm_more``): flipped, 0.75×, 2×"""

TEST_FUSIONS: dict[str, FusionMode] = {
    "weakseg": FusionMode(_predict_weakseg),
    "official": FusionMode(_predict_official, views=(OFFICIAL_BASE, *OFFICIAL_COPIES), include_self=True),
}
"""``test_fusion`` modes (see the module docstring)"""


@register_method
class MCISMethod(Method):
    """MCIS: the co-attention classifier trained on pairs (settings 1-3), CAMs fused over partners."""

    name = "mcis"
    task = "tags"
    description = "co-attention classifier trained on image pairs (core method)"
    paper = (
        "Sun, Wang, Dai, Van Gool: Mining Cross-Image Semantics for Weakly Supervised Semantic Segmentation, ECCV 2020"
    )
    Config = MCISConfig
    presets = PRESETS

    def __init__(self, config: MCISConfig):
        super().__init__(config)
        self._extras: list[ExtraSet] | None = None

    def build(self, backbone: Backbone, num_classes: int) -> MCISNet:
        return MCISNet(backbone, num_classes, self.cfg)

    def extras(self, ds: SegDataset) -> list[ExtraSet]:
        if self._extras is None:
            self._extras = [open_extra(parse_extra(e), ds.class_names) for e in self.cfg.extra]
        return self._extras

    def describe_data(self) -> dict[str, Any]:
        if not self._extras:
            return {}
        return {"extra": [ex.describe() for ex in self._extras]}

    def loader(self, ds: SegDataset, ctx: LoaderContext) -> LoaderFactory:
        c = self.cfg
        return pair_batches(
            ds, input_size=c.input_size, jitter=c.jitter, batch_size=c.batch_size, self_pairs=c.self_pairs,
            seed=ctx.seed, extras=self.extras(ds), rank=ctx.rank, world=ctx.world, workers=ctx.workers,
        )  # fmt: skip

    def step(self, net: nn.Module, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        if self.cfg.extra:
            return extra_step(net, batch, epoch, self.cfg)
        return mcis_step(net, batch, epoch, self.cfg)

    def cam_predictor(
        self, net: nn.Module, ds: SegDataset, views: Sequence[View], device: torch.device, seed: int
    ) -> MCISPredictor:
        return MCISPredictor(net, ds, views, self.cfg, device, seed)  # type: ignore[arg-type]
