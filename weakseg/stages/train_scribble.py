"""Stage ``train-scribble``: a segmenter trained from partial labels (scribbles, clicks) by a scribble-task method.

The same segmenter, augmentation and optimiser as ``train-seg`` (:class:`TrainSegOptions`: architecture,
encoder weights, crop, scale range, :class:`weakseg.engine.dense.DenseTrainConfig`), trained through the dense
trainer (:func:`weakseg.engine.dense.train_dense`: resumable, TensorBoard, DDP under torchrun) on the partial
label PNGs of the ``weak`` stage (255 = unknown), with the loss of the method (``dfr``:
:mod:`weakseg.methods.dfr`). Only those PNGs are read for training; no mask is opened.

Writes into ``out``: ``model.safetensors`` + ``config.json`` of the exported segmenter (``arch``,
``num_classes``, ``class_names``: what ``eval-seg`` / ``predict`` load), the method's other trained modules
(DFR: ``fch.safetensors``), ``tb/``, ``state/`` and ``DONE`` last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weakseg.data.dense import TargetImages
from weakseg.data.joint_transforms import train_transform
from weakseg.data.palette import read_mask_png
from weakseg.data.registry import open_dataset
from weakseg.engine import dist
from weakseg.engine.artifacts import mark_done, require_complete_outputs
from weakseg.engine.checkpoint import save_model
from weakseg.engine.dense import train_dense
from weakseg.engine.device import resolve_device, seed_everything
from weakseg.engine.stage import begin_stage, stage_record
from weakseg.errors import ConfigError, DataError
from weakseg.eval.metrics import segmentation_class_names
from weakseg.methods import create_method
from weakseg.methods.dfr import ScribbleMethod
from weakseg.seg.models import IMAGENET, create_segmenter
from weakseg.stages.io import DataInput, StageOutput
from weakseg.stages.train_seg import TrainSegOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScribbleMethodOptions:
    """The scribble method's preset and overrides (nested as ``scribble`` in ``weakseg run``)."""

    preset: str = "cpu"
    """the method's preset (dfr: cpu, shallow, deep, static, pce, tiny)"""
    set: tuple[str, ...] = field(default_factory=tuple)
    """KEY=VALUE overrides of the method's config, e.g. kernel=shallow features=static reg_weight=0.1"""


@dataclass(frozen=True, kw_only=True)
class TrainScribbleConfig(ScribbleMethodOptions, TrainSegOptions, DataInput, StageOutput):
    """Train a segmenter from partial labels (scribbles / clicks; 255 = unknown) with a scribble method (DFR)."""

    labels: Path
    """folder of partial-label PNGs ``<image_id>.png`` (the weak stage's output)"""
    method: str = "dfr"
    """a method of task scribble"""
    seed: int = 0


def scribble_method(name: str, preset: str, overrides: tuple[str, ...] = ()) -> ScribbleMethod:
    """The method ``name`` if it belongs to the scribble task, else a ConfigError."""
    method = create_method(name, preset, overrides)
    if not isinstance(method, ScribbleMethod):
        raise ConfigError(f"method {name!r} is not a scribble method (task {method.task!r}); use dfr")
    return method


def train_scribble(cfg: TrainScribbleConfig) -> Path:
    """Train (or resume, or skip when complete) a segmenter on partial labels; returns the output folder."""
    if cfg.crop < 16:
        raise ConfigError(f"crop must be >= 16, got {cfg.crop}")
    cfg.train.check()
    method = scribble_method(cfg.method, cfg.preset, cfg.set)
    out = Path(cfg.out)
    ds = open_dataset(cfg.data, split=cfg.split, fmt=cfg.fmt)
    if len(ds) == 0:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no images")
    labels = Path(cfg.labels)
    require_complete_outputs(labels, [r.image_id for r in ds.records], ".png", "partial-label", "the weak stage")
    class_names = segmentation_class_names(ds.class_names)
    record = {**stage_record(cfg, drop=("device", "overwrite", "out", "workers", "preset", "set")),
              "method_config": method.cfg}  # fmt: skip
    record["train"].pop("workers", None)
    meta = {"arch": cfg.arch, "num_classes": len(class_names), "class_names": list(class_names)}
    device = resolve_device(cfg.device)
    dist.init_distributed(device)  # before begin_stage: only the main process may write the folder
    if begin_stage(out, "train-scribble", record, overwrite=cfg.overwrite, meta=meta) == "complete":
        return out
    seed_everything(cfg.seed)
    encoder = (cfg.weights if cfg.weights is not None else IMAGENET) if cfg.pretrained else None
    net = method.wrap(create_segmenter(cfg.arch, len(class_names), encoder_weights=encoder), cfg.arch)

    def target(i: int, size: tuple[int, int]) -> np.ndarray:
        return read_mask_png(labels / f"{ds[i].image_id}.png")

    train_set = TargetImages(ds, target, train_transform(cfg.crop, tuple(cfg.scale_range)))
    losses = train_dense(net, train_set, net.param_groups(), method.step, cfg.train, out, device, cfg.seed)
    if dist.is_main():
        # fit saved the whole wrapper; the folder's model is the plain segmenter, the rest goes beside it
        save_model(out / "model.safetensors", method.export(net))
        for name, module in method.extra_modules(net).items():
            save_model(out / f"{name}.safetensors", module)
        mark_done(out, {k.removeprefix("train/"): v for k, v in losses.items() if not k.endswith(("lr", "norm"))})
    dist.barrier()
    log.info("train-scribble (%s): %s", method.name, out)
    return out
