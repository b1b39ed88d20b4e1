"""Pseudo-label math: CAMs (+ optional saliency) -> background -> refiner -> label map.

For one image, ``cams`` (``[K, H, W]`` in ``[0, 1]`` of its labelled classes) become a label map: 0 =
background, ``c + 1`` = class ``c``, 255 = ignore. A background rule (:data:`BACKGROUNDS`) adds a
background score and possibly an ignore mask; the scores are normalised per pixel, refined
(:data:`REFINERS`), and the argmax is taken; pixels whose top-1 minus top-2 probability is below
``ignore_margin`` are ignored. The ``rw`` refiner (AffinityNet's random walk, Ahn & Kwak, CVPR 2018;
:mod:`weakseg.refine.affinity`) propagates the raw scores (background included) before they are
normalised, as PSA does: on the AffinityNet feature grid, then upsampled to the image.

The stage that writes a folder of pseudo labels is :mod:`weakseg.stages.pseudo`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.errors import ConfigError, unknown_name
from weakseg.refine.affinity import random_walk, transition_matrix
from weakseg.refine.affinity_net import AffinityNet, affinity_features, resize_to_max_side
from weakseg.refine.background import (
    low_margin,
    mcis_background,
    normalise_scores,
    power_background,
    scores_to_label,
    threshold_background,
    with_background,
)
from weakseg.refine.crf import crf_refine
from weakseg.refine.par import par_refine

log = logging.getLogger(__name__)

BG_OFFSET = 0.15
"""the threshold rule's default background score is the seed sweep's best threshold minus this (the refiner grows
regions); chosen on the synthetic benchmark's train masks (docs/results/demo.md)"""

MASK_FREE_BG_THRESHOLD = 0.45
"""the threshold rule's background score when no masks can tune it (no seed sweep): the demo's value (its cpu192
CAMs' best seed threshold 0.6 minus BG_OFFSET). On the synthetic benchmark's train masks it was within 1.3 points
of the best pseudo-label mIoU for those CAMs and 2.1 for the 128-px classifier's (docs/results/demo.md); CAMs of
another classifier or dataset may want another value: label a few images and let eval-cams tune it (calib)"""


@dataclass(frozen=True)
class PseudoOptions:
    """Pseudo-label options (nested as ``pseudo`` in ``weakseg run``)."""

    background: str = "threshold"
    """background rule: threshold (constant bg_threshold), power ((1 - max CAM)^bg_power), mcis (saliency maps)"""
    bg_threshold: float | None = None
    """background score of the threshold rule; None = the best seed threshold of the eval-cams sweep minus
    BG_OFFSET where a sweep ran (it reads masks: the split's or a calibration folder's), else
    MASK_FREE_BG_THRESHOLD"""
    bg_power: float = 3.0
    """exponent of the power rule; foreground where max CAM > (1 - max CAM)^p (p=3: above ~0.32)"""
    refiner: str = "par"
    """par (torch pixel-adaptive refinement), crf (dense CRF, extra 'crf'), rw (AffinityNet random walk, needs a
    train-aff folder) or none"""
    ignore_margin: float = 0.05
    """pixels whose top-1 minus top-2 class probability is below this become 255 (0 = off)"""
    par_max_side: int = 320
    """PAR runs at most at this resolution (px, longer side) and is upsampled back"""
    par_scale: float = 0.65
    """PAR runs at this fraction of the image size (≤ 1; par_max_side still caps it)"""
    par_iters: int = 20
    """PAR propagation steps (each reaches up to 24 px further with the default dilations; AFA: 10)"""
    par_w1: float = 0.2
    """PAR colour/position temperature; smaller = stops more sharply at colour edges (AFA: 0.3)"""
    rw_beta: float = 8.0
    """rw: affinities are raised to this power before the walk (PSA: 8; larger = sharper boundaries)"""
    rw_iters: int = 256
    """rw: random-walk steps (PSA: 2^8 = 256)"""
    rw_max_side: int = 512
    """rw: images are shrunk to at most this side (px) for the walk (512 px at stride 8: <= 4096 cells, a dense
    64 MiB transition matrix)"""

    def check(self) -> None:
        if self.background not in BACKGROUNDS:
            raise unknown_name("background rule", self.background, BACKGROUNDS)
        if self.refiner not in REFINERS:
            raise unknown_name("refiner", self.refiner, REFINERS)
        if not 0 <= self.ignore_margin < 1:
            raise ConfigError(f"ignore_margin must lie in [0, 1), got {self.ignore_margin}")
        if self.par_iters < 0 or self.par_w1 <= 0:
            raise ConfigError(f"need par_iters >= 0 and par_w1 > 0, got {self.par_iters} and {self.par_w1}")
        if not 0 < self.par_scale <= 1:
            raise ConfigError(f"par_scale must lie in (0, 1], got {self.par_scale}")
        if self.rw_beta <= 0 or self.rw_iters < 0 or self.rw_max_side < 16:
            raise ConfigError("need rw_beta > 0, rw_iters >= 0 and rw_max_side >= 16")

    def used(self) -> dict[str, Any]:
        """The options as a dict without those of the refiners not in use (they cannot change the labels)."""
        d = {k: getattr(self, k) for k in PseudoOptions.__dataclass_fields__}  # not a subclass's (stage IO) fields
        unused = {"rw": ("rw_beta", "rw_iters", "rw_max_side"), "par": ("par_iters", "par_w1", "par_scale",
                                                                         "par_max_side")}  # fmt: skip
        for refiner, keys in unused.items():
            if self.refiner != refiner:
                for k in keys:
                    d.pop(k)
        if self.background != "power":
            d.pop("bg_power")
        if self.background != "threshold":
            d.pop("bg_threshold")
        return d


