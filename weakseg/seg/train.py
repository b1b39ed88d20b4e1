"""Train a segmentation network on pseudo labels (or on the true masks: the fully supervised upper bound).

The last stage of the WSSS pipeline: a standard, fully supervised segmenter trained on the
pseudo-label PNGs (255 = ignore) of :mod:`weakseg.refine.pseudo`. ``supervision="full"`` trains the
same network on the ground-truth masks, which bounds what any pseudo labels can reach.

Recipe (every knob is in :class:`TrainSegConfig`): random scale / crop / flip (:mod:`weakseg.data.joint_transforms`),
cross entropy with 255 ignored, poly learning-rate decay (power 0.9) over all steps, and AdamW
with the decoder and head at 10x the encoder's learning rate (the DeepLab convention of a larger
rate for the randomly initialised layers than for the ImageNet-pretrained encoder). AdamW rather
than DeepLab's SGD + momentum (``optimizer="sgd"``) because the CPU budget allows only a few
epochs: on the synthetic benchmark (600 train images of 128-160 px, full supervision, 5 epochs)
AdamW at lr 1e-3 reached 75.3 val mIoU and SGD at lr 1e-2 60.6; AdamW for 8 epochs (the default)
79.2.
Optimisation runs through :func:`weakseg.engine.trainer.fit` (safetensors state every epoch,
resume, TensorBoard in ``out/tb``).

Outputs: ``out/model.safetensors``, ``out/config.json`` (architecture, classes and this config),
``out/tb/``, ``out/state/`` (for resuming) and ``out/DONE`` last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from weakseg.data.dataset import IGNORE
from weakseg.engine.artifacts import (
    clear_done,
    config_record,
    mark_done,
    require_complete_outputs,
    save_json,
    trained_and_complete,
)
from weakseg.errors import ConfigError, DataError, unknown_name

log = logging.getLogger(__name__)

SUPERVISIONS = ("pseudo", "full")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainSegConfig:
    """Train a segmentation network (defaults: 8 epochs of 600 images of ~150 px in ~3 min on 2 idle CPU cores)."""

    data: Path
    """dataset root (images; ground-truth masks for supervision=full)"""
    out: Path
    """output folder: model.safetensors, config.json, tb/, DONE"""
    labels: Path | None = None
    """folder of pseudo-label PNGs ``<image_id>.png`` (the pseudo stage's output); for supervision=pseudo"""
    supervision: str = "pseudo"
    """pseudo: train on the ``labels`` PNGs; full: on the ground-truth masks (the upper bound)"""
    fmt: str = "auto"
    split: str = "train"
    arch: str = "deeplabv3plus"
    """deeplabv3plus, largefov or tiny (see weakseg.seg.models)"""
    weights: Path | None = None
    """encoder weights file (.safetensors/.pth); None = the packaged EfficientNet-Lite0 ImageNet weights"""
    pretrained: bool = True
    """initialise the encoder from ImageNet (or ``weights``); False = random"""
    epochs: int = 8
    batch_size: int = 8
    optimizer: str = "adamw"
    """adamw, or sgd (momentum 0.9, the DeepLab recipe; give it a larger lr, e.g. 0.01)"""
    lr: float = 1e-3
    """encoder learning rate; decoder and head use 10x"""
    weight_decay: float = 1e-4
    crop: int = 128
    """square training crop (padded with ignore where the scaled image is smaller)"""
    scale_range: tuple[float, float] = (0.7, 1.3)
    """random rescaling of each image, relative to its own size"""
    seed: int = 0
    device: str = "auto"
    amp: str = "off"
    workers: int = 0
    """data-loading processes"""

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)
        if self.supervision not in SUPERVISIONS:
            raise unknown_name("supervision", self.supervision, SUPERVISIONS)
        if self.supervision == "pseudo" and self.labels is None:
            raise ConfigError("supervision 'pseudo' needs --labels DIR (the pseudo-label folder)")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.crop < 16:
            raise ConfigError("need epochs >= 1, batch_size >= 1, lr > 0 and crop >= 16")


