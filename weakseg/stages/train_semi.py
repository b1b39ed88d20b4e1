"""Stage ``train-semi``: train a method of task ``semi-supervised`` (ABD, cross teaching, supervised-only).

Opens the training slices (:func:`weakseg.data.acdc.open_slices`), labels the first ``labelled`` patients
(:func:`weakseg.data.acdc.split_by_patient`; the rest are unlabelled), and runs the method's two-stream loader
and step in the shared loop (:func:`weakseg.engine.trainer.fit`), one epoch (``epoch_iters`` steps) at a
time. After each epoch the learning curve is extended: model 1's Dice on the volumes of ``curve_split``,
predicted slice by slice.

Writes into ``out``: ``config.json`` (record: method, resolved method config, data, labelled patients),
``model.safetensors`` (last weights of both models), ``best.safetensors`` (the weights of the epoch with the
best curve Dice, the paper's model selection; only with a curve), ``curve.json`` (per epoch: iteration,
mean training losses, CPU seconds of training, curve Dice per class and mean), ``tb/``, ``state/`` and ``DONE``
last. An interrupted run resumes from its last finished epoch; a complete one is skipped. Single process.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from weakseg.data.acdc import MedicalSlices, open_slices, split_by_patient
from weakseg.engine.artifacts import load_json, mark_done, save_json
from weakseg.engine.checkpoint import save_model
from weakseg.engine.device import resolve_device, seed_everything
from weakseg.engine.stage import begin_stage, stage_record
from weakseg.engine.trainer import LoopConfig, fit
from weakseg.errors import ConfigError
from weakseg.eval.medical import dice
from weakseg.methods import create_method
from weakseg.methods.abd import SemiSupervisedMethod
from weakseg.methods.base import LoaderContext
from weakseg.stages.io import DataInput, StageOutput

log = logging.getLogger(__name__)

MODEL, BEST, CURVE = "model.safetensors", "best.safetensors", "curve.json"


@dataclass(frozen=True)
class TrainSemiOptions:
    """Semi-supervised training options (nested as ``semi`` in ``weakseg run``)."""

    preset: str = "cpu"
    """the method's preset: paper (the paper's 30k-step schedule, GPU), cpu (minutes on 2 cores), tiny (tests)"""
    set: tuple[str, ...] = field(default_factory=tuple)
    """KEY=VALUE overrides of the method's config, e.g. iterations=300 input_size=96 patch_size=24"""
    labelled: int = 3
    """labelled patients: the first N patients of the training list (ACDC: 3 ≈ 5 %, 7 ≈ 10 % of 70)"""
    curve_split: str = "val"
    """split whose volumes are scored (model 1's Dice) after every epoch; empty = no learning curve"""
    amp: str = "off"
    """off, bf16 or fp16 (CUDA only)"""
    workers: int = 0
    """DataLoader worker processes"""


@dataclass(frozen=True, kw_only=True)
class TrainSemiConfig(TrainSemiOptions, DataInput, StageOutput):
    """Train ABD (or a baseline) on a few labelled and many unlabelled slices.

    Writes OUT/config.json, model.safetensors, best.safetensors, curve.json, tb/, state/, DONE."""

    method: str = "abd"
    """abd, cross-teaching or supervised-only (the methods of task semi-supervised)"""
    fmt: str = "auto"
    """medical data layout: auto, h5 (data/*.h5 + lists), png (slices/ + labels/ + lists) or nifti
    ([<patient>/]<volume>.nii.gz + <volume>_gt.nii.gz + lists; spacing from the header); weakseg.data.acdc"""
    seed: int = 0


def semi_method(name: str, preset: str, overrides: tuple[str, ...] = ()) -> SemiSupervisedMethod:
    """The method ``name`` if it belongs to the semi-supervised task, else a ConfigError naming the valid ones."""
    method = create_method(name, preset, overrides)
    if not isinstance(method, SemiSupervisedMethod):
        raise ConfigError(f"method {name!r} is not a semi-supervised method (task {method.task!r}); "
                          "use abd, cross-teaching or supervised-only")  # fmt: skip
    return method