def choose_bg_threshold(given: float | None, seeds: dict | None) -> tuple[float, str]:
    """The threshold rule's background score and where it came from, in words (for metrics and reports).

    ``given`` (a number the user chose) wins; else an eval-cams result ``seeds`` with a sweep gives
    :func:`background_threshold`; else :data:`MASK_FREE_BG_THRESHOLD`.
    """
    if given is not None:
        return float(given), "given (bg_threshold)"
    if seeds and seeds.get("best_threshold") is not None and seeds.get("best_miou") is not None:
        calib = seeds.get("mask_source") == "calib"
        where = seeds.get("masks_read", "calibration masks") if calib else f"the {seeds.get('split', 'train')} masks"
        best, value = float(seeds["best_threshold"]), background_threshold(seeds)
        clipped = " (at least 0.05)" if value > best - BG_OFFSET + 1e-9 else ""
        return value, f"tuned on {where}: the seed sweep's best {best:g} - {BG_OFFSET}{clipped}"
    return MASK_FREE_BG_THRESHOLD, f"mask-free default {MASK_FREE_BG_THRESHOLD} (no masks to tune it on)"


def background_threshold(seeds: dict) -> float:
    """The threshold rule's background score from an eval-cams result: best threshold - BG_OFFSET (>= 0.05)."""
    best = seeds.get("best_threshold")
    if best is None or seeds.get("best_miou") is None:
        raise ConfigError("no seed sweep to pick a background threshold from (no masks); pass --bg-threshold")
    return round(max(0.05, float(best) - BG_OFFSET), 2)


# --- registries --------------------------------------------------------------------------------

# (cams [K,H,W], saliency [H,W] or None, cfg) -> (scores [1+K,H,W], ignore bool [H,W] or None)
BackgroundRule = Callable[
    [torch.Tensor, "torch.Tensor | None", PseudoOptions],
    tuple[torch.Tensor, "torch.Tensor | None"],
]


def _bg_power(cams: torch.Tensor, saliency: torch.Tensor | None, cfg: PseudoOptions):
    return with_background(cams, power_background(cams, cfg.bg_power)), None


def _bg_threshold(cams: torch.Tensor, saliency: torch.Tensor | None, cfg: PseudoOptions):
    return with_background(cams, threshold_background(cams, cfg.bg_threshold)), None


def _bg_mcis(cams: torch.Tensor, saliency: torch.Tensor | None, cfg: PseudoOptions):
    assert saliency is not None
    r = mcis_background(cams, saliency)
    return r.scores, r.ignore


BACKGROUNDS: dict[str, BackgroundRule] = {"power": _bg_power, "threshold": _bg_threshold, "mcis": _bg_mcis}

Affinity = tuple[AffinityNet, dict]
"""a trained AffinityNet and its train-aff config.json (``radius``), for the rw refiner"""

