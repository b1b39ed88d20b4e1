"""Stage ``train-aff``: train AffinityNet on confident CAM seeds (for the ``rw`` pseudo-label refiner).

AffinityNet (Ahn & Kwak, CVPR 2018, "PSA"; :mod:`weakseg.refine.affinity_net`) learns which nearby
pixels belong together from the CAMs alone: each training image's CAMs (``<cams>/<image_id>.npz``,
restricted to the image's labelled classes) become a seed label (:func:`weakseg.refine.affinity.seed_label`):
foreground where the highest CAM is at least ``fg_threshold``, background below ``bg_threshold``, unknown
(255) in between. The image and its seed are augmented together (the segmenter's transforms), the seed is
downsampled to the feature grid (cell centres), and every pair of cells within ``radius`` gets PSA's loss
``bg_pos / 4 + fg_pos / 4 + neg / 2``. The ground-truth masks are never read. Optimisation: the dense
trainer (:func:`weakseg.engine.dense.train_dense`), sized for CPU by default (96 px crops, 3 epochs).

Outputs: ``config.json`` (record + ``backbone``, ``output_stride``, ``dim``, ``radius``), ``model.safetensors``,
``tb/``, ``state/`` and ``DONE`` last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.data.dense import TargetImages
from weakseg.data.joint_transforms import train_transform
from weakseg.data.registry import open_dataset
from weakseg.engine import dist
from weakseg.engine.artifacts import load_npz, mark_done, require_complete_outputs
from weakseg.engine.dense import DenseTrainConfig, train_dense
from weakseg.engine.device import resolve_device, seed_everything
from weakseg.engine.stage import begin_stage, stage_record
from weakseg.errors import ConfigError, DataError
from weakseg.refine.affinity import (
    PSA_RADIUS,
    affinity_loss_terms,
    affinity_targets,
    downsample_label,
    neighbour_offsets,
    pair_affinity,
    seed_label,
)
from weakseg.refine.affinity_net import build_affinity_net
from weakseg.stages.io import DataInput, StageOutput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainAffinityOptions:
    """AffinityNet options (nested as ``aff`` in ``weakseg run``; used with the rw refiner)."""

    backbone: str = "efficientnet-lite0"
    """efficientnet-lite0, tiny, or timm:<name> (with --weights)"""
    weights: Path | None = None
    """backbone weights file; None = the backbone's own ImageNet weights"""
    pretrained: bool = True
    output_stride: int = 8
    """backbone output stride (PSA: 8); the random walk runs on this grid"""
    dim: int = 64
    """feature channels of the affinity head"""
    radius: int = PSA_RADIUS
    """pairs within this distance (feature cells) are trained and walked (PSA: 5)"""
    fg_threshold: float | None = None
    """seed foreground where the highest CAM is at least this; None = 0.8, or in `weakseg run` the best seed
    threshold + 0.1 (weakseg.tasks.aff_thresholds)"""
    bg_threshold: float | None = None
    """seed background where the highest CAM is below this; None = 0.5, or in `weakseg run` the best seed
    threshold - 0.2"""
    train: DenseTrainConfig = field(default_factory=lambda: DenseTrainConfig(epochs=3))
    """optimisation (backbone lr; the head at head_lr_mult ×)"""
    crop: int = 96
    """square training crop (px; padded with unknown where the scaled image is smaller)"""
    scale_range: tuple[float, float] = (0.7, 1.3)


@dataclass(frozen=True, kw_only=True)
class TrainAffinityConfig(TrainAffinityOptions, DataInput, StageOutput):
    """Train AffinityNet (PSA) on confident CAM seeds; its folder feeds `weakseg pseudo --refiner rw`."""

    cams: Path
    """folder of ``<image_id>.npz`` CAM files (with a DONE marker)"""
    seed: int = 0

    @property
    def thresholds(self) -> tuple[float, float]:
        fg = 0.8 if self.fg_threshold is None else self.fg_threshold
        bg = 0.5 if self.bg_threshold is None else self.bg_threshold
        return fg, bg

    def check(self) -> None:
        fg, bg = self.thresholds
        if not 0 <= bg <= fg <= 1:
            raise ConfigError(f"need 0 <= bg_threshold <= fg_threshold <= 1, got bg {bg}, fg {fg}")
        if self.crop < 16:
            raise ConfigError(f"crop must be >= 16, got {self.crop}")
        if self.radius < 1 or self.dim < 1:
            raise ConfigError(f"need radius >= 1 and dim >= 1, got radius {self.radius}, dim {self.dim}")
        self.train.check()