def curve_dice(method: SemiSupervisedMethod, net: torch.nn.Module, ds: MedicalSlices) -> dict:
    """Model 1's Dice on every volume of ``ds``: ``{"per_class": {name: mean}, "mean": ..., "volumes": n}``.

    Per volume and class in 3D (a class absent from both prediction and ground truth scores 1), then the mean
    over volumes per class and over classes.
    """
    net.eval()
    scores = []
    for v in ds.volumes:
        image, label = ds.load_volume(v)
        if label is None:
            continue
        pred = method.predict_volume(net, image)
        scores.append([dice(label == c, pred == c) for c in range(1, ds.num_classes + 1)])
    net.train()
    if not scores:
        raise ConfigError(f"split {ds.split!r} has no labelled volume to draw a learning curve on")
    per_class = np.mean(scores, axis=0)
    return {"per_class": dict(zip(ds.class_names, map(float, per_class), strict=True)),
            "mean": float(per_class.mean()), "volumes": len(scores)}  # fmt: skip


def train_semi(cfg: TrainSemiConfig) -> Path:
    """Train (or resume, or skip when complete) a semi-supervised method; returns ``cfg.out``."""
    out = Path(cfg.out)
    method = semi_method(cfg.method, cfg.preset, cfg.set)
    ds = open_slices(cfg.data, cfg.split, cfg.fmt)
    split = split_by_patient(ds, cfg.labelled)
    curve_ds = open_slices(cfg.data, cfg.curve_split, cfg.fmt) if cfg.curve_split else None
    record = {
        **stage_record(cfg, drop=("workers", "device", "overwrite", "out", "set", "preset")),
        "method_config": method.cfg,
        "class_names": list(ds.class_names),
        "labelled_patients": list(split.patients),
    }
    meta = {"preset": cfg.preset, "slices": len(ds), "labelled_slices": len(split.labelled),
            "unlabelled_slices": len(split.unlabelled)}  # fmt: skip
    if begin_stage(out, "train-semi", record, overwrite=cfg.overwrite, meta=meta) == "complete":
        return out
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    net = method.build(None, ds.num_classes + 1)
    make_loader, steps = method.loader(split, LoaderContext(seed=cfg.seed, workers=cfg.workers))
    optimizer = method.optimizer(net)
    lr_factor = method.lr_factor(steps)
    curve = load_json(out / CURVE)["epochs"] if (out / CURVE).is_file() else []
    best = max((e["curve"]["mean"] for e in curve if "curve" in e), default=-math.inf)
    log.info("train-semi: %s, %d labelled slices (%s) + %d unlabelled, %d epochs x %d steps", method.name,
             len(split.labelled), ", ".join(split.patients), len(split.unlabelled), method.epochs, steps)  # fmt: skip
    for epoch in range(method.epochs):
        if any(e["epoch"] == epoch + 1 for e in curve):
            continue  # finished before an interruption
        t0 = time.process_time()
        means = fit(net, method.step, make_loader, optimizer, lr_factor,
                    LoopConfig(epochs=epoch + 1, seed=cfg.seed, amp=cfg.amp, grad_clip=method.grad_clip),
                    out, device, log_dir=out / "tb", steps_per_epoch=steps)  # fmt: skip
        entry: dict = {"epoch": epoch + 1, "iteration": (epoch + 1) * steps, "train": means,
                       "train_cpu_s": round(time.process_time() - t0, 2)}  # fmt: skip
        if curve_ds is not None:
            entry["curve"] = curve_dice(method, net, curve_ds)
            log.info("epoch %d: %s Dice %.4f", epoch + 1, cfg.curve_split, entry["curve"]["mean"])
            if entry["curve"]["mean"] > best:
                best = entry["curve"]["mean"]
                save_model(out / BEST, net)
        curve.append(entry)
        save_json(out / CURVE, {"split": cfg.curve_split or None, "metric": "Dice (model 1, per volume)",
                                "epochs": curve})  # fmt: skip
    mark_done(out, {"iterations": method.cfg.iterations, "train_cpu_s": round(sum(e["train_cpu_s"] for e in curve), 2),
                    "last": curve[-1]})  # fmt: skip
    return out