def seg_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Cross entropy over the labelled pixels of ``logits [B, C, H, W]`` vs ``target [B, H, W]``.

    Pixels equal to ``ignore_index`` do not count; a batch with no labelled pixel gives a zero loss
    (``F.cross_entropy`` with mean reduction would give NaN).
    """
    target = target.long()
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp_min(1)


class SegTrainSet(Dataset):
    """Images with their training masks (pseudo-label PNGs or ground truth), augmented jointly.

    Items: ``(float [3, crop, crop] in [0, 1], int64 [crop, crop])``.
    """

    def __init__(self, ds, labels: Path | None, transform):
        self.ds = ds
        self.labels = None if labels is None else Path(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ds)

    def mask(self, i: int) -> np.ndarray:
        if self.labels is None:
            m = self.ds.load_mask(i)
            if m is None:
                raise DataError(f"image {self.ds[i].image_id!r} has no ground-truth mask; use supervision=pseudo")
            return m
        from weakseg.data.palette import read_mask_png

        return read_mask_png(self.labels / f"{self.ds[i].image_id}.png")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from weakseg.data.joint_transforms import apply_joint

        image, mask = self.ds.load_image(i), self.mask(i)
        if image.shape[:2] != mask.shape:
            raise DataError(f"mask of {self.ds[i].image_id!r} is {mask.shape} but the image is {image.shape[:2]}")
        return apply_joint(self.transform, image, mask)


def train_seg(cfg: TrainSegConfig) -> Path:
    """Train (or resume, or skip when complete) a segmenter; returns the output folder."""
    from weakseg.data.joint_transforms import train_transform
    from weakseg.data.registry import open_dataset
    from weakseg.engine import dist
    from weakseg.engine.device import resolve_device, seed_everything
    from weakseg.engine.trainer import LoopConfig, fit, poly_lr
    from weakseg.eval.metrics import segmentation_class_names
    from weakseg.seg.models import IMAGENET, SegmenterInfo, create_segmenter

    cfg.check()
    out = Path(cfg.out)
    train_record = config_record(cfg)
    if trained_and_complete(out, train_record, "a segmenter"):
        log.info("segmenter in %s is complete; skipping", out)
        return out
    ds = open_dataset(cfg.data, split=cfg.split, fmt=cfg.fmt)
    if len(ds) == 0:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no images")
    labels = None
    if cfg.supervision == "pseudo":
        labels = Path(cfg.labels)  # type: ignore[arg-type]
        require_complete_outputs(labels, [r.image_id for r in ds.records], ".png", "pseudo-label", "the pseudo stage")
    device = resolve_device(cfg.device)
    dist.init_distributed(device)
    seed_everything(cfg.seed)

    class_names = segmentation_class_names(ds.class_names)
    encoder = (cfg.weights if cfg.weights is not None else IMAGENET) if cfg.pretrained else None
    model = create_segmenter(cfg.arch, len(class_names), encoder_weights=encoder)
    info = SegmenterInfo(cfg.arch, len(class_names), class_names)
    if dist.is_main():
        clear_done(out)
        record = {"arch": info.arch, "num_classes": info.num_classes, "class_names": list(class_names)}
        save_json(out / "config.json", {**record, "train": train_record})

    train_set = SegTrainSet(ds, labels, train_transform(cfg.crop, tuple(cfg.scale_range)))
    batch_size = min(cfg.batch_size, len(train_set))
    world = dist.world_size()
    steps_per_epoch = max(1, len(train_set) // (batch_size * world))

    def make_loader(epoch: int) -> DataLoader:
        sampler = None
        if world > 1:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(train_set, shuffle=True, seed=cfg.seed, drop_last=True)
            sampler.set_epoch(epoch)
        return DataLoader(
            train_set,
            batch_size=batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
            drop_last=True,  # BatchNorm (and the ASPP image pooling) cannot train on a batch of one
            num_workers=cfg.workers,
            persistent_workers=False,
        )

    enc, dec = model.param_groups()
    groups = [{"params": enc, "lr": cfg.lr}, {"params": dec, "lr": 10 * cfg.lr}]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)

    def step_fn(net: torch.nn.Module, batch, epoch: int) -> dict[str, torch.Tensor]:
        images, masks = batch
        return {"loss": seg_loss(net(images), masks)}

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
    if dist.is_main():
        mark_done(out, {"final_loss": losses.get("train/loss")})
    dist.barrier()
    return out
