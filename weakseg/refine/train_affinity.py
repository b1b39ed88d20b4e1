"""Stage ``train-aff``: train AffinityNet on confident CAM seeds (for the ``rw`` pseudo-label refiner).

AffinityNet (Ahn & Kwak, CVPR 2018, "PSA"; :mod:`weakseg.refine.affinity_net`) learns which nearby
pixels belong together from the CAMs alone: each training image's CAMs (``<cams>/<image_id>.npz``,
restricted to the image's ground-truth classes) become a seed label
(:func:`weakseg.refine.affinity.seed_label`): foreground where the highest CAM is at least
``fg_threshold``, background below ``bg_threshold``, unknown (255) in between. The image and its
seed are augmented together (random scale, crop padded with 255, horizontal flip: the segmenter's
transforms), the seed is downsampled to the feature grid (cell centres), and every pair of cells
within ``radius`` gets PSA's loss ``bg_pos / 4 + fg_pos / 4 + neg / 2``
(:func:`weakseg.refine.affinity.affinity_loss`). The ground-truth masks are never read.

Recipe (every knob in :class:`TrainAffinityConfig`): AdamW, poly decay (power 0.9), the head at 10x
the backbone's learning rate (PSA: SGD-like poly schedule, 10x on the new layers, 8 epochs of 448 px
crops on a GPU). Defaults sized for CPU: EfficientNet-Lite0 at output stride 8, 96 px crops, 3
epochs of batch 8. Measured on the shared 2-core machine while other jobs held it (about half a core
for this process): 0.8 s per batch (1.1 s at 112 px, 1.6 s at 128 px), i.e. ~3 min for 600 images;
about half that on an idle core. Stride 16 is 3.5x cheaper but gives an 8 x 8 grid at 128 px, too
coarse for the walk.

Outputs (``out``): ``config.json`` (backbone, output stride, dim, radius and this config),
``model.safetensors``, ``tb/`` (tensorboard), ``state/`` (per-epoch state: an interrupted run resumes
from its last finished epoch through :func:`weakseg.engine.trainer.fit`) and ``DONE`` last; a
complete folder with the same configuration is skipped, another configuration is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from weakseg.engine.artifacts import (
    clear_done,
    config_record,
    load_npz,
    mark_done,
    require_complete_outputs,
    save_json,
    trained_and_complete,
)
from weakseg.errors import ConfigError, DataError
from weakseg.refine.affinity import PSA_RADIUS, seed_label

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainAffinityConfig:
    """Train AffinityNet (PSA) on confident CAM seeds; its folder feeds `weakseg pseudo --refiner rw`."""

    cams: Path
    """folder of ``<image_id>.npz`` CAM files (with a DONE marker)"""
    data: Path
    """dataset root (images and image-level labels)"""
    out: Path
    """output folder: model.safetensors, config.json, tb/, state/, DONE"""
    fmt: str = "auto"
    split: str = "train"
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
    fg_threshold: float = 0.8
    """seed foreground where the highest CAM is at least this (the pipeline: best seed threshold + 0.1)"""
    bg_threshold: float = 0.5
    """seed background where the highest CAM is below this (the pipeline: best seed threshold - 0.2)"""
    epochs: int = 3
    batch_size: int = 8
    lr: float = 1e-3
    """backbone learning rate; the head uses ``head_lr_mult`` times it"""
    head_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    crop: int = 96
    """square training crop (padded with unknown where the scaled image is smaller)"""
    scale_range: tuple[float, float] = (0.7, 1.3)
    seed: int = 0
    device: str = "auto"
    amp: str = "off"
    workers: int = 0
    """data-loading processes"""

    def check(self) -> None:
        if not 0 <= self.bg_threshold <= self.fg_threshold <= 1:
            raise ConfigError(
                f"need 0 <= bg_threshold <= fg_threshold <= 1, got bg {self.bg_threshold}, fg {self.fg_threshold}"
            )
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.crop < 16:
            raise ConfigError("need epochs >= 1, batch_size >= 1, lr > 0 and crop >= 16")
        if self.radius < 1 or self.dim < 1:
            raise ConfigError(f"need radius >= 1 and dim >= 1, got radius {self.radius}, dim {self.dim}")


class SeedTrainSet(Dataset):
    """Images with their CAM seed labels, augmented jointly.

    Items: ``(float [3, crop, crop] in [0, 1], int64 [crop, crop])`` with 0 = background,
    ``c + 1`` = class ``c`` and 255 = unknown (unsure or padding).
    """

    def __init__(self, ds, cams: Path, fg_threshold: float, bg_threshold: float, transform):
        self.ds = ds
        self.cams = Path(cams)
        self.fg_threshold = fg_threshold
        self.bg_threshold = bg_threshold
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ds)

    def seed(self, i: int, size: tuple[int, int]) -> np.ndarray:
        """Seed label ``uint8 [H, W]`` of image ``i`` at ``size`` (only its own classes can appear)."""
        rec = self.ds[i]
        path = self.cams / f"{rec.image_id}.npz"
        z = load_npz(path)
        cams, classes = z["cams"].astype(np.float32), z["classes"].astype(np.int64).reshape(-1)
        if cams.ndim != 3 or cams.shape[0] != classes.shape[0]:
            raise DataError(f"{path}: cams {cams.shape} and classes {classes.shape} do not match")
        keep = np.isin(classes, list(rec.labels))
        maps = torch.from_numpy(cams[keep])
        if maps.shape[0] and tuple(maps.shape[1:]) != tuple(size):
            maps = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
        if not maps.shape[0]:
            maps = torch.zeros(0, *size)
        return seed_label(maps, classes[keep].tolist(), self.fg_threshold, self.bg_threshold).numpy()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # the segmenter's joint image + mask transforms: pure torchvision, no segmenter code
        from weakseg.data.joint_transforms import apply_joint

        image = self.ds.load_image(i)
        return apply_joint(self.transform, image, self.seed(i, image.shape[:2]))


def train_affinity(cfg: TrainAffinityConfig) -> Path:
    """Train (or resume, or skip when complete) an AffinityNet; returns the output folder."""
    from weakseg.data.joint_transforms import train_transform
    from weakseg.data.registry import open_dataset
    from weakseg.engine.device import resolve_device, seed_everything
    from weakseg.engine.trainer import LoopConfig, fit, poly_lr
    from weakseg.refine.affinity import (
        affinity_loss_terms,
        affinity_targets,
        downsample_label,
        neighbour_offsets,
        pair_affinity,
    )
    from weakseg.refine.affinity_net import build_affinity_net

    cfg.check()
    out = Path(cfg.out)
    train_record = config_record(cfg)
    if trained_and_complete(out, train_record, "an AffinityNet"):
        log.info("AffinityNet in %s is complete; skipping", out)
        return out
    ds = open_dataset(cfg.data, split=cfg.split, fmt=cfg.fmt)
    if len(ds) == 0:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no images")
    require_complete_outputs(cfg.cams, [r.image_id for r in ds.records], ".npz", "CAM", "make-cams")
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model = build_affinity_net(cfg.backbone, cfg.output_stride, cfg.dim, cfg.weights, cfg.pretrained)
    clear_done(out)
    meta = {
        "stage": "train-aff",
        "backbone": cfg.backbone,
        "output_stride": cfg.output_stride,
        "dim": cfg.dim,
        "radius": cfg.radius,
        "train": train_record,
    }
    save_json(out / "config.json", meta)

    train_set = SeedTrainSet(
        ds, Path(cfg.cams), cfg.fg_threshold, cfg.bg_threshold, train_transform(cfg.crop, tuple(cfg.scale_range))
    )
    batch_size = min(cfg.batch_size, len(train_set))
    steps_per_epoch = max(1, len(train_set) // batch_size)

    def make_loader(epoch: int) -> DataLoader:
        return DataLoader(
            train_set,
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
            drop_last=True,  # equal batches keep BatchNorm statistics sane
            num_workers=cfg.workers,
            persistent_workers=False,
        )

    backbone_params, head_params = model.param_groups()
    optimizer = torch.optim.AdamW(
        [{"params": backbone_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.head_lr_mult * cfg.lr}],
        weight_decay=cfg.weight_decay,
    )
    offsets = neighbour_offsets(cfg.radius)

    def step_fn(net: torch.nn.Module, batch, epoch: int) -> dict[str, torch.Tensor]:
        images, seeds = batch
        features = net(images).float()
        targets = affinity_targets(downsample_label(seeds, tuple(features.shape[-2:])), offsets)
        bg, fg, neg = affinity_loss_terms(pair_affinity(features, offsets), targets)
        return {"loss": bg / 4 + fg / 4 + neg / 2, "bg_pos": bg.detach(), "fg_pos": fg.detach(), "neg": neg.detach()}

    log.info(
        "train-aff: %d images, %d epochs x %d steps, backbone %s (stride %d), crop %d, seeds fg >= %.2f, bg < %.2f",
        len(ds), cfg.epochs, steps_per_epoch, cfg.backbone, cfg.output_stride, cfg.crop, cfg.fg_threshold,
        cfg.bg_threshold,
    )  # fmt: skip
    losses = fit(
        model,
        step_fn,
        make_loader,
        optimizer,
        poly_lr(cfg.epochs * steps_per_epoch),
        LoopConfig(epochs=cfg.epochs, seed=cfg.seed, amp=cfg.amp),
        out,
        device,
        log_dir=out / "tb",
        steps_per_epoch=steps_per_epoch,
    )
    mark_done(out, {"final_losses": losses})
    return out
