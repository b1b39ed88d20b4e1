"""Stage ``train-seg``: a segmentation network trained on pseudo labels (or on the true masks: the upper bound).

The last stage of the WSSS pipeline: a standard segmenter trained on the pseudo-label PNGs (255 =
ignore) of the pseudo stage; ``supervision="full"`` trains the same network on the ground-truth masks,
which bounds what any pseudo labels can reach. Recipe: random scale / crop / flip
(:mod:`weakseg.data.joint_transforms`), partial cross entropy (255 ignored), and the dense trainer
(:func:`weakseg.engine.dense.train_dense`: AdamW, decoder and head at 10× the encoder's lr, poly decay).
AdamW rather than DeepLab's SGD (``optimizer="sgd"``) because a CPU budget allows only a few epochs
(measured in docs/results/demo.md).

Outputs: ``model.safetensors``, ``config.json`` (record + ``arch``, ``num_classes``, ``class_names``), ``tb/``,
``state/`` (for resuming) and ``DONE`` last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from weakseg.data.dense import TargetImages
from weakseg.data.joint_transforms import train_transform
from weakseg.data.keep import id_list_digest, keep_subset
from weakseg.data.palette import read_mask_png
from weakseg.data.registry import open_dataset
from weakseg.engine import dist
from weakseg.engine.artifacts import mark_done, require_complete_outputs
from weakseg.engine.dense import DenseTrainConfig, train_dense
from weakseg.engine.device import resolve_device, seed_everything
from weakseg.engine.stage import begin_stage, stage_record
from weakseg.errors import ConfigError, DataError, unknown_name
from weakseg.eval.metrics import segmentation_class_names
from weakseg.losses import partial_cross_entropy
from weakseg.seg.models import IMAGENET, create_segmenter
from weakseg.stages.io import DataInput, StageOutput

log = logging.getLogger(__name__)

SUPERVISIONS = ("pseudo", "full")


@dataclass(frozen=True)
class TrainSegOptions:
    """Segmenter options (nested as ``seg`` in ``weakseg run``)."""

    arch: str = "deeplabv3plus"
    """deeplabv3plus, largefov or tiny (weakseg.seg.models.SEGMENTERS)"""
    weights: Path | None = None
    """encoder weights file (.safetensors/.pth); None = the packaged EfficientNet-Lite0 ImageNet weights"""
    pretrained: bool = True
    """initialise the encoder from ImageNet (or ``weights``); False = random"""
    train: DenseTrainConfig = field(default_factory=DenseTrainConfig)
    """optimisation: epochs, batch size, optimizer, lr (encoder; decoder and head at head_lr_mult ×), amp, workers"""
    crop: int = 128
    """square training crop (px; padded with ignore where the scaled image is smaller)"""
    scale_range: tuple[float, float] = (0.7, 1.3)
    """random rescaling of each image, relative to its own size"""


@dataclass(frozen=True, kw_only=True)
class TrainSegConfig(TrainSegOptions, DataInput, StageOutput):
    """Train a segmentation network on pseudo labels (or on the true masks with --supervision full)."""

    labels: Path | None = None
    """folder of pseudo-label PNGs ``<image_id>.png`` (the pseudo stage's output); for supervision=pseudo"""
    supervision: str = "pseudo"
    """pseudo: train on the ``labels`` PNGs; full: on the ground-truth masks (the upper bound)"""
    keep: Path | None = None
    """file of image ids, one per line (e.g. `weakseg select`'s kept.txt): train on these images of the split only"""
    seed: int = 0

    def check(self) -> None:
        if self.supervision not in SUPERVISIONS:
            raise unknown_name("supervision", self.supervision, SUPERVISIONS)
        if self.supervision == "pseudo" and self.labels is None:
            raise ConfigError("supervision 'pseudo' needs --labels DIR (the pseudo-label folder)")
        if self.crop < 16:
            raise ConfigError(f"crop must be >= 16, got {self.crop}")
        self.train.check()


def train_seg(cfg: TrainSegConfig) -> Path:
    """Train (or resume, or skip when complete) a segmenter; returns the output folder."""
    cfg.check()
    out = Path(cfg.out)
    ds = open_dataset(cfg.data, split=cfg.split, fmt=cfg.fmt)
    if len(ds) == 0:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no images")
    if cfg.keep is not None:
        ds = keep_subset(ds, cfg.keep)
    labels = None
    if cfg.supervision == "pseudo":
        labels = Path(cfg.labels)  # type: ignore[arg-type]
        require_complete_outputs(labels, [r.image_id for r in ds.records], ".png", "pseudo-label", "the pseudo stage")
    class_names = segmentation_class_names(ds.class_names)
    record = stage_record(cfg, drop=("device", "overwrite", "out", "workers"))
    record["train"].pop("workers", None)
    record.pop("keep")  # absent unless given, so folders made before the option existed still match
    if cfg.keep is not None:
        record["keep"] = {"ids": len(ds), "digest": id_list_digest([r.image_id for r in ds.records])}
    meta = {"arch": cfg.arch, "num_classes": len(class_names), "class_names": list(class_names)}
    device = resolve_device(cfg.device)
    dist.init_distributed(device)  # before begin_stage: only the main process may write the folder
    if begin_stage(out, "train-seg", record, overwrite=cfg.overwrite, meta=meta) == "complete":
        return out
    seed_everything(cfg.seed)
    encoder = (cfg.weights if cfg.weights is not None else IMAGENET) if cfg.pretrained else None
    model = create_segmenter(cfg.arch, len(class_names), encoder_weights=encoder)

    def target(i: int, size: tuple[int, int]) -> np.ndarray:
        if labels is not None:
            return read_mask_png(labels / f"{ds[i].image_id}.png")
        m = ds.load_mask(i)
        if m is None:
            raise DataError(f"image {ds[i].image_id!r} has no ground-truth mask; use supervision=pseudo")
        return m

    def step_fn(net: torch.nn.Module, batch, epoch: int) -> dict[str, torch.Tensor]:
        images, masks = batch
        return {"loss": partial_cross_entropy(net(images), masks)}

    train_set = TargetImages(ds, target, train_transform(cfg.crop, tuple(cfg.scale_range)))
    losses = train_dense(model, train_set, model.param_groups(), step_fn, cfg.train, out, device, cfg.seed)
    if dist.is_main():
        mark_done(out, {"final_loss": losses.get("train/loss")})
    dist.barrier()
    return out
