"""Stage ``train-cls``: train a method's classifier on image-level labels.

Writes into ``out``: ``config.json`` (the stage record: method, preset, resolved method config, backbone,
data; then class names), ``model.safetensors``, ``epoch_<n>.safetensors`` for the epochs of the method's
``snapshots`` (``make-cams --epoch N``), ``tb/`` (tensorboard), ``state/`` (per-epoch state for
resuming with :func:`weakseg.engine.trainer.fit`) and ``DONE`` last. A complete folder with the same
configuration is skipped, an interrupted one resumes from its last finished epoch, more epochs extend it.

The method (:data:`weakseg.methods.METHODS`) brings its network, optimiser, loader recipe and step; this
driver only opens the data, builds the backbone and runs the loop. Under torchrun the method's batch
size is the *global* batch (see :mod:`weakseg.data.recipes`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weakseg.backbones import create_backbone
from weakseg.data.registry import open_dataset
from weakseg.engine import dist
from weakseg.engine.artifacts import load_json, mark_done
from weakseg.engine.checkpoint import load_model
from weakseg.engine.device import resolve_device, seed_everything
from weakseg.engine.stage import begin_stage, stage_record
from weakseg.engine.trainer import LoopConfig, fit, snapshot_name
from weakseg.errors import ConfigError, DataError
from weakseg.methods import Method, create_method
from weakseg.methods.base import LoaderContext, method_from_record
from weakseg.stages.io import DataInput, StageOutput

log = logging.getLogger(__name__)

MODEL = "model.safetensors"


@dataclass(frozen=True)
class TrainClsOptions:
    """Classifier options (nested as ``cls`` in ``weakseg run``)."""

    preset: str = "cpu192"
    """the method's hyper-parameter preset: paper (the official code's training recipe, snapshot and test-time
    fusion; GPU, with --backbone vgg16-d1), cpu (minutes on 2 cores), cpu192
    (cpu at input 192, early stages frozen: what run/demo use), tiny (tests)"""
    set: tuple[str, ...] = field(default_factory=tuple)
    """KEY=VALUE overrides of the method's config, e.g. epochs=2 input_size=128 lr_milestones=[5,10]"""
    backbone: str = "efficientnet-lite0"
    """efficientnet-lite0, vgg16-d1 (the MCIS reference's VGG-16; --weights vgg16-397923af.pth from torchvision),
    tiny, or timm:<name> (with --weights)"""
    weights: Path | None = None
    """backbone weights file (.safetensors or .pth); default: the backbone's own ImageNet weights"""
    amp: str = "off"
    """off, bf16 or fp16 (CUDA only)"""
    workers: int = 0
    """DataLoader worker processes"""


@dataclass(frozen=True, kw_only=True)
class TrainClsConfig(TrainClsOptions, DataInput, StageOutput):
    """Train the classifier whose CAMs seed the pseudo labels (any registered method of task tags).

    Writes OUT/config.json, model.safetensors, tb/, state/, DONE."""

    method: str = "mcis"
    """a registered method (weakseg.methods.METHODS), e.g. cam or mcis"""
    seed: int = 0


def train_cls(cfg: TrainClsConfig) -> Path:
    """Train the classifier described by ``cfg``; returns ``cfg.out``. Skips a complete folder."""
    out = Path(cfg.out)
    method = create_method(cfg.method, cfg.preset, cfg.set)
    ds = open_dataset(cfg.data, cfg.split, cfg.fmt)
    labelled = sum(1 for r in ds.records if r.labels)
    if len(ds) == 0 or labelled == 0:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no labelled images to train a classifier on")
    record = {
        **stage_record(cfg, drop=("workers", "device", "overwrite", "out", "set", "preset")),
        "method_config": method.cfg,
        "class_names": list(ds.class_names),
    }
    device = resolve_device(cfg.device)
    dist.init_distributed(device)
    ctx = LoaderContext(seed=cfg.seed, rank=dist.rank(), world=dist.world_size(), workers=cfg.workers)
    make_loader, steps = method.loader(ds, ctx)  # opens the method's extra data (recorded below)
    record.update(method.describe_data())
    meta = {"num_classes": ds.num_classes, "images": len(ds), "labelled_images": labelled, "preset": cfg.preset}
    if begin_stage(out, "train-cls", record, overwrite=cfg.overwrite, may_change=("method_config.epochs",),
                   meta=meta) == "complete":  # fmt: skip
        return out

    late = [e for e in method.snapshot_epochs if e > method.epochs]
    if late:
        log.warning("train-cls: snapshots %s lie beyond the %d epochs trained; they will not be written", late,
                    method.epochs)  # fmt: skip
    seed_everything(cfg.seed)
    backbone = create_backbone(cfg.backbone, cfg.weights, method.cfg.output_stride, pretrained=True)
    net = method.build(backbone, ds.num_classes)
    log.info(
        "train-cls: %s on %d images (%d labelled), %d epochs × %d steps, backbone %s",
        method.name, len(ds), labelled, method.epochs, steps, cfg.backbone,
    )  # fmt: skip
    means = fit(
        net,
        method.step,
        make_loader,
        method.optimizer(net),
        method.lr_factor(steps),
        LoopConfig(epochs=method.epochs, seed=cfg.seed, amp=cfg.amp, grad_clip=method.grad_clip),
        out,
        device,
        log_dir=out / "tb",
        steps_per_epoch=steps,
        snapshot_epochs=method.snapshot_epochs,
    )
    if dist.is_main():
        snapshots = sorted(e for e in method.snapshot_epochs if (out / snapshot_name(e)).is_file())
        mark_done(out, {"epochs": method.epochs, "last_epoch_losses": means, "snapshots": snapshots})
    dist.barrier()
    return out


def load_classifier(
    cls_dir: str | Path, device: torch.device | str = "cpu", epoch: int | None = None
) -> tuple[torch.nn.Module, Method, dict]:
    """Rebuild a trained classifier from ``cls_dir`` (eval mode): ``(network, method, saved config.json)``.

    ``epoch``: the weights kept after that many epochs (``epoch_<n>.safetensors``) instead of the final ones.
    """
    cls_dir = Path(cls_dir)
    if not (cls_dir / "config.json").is_file() or not (cls_dir / MODEL).is_file():
        raise ConfigError(f"{cls_dir} holds no trained classifier (config.json + model.safetensors); run train-cls")
    weights = cls_dir / (MODEL if epoch is None else snapshot_name(epoch))
    if not weights.is_file():
        kept = sorted(int(p.stem.removeprefix("epoch_")) for p in cls_dir.glob("epoch_*.safetensors"))
        raise ConfigError(
            f"{cls_dir} has no snapshot of epoch {epoch} ({weights.name}); snapshots kept: {kept or 'none'} "
            "(train-cls keeps the epochs of the method's snapshots option, e.g. --set snapshots=[11])"
        )
    meta: dict[str, Any] = load_json(cls_dir / "config.json")
    if meta.get("stage") != "train-cls" or "record" not in meta:
        raise ConfigError(f"{cls_dir}/config.json was not written by this version's train-cls; retrain it")
    rec = meta["record"]
    method = method_from_record(rec["method"], rec["method_config"])
    backbone = create_backbone(rec["backbone"], None, method.cfg.output_stride, pretrained=False)
    net = method.build(backbone, len(rec["class_names"]))
    load_model(weights, net)
    return net.to(device).eval(), method, meta