def cam_seed(ds, cams: Path, i: int, size: tuple[int, int], fg: float, bg: float) -> np.ndarray:
    """Seed label ``uint8 [H, W]`` of image ``i`` at ``size`` from its CAM file (only its own classes appear)."""
    rec = ds[i]
    path = Path(cams) / f"{rec.image_id}.npz"
    z = load_npz(path)
    maps_np, classes = z["cams"].astype(np.float32), z["classes"].astype(np.int64).reshape(-1)
    if maps_np.ndim != 3 or maps_np.shape[0] != classes.shape[0]:
        raise DataError(f"{path}: cams {maps_np.shape} and classes {classes.shape} do not match")
    keep = np.isin(classes, list(rec.labels))
    maps = torch.from_numpy(maps_np[keep])
    if maps.shape[0] and tuple(maps.shape[1:]) != tuple(size):
        maps = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    if not maps.shape[0]:
        maps = torch.zeros(0, *size)
    return seed_label(maps, classes[keep].tolist(), fg, bg).numpy()


def train_affinity(cfg: TrainAffinityConfig) -> Path:
    """Train (or resume, or skip when complete) an AffinityNet; returns the output folder."""
    cfg.check()
    out = Path(cfg.out)
    ds = open_dataset(cfg.data, split=cfg.split, fmt=cfg.fmt)
    if len(ds) == 0:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no images")
    require_complete_outputs(cfg.cams, [r.image_id for r in ds.records], ".npz", "CAM", "make-cams")
    fg, bg = cfg.thresholds
    record = {**stage_record(cfg, drop=("device", "overwrite", "out")), "fg_threshold": fg, "bg_threshold": bg}
    record["train"].pop("workers", None)
    meta = {"backbone": cfg.backbone, "output_stride": cfg.output_stride, "dim": cfg.dim, "radius": cfg.radius}
    device = resolve_device(cfg.device)
    dist.init_distributed(device)  # before begin_stage: only the main process may write the folder
    if begin_stage(out, "train-aff", record, overwrite=cfg.overwrite, meta=meta) == "complete":
        return out
    seed_everything(cfg.seed)
    model = build_affinity_net(cfg.backbone, cfg.output_stride, cfg.dim, cfg.weights, cfg.pretrained)
    offsets = neighbour_offsets(cfg.radius)

    def step_fn(net: torch.nn.Module, batch, epoch: int) -> dict[str, torch.Tensor]:
        images, seeds = batch
        features = net(images).float()
        targets = affinity_targets(downsample_label(seeds, tuple(features.shape[-2:])), offsets)
        bg_pos, fg_pos, neg = affinity_loss_terms(pair_affinity(features, offsets), targets)
        loss = bg_pos / 4 + fg_pos / 4 + neg / 2
        return {"loss": loss, "bg_pos": bg_pos.detach(), "fg_pos": fg_pos.detach(), "neg": neg.detach()}

    train_set = TargetImages(
        ds, lambda i, size: cam_seed(ds, Path(cfg.cams), i, size, fg, bg), train_transform(cfg.crop, cfg.scale_range)
    )
    log.info(
        "train-aff: %d images, %d epochs, backbone %s (stride %d), crop %d, seeds fg >= %.2f, bg < %.2f",
        len(ds), cfg.train.epochs, cfg.backbone, cfg.output_stride, cfg.crop, fg, bg,
    )  # fmt: skip
    losses = train_dense(model, train_set, model.param_groups(), step_fn, cfg.train, out, device, cfg.seed)
    if dist.is_main():
        mark_done(out, {"final_losses": losses})
    dist.barrier()
    return out
