"""SDS: training-free selection of (image, mask) pairs with a frozen CLIP (``weakseg select``).

Paper: Hao Tang, Siyue Yu, Jian Pang, Bingfeng Zhang, "A Training-free Synthetic Data Selection Method for Semantic
Segmentation", AAAI 2025 (arXiv 2501.15201); official code ``tanghao2000/SDS`` (``PCS_voc.py``, ``ASF.py``; read,
not copied). The maths is :mod:`weakseg.cams.sds`; this module runs the CLIP:

- :meth:`SDSScorer.probs`: CLIP-ES's image score (patch tokens mean-pooled, ``ln_post``, ``proj``, cosine to the
  text rows × ``logit_scale``) of an image and of its seeded patch-shuffled copy, in one batch of two; softmax over
  the rows of the annotated classes + the background words (PCS), and over all class rows (class evidence).
- :meth:`SDSScorer.pseudo_mask`: CLIP-ES CAMs of the annotated classes
  (:class:`weakseg.methods.clip_es.ClipESPredictor`: batched last-block GradCAM, attention-affinity refinement),
  then ``bg = (1 - max cam) ** bg_power`` and argmax.

SDS reads no image-level labels of its own: a sample's classes are those of its annotation (mask classes, plus the
labels the loader gives, which for mask datasets are read off the same masks). Nothing is trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.backbones.clip import ClipVisual
from weakseg.cams.cam import View
from weakseg.cams.sds import patch_shuffle, pseudo_from_cams, shuffle_permutation
from weakseg.data.dataset import SegDataset
from weakseg.data.transforms import to_tensor
from weakseg.errors import ConfigError, unknown_name
from weakseg.methods.clip_es import ClipESConfig, ClipESNet, ClipESPredictor, clip_scores

PCS_RULES = ("threshold", "drop")
PCS_SCORES = ("entropy", "embedding")
CAM_WEIGHTS = ("none", "relative")


@dataclass(frozen=True)
class SDSConfig:
    """SDS selection (defaults: the official code's values where it has one)."""

    pcs_score: str = "entropy"
    """entropy: |H(p) - H(p_shuffled)| (the official code); embedding: 1 - cosine of the two images' CLIP embeddings
    (the paper's name, a CLIP similarity; weakseg's option)"""
    grid: int = 4
    """PCS perturbation: the CLIP input is cut into grid × grid equal cells that are permuted (official: 4 × 4)"""
    seed: int = 0
    """seed of the cell permutation (the official one is unseeded); the same permutation for every image"""
    pcs_rule: str = "threshold"
    """threshold: keep an image when PCS > pcs_threshold (official); drop: drop the pcs_drop share with the lowest
    PCS (for a CLIP whose PCS scale is unknown, e.g. the embedded toy CLIP)"""
    pcs_threshold: float = 0.1
    """PCS threshold in nats (official 0.1) for pcs_rule=threshold"""
    pcs_drop: float = 0.2
    """share of the images dropped by PCS for pcs_rule=drop"""
    asf_keep: float = 0.5
    """ASF class-balanced quota: of the PCS survivors that contain a class, keep the best-agreeing ceil(asf_keep × n);
    0.5 halves the data as in the paper's claim (the official code has no cut-off: it only sorts)"""
    bg_power: float = 1.0
    """CLIP pseudo mask: background score (1 - max CAM) ** bg_power (CLIP-ES: 1)"""
    cam_weight: str = "none"
    """none: each annotated class's CAM as is (SDS, CLIP-ES: min-max per class); relative: scaled by the class's
    zero-shot probability over all classes ÷ the largest one, so a class CLIP does not see in the image yields
    little pseudo mask (weakseg's option; it catches wrongly named classes)"""

    def check(self) -> None:
        if self.grid < 2:
            raise ConfigError(f"grid must be at least 2 (a 1x1 grid shuffles nothing), got {self.grid}")
        if self.pcs_score not in PCS_SCORES:
            raise unknown_name("PCS score", self.pcs_score, PCS_SCORES)
        if self.pcs_rule not in PCS_RULES:
            raise unknown_name("PCS rule", self.pcs_rule, PCS_RULES)
        if not 0 <= self.pcs_drop < 1:
            raise ConfigError(f"pcs_drop must be in [0, 1), got {self.pcs_drop}")
        if not 0 < self.asf_keep <= 1:
            raise ConfigError(f"asf_keep must be in (0, 1], got {self.asf_keep}")
        if self.bg_power <= 0:
            raise ConfigError(f"bg_power must be > 0, got {self.bg_power}")
        if self.cam_weight not in CAM_WEIGHTS:
            raise unknown_name("cam_weight", self.cam_weight, CAM_WEIGHTS)


PRESETS: dict[str, SDSConfig] = {
    # the official PCS threshold and a halving ASF quota (the paper's "reduces the data size by half")
    "paper": SDSConfig(),
    # the embedded toy CLIP: the official scores, but its PCS scale is not CLIP's, so a share is dropped instead of
    # thresholding, and ASF keeps 80 % per class (a milder cut than halving)
    "toy": SDSConfig(pcs_rule="drop", pcs_drop=0.2, asf_keep=0.8),
    # tests
    "tiny": SDSConfig(grid=2, pcs_rule="drop", pcs_drop=0.25, asf_keep=0.5),
}


def sds_preset(name: str) -> SDSConfig:
    if name not in PRESETS:
        raise unknown_name("SDS preset", name, PRESETS)
    return PRESETS[name]


def clip_side(input_size: int, patch: int, grid: int) -> int:
    """The square CLIP input side for PCS: ``input_size`` rounded to a multiple of ``grid × patch``, so every
    shuffled cell is a whole number of tokens (official: 512-px images, 16-px patches, 128-px cells)."""
    unit = grid * patch
    return max(unit, int(round(input_size / unit)) * unit)


@dataclass(frozen=True)
class SampleProbs:
    """CLIP's view of one image: softmax over [annotated classes + background words] of the image (``orig``) and of
    its shuffled copy (``shuffled``), ``float [R]`` each; the softmax over all class rows (``classes`` ``[K]``); and
    the cosine between the two images' unit CLIP-ES embeddings (``cosine``, a float)."""

    orig: torch.Tensor
    shuffled: torch.Tensor
    classes: torch.Tensor
    cosine: float


class SDSScorer:
    """PCS probabilities and CLIP pseudo masks of the images of ``ds`` with a frozen CLIP.

    ``clip``: an open_clip ``CLIP``; ``clip_cfg``: the clip-es settings (prompts, background words, input size,
    refinement) whose text classifier and CAMs are used; ``cfg``: SDS's own settings.
    """

    def __init__(self, clip: nn.Module, ds: SegDataset, clip_cfg: ClipESConfig, cfg: SDSConfig, device: torch.device):
        cfg.check()
        clip_cfg.check()
        self.cfg, self.clip_cfg, self.ds, self.device = cfg, clip_cfg, ds, device
        self.cams = ClipESPredictor(ClipESNet(clip, trainable=False), ds, [View(1.0, False)], clip_cfg, device)
        self.visual: ClipVisual = self.cams.visual
        self.text, self.scale = self.cams.text, self.cams.scale  # [K + B, E], logit scale
        self.num_classes = self.cams.num_classes
        self.side = clip_side(clip_cfg.input_size, self.visual.patch_size, cfg.grid)
        self.perm = shuffle_permutation(cfg.grid * cfg.grid, cfg.seed)

    @torch.no_grad()
    def probs(self, image: np.ndarray, classes: Sequence[int]) -> SampleProbs:
        """CLIP's softmax vectors for ``image`` (``uint8 [H, W, 3]``) with annotated 0-based ``classes``."""
        x = to_tensor(image)[None].to(self.device)
        x = F.interpolate(x, (self.side, self.side), mode="bilinear", align_corners=False,
                          antialias=self.side < max(x.shape[-2:]))  # fmt: skip
        pair = torch.cat([x, patch_shuffle(x, self.cfg.grid, self.perm)])
        tokens, _ = self.visual.run_blocks(self.visual.embed(pair)[0])
        logits = clip_scores(self.visual, tokens, self.text, self.scale).float()  # [2, K + B]
        rows = [*sorted(set(classes)), *range(self.num_classes, self.text.shape[0])]
        p = logits[:, rows].softmax(-1).cpu()
        emb = F.normalize(self.visual.project(tokens[:, 1:].mean(1)).float(), dim=-1)
        cosine = float((emb[0] * emb[1]).sum())
        return SampleProbs(p[0], p[1], logits[0, : self.num_classes].softmax(-1).cpu(), cosine)

    @staticmethod
    def class_weights(probs: SampleProbs, classes: Sequence[int], cam_weight: str) -> torch.Tensor | None:
        """Per-class CAM weights ``[K']`` for ``cam_weight`` (None for ``none``): ``relative`` is each class's
        zero-shot probability over all classes divided by the largest one."""
        if cam_weight == "none" or not classes:
            return None
        p = probs.classes
        return p[list(classes)] / p.max().clamp_min(1e-12)

    def pseudo_masks(self, i: int, classes: Sequence[int], probs: SampleProbs) -> dict[str, np.ndarray]:
        """CLIP pseudo masks ``uint8 [H, W]`` of image ``i`` at its own size for the annotated 0-based ``classes``
        (0 = background, ``c + 1`` = class ``c``; all background when there is no class), one per ``cam_weight``
        (:data:`CAM_WEIGHTS`) from the same CAMs."""
        classes = sorted(set(classes))
        cams = self.cams(i, classes)  # [K', H, W] in [0, 1]
        return {
            w: pseudo_from_cams(cams, classes, self.cfg.bg_power, self.class_weights(probs, classes, w))
            for w in CAM_WEIGHTS
        }


def pcs_cut(scores: np.ndarray, cfg: SDSConfig) -> float:
    """The PCS value at the cut (for the report): the threshold, or the highest dropped score under ``drop``."""
    if cfg.pcs_rule == "threshold":
        return cfg.pcs_threshold
    k = int(math.floor(cfg.pcs_drop * len(scores) + 1e-9))
    return float(np.sort(scores)[k - 1]) if k else float("-inf")