# (image uint8 [H,W,3], probs [C,H,W], cfg, affinity) -> refined probs [C,H,W]
Refiner = Callable[[np.ndarray, torch.Tensor, PseudoOptions, "Affinity | None"], torch.Tensor]


def _refine_none(image: np.ndarray | None, probs: torch.Tensor, cfg: PseudoOptions, aff: Affinity | None):
    return probs


def _refine_par(image: np.ndarray, probs: torch.Tensor, cfg: PseudoOptions, aff: Affinity | None) -> torch.Tensor:
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    kw = {"iters": cfg.par_iters, "w1": cfg.par_w1, "max_side": cfg.par_max_side, "scale": cfg.par_scale}
    return par_refine(img, probs[None], **kw)[0]


def _refine_crf(image: np.ndarray, probs: torch.Tensor, cfg: PseudoOptions, aff: Affinity | None) -> torch.Tensor:
    return torch.from_numpy(crf_refine(image, probs.numpy()))


def _refine_rw(image: np.ndarray, scores: torch.Tensor, cfg: PseudoOptions, aff: Affinity | None) -> torch.Tensor:
    """AffinityNet random walk of scores ``[C, H, W]`` on the feature grid (PSA), back at ``[C, H, W]``."""
    if aff is None:
        raise ConfigError("refiner 'rw' needs a trained AffinityNet: run `weakseg train-aff`, give --affinity DIR")
    net, meta = aff
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
    features = affinity_features(net, resize_to_max_side(img, cfg.rw_max_side))  # [D, h, w]
    small = F.interpolate(scores[None], size=features.shape[-2:], mode="area")[0]  # PSA: average pooling
    walked = random_walk(small, transition_matrix(features, int(meta["radius"]), cfg.rw_beta), cfg.rw_iters)
    return F.interpolate(walked[None], size=scores.shape[-2:], mode="bilinear", align_corners=False)[0]


REFINERS: dict[str, Refiner] = {"none": _refine_none, "par": _refine_par, "crf": _refine_crf, "rw": _refine_rw}
SCORE_REFINERS = frozenset({"rw"})
"""refiners that take the raw scores (before :func:`normalise_scores`) instead of probabilities"""


# --- one image ---------------------------------------------------------------------------------


def make_label(
    cams: np.ndarray | torch.Tensor,
    classes: Sequence[int],
    image: np.ndarray | None,
    cfg: PseudoOptions,
    saliency: np.ndarray | torch.Tensor | None = None,
    affinity: Affinity | None = None,
) -> np.ndarray:
    """Pseudo label ``uint8 [H, W]`` of one image from its CAMs ``[K, H, W]`` and classes ``[K]``.

    ``image`` (``uint8 [H, W, 3]``) is needed by the ``par``, ``crf`` and ``rw`` refiners; ``saliency``
    (``[H, W]`` in ``[0, 1]``) by the ``mcis`` rule; ``affinity`` by ``rw``. The threshold rule needs
    ``cfg.bg_threshold`` set (see :func:`background_threshold`).
    """
    if cfg.background == "threshold" and cfg.bg_threshold is None:
        raise ConfigError("the threshold background rule needs bg_threshold (a number)")
    if cfg.background == "mcis" and saliency is None:
        raise ConfigError("background rule 'mcis' needs saliency maps: give --saliency DIR")
    cams_t = torch.as_tensor(np.asarray(cams, dtype=np.float32))
    sal = None if saliency is None else torch.as_tensor(np.asarray(saliency, dtype=np.float32))
    scores, ignore = BACKGROUNDS[cfg.background](cams_t, sal, cfg)
    refine = cams_t.shape[0] > 0 and cfg.refiner != "none"
    if refine and image is None:
        raise ValueError(f"refiner {cfg.refiner!r} needs the image")
    if refine and cfg.refiner in SCORE_REFINERS:
        scores = REFINERS[cfg.refiner](image, scores, cfg, affinity)
    probs = normalise_scores(scores)
    if refine and cfg.refiner not in SCORE_REFINERS:
        probs = REFINERS[cfg.refiner](image, probs, cfg, affinity)
    uncertain = low_margin(probs, cfg.ignore_margin)
    ignore = uncertain if ignore is None else (ignore | uncertain)
    return scores_to_label(probs, list(classes), ignore)
