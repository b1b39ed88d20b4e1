"""Stages ``train-cosal`` and ``eval-cosal``: co-salient object detection (DCFM, single-image baseline).

``train_cosal``: opens a dataset with what its images are grouped by (:func:`weakseg.data.groups.open_group_data`:
shared image-level classes, CoSOD group folders or DAVIS frames), builds the method's network on a registry
backbone and trains it one group per step in the shared loop (:func:`weakseg.engine.trainer.fit`). Writes
``config.json`` (record: method, resolved method config, data, grouping), ``model.safetensors``, ``tb/``,
``state/`` (resume) and ``DONE`` last. Reads the training groups' co-saliency masks (the method's supervision).

``eval_cosal``: rebuilds the network from a ``train-cosal`` folder, predicts every evaluation group
(:func:`weakseg.data.groups.eval_groups`) at the training input size, resizes each map back to its image and
writes it as an 8-bit PNG ``maps/<group>/<image>.png``; scores them against the groups' co-saliency masks
with the SOD metrics of the registry (Sα, max/mean/adaptive Fβ, Eξ, MAE via
:class:`weakseg.eval.sod.SaliencyMeter`) and writes ``metrics.json`` (overall, per target, per group) and DONE.
Ignore pixels (255) of the masks count as background (the SOD metrics have no ignore label).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from weakseg.backbones import create_backbone
from weakseg.data.groups import GroupDataset, GroupLabels, eval_groups, open_group_data, target_mask
from weakseg.engine.artifacts import mark_done, save_json, save_png
from weakseg.engine.checkpoint import load_model
from weakseg.engine.device import resolve_device, seed_everything
from weakseg.engine.stage import begin_stage, stage_meta, stage_record
from weakseg.engine.trainer import LoopConfig, fit
from weakseg.errors import ConfigError
from weakseg.eval.registry import get_metric
from weakseg.eval.sod import SaliencyMeter
from weakseg.methods import create_method
from weakseg.methods.base import LoaderContext, method_from_record
from weakseg.methods.dcfm import CoSaliencyMethod, DCFMNet
from weakseg.stages.io import DataInput, StageOutput

log = logging.getLogger(__name__)

MODEL = "model.safetensors"


@dataclass(frozen=True)
class GroupOptions:
    """Which images form groups, and by what."""

    by: str = "class"
    """class (images sharing an image-level class; the target is that class's mask) or record (the records'
    group field); CoSOD folders and DAVIS are always grouped by record"""
    images: str = "all"
    """all, even or odd: every record, or those of even / odd index (disjoint halves of a one-split set)"""
    davis_by: str = "category"
    """DAVIS: group frames by object category (across sequences) or by sequence"""
    davis_every: int = 1
    """DAVIS: keep every n-th frame"""


@dataclass(frozen=True)
class TrainCosalOptions:
    """Co-saliency training options (nested as ``cosal`` in ``weakseg run``)."""

    preset: str = "cpu"
    """the method's preset: paper (DCFM's recipe, GPU), cpu (minutes on 2 cores), tiny (tests)"""
    set: tuple[str, ...] = field(default_factory=tuple)
    """KEY=VALUE overrides of the method's config, e.g. epochs=8 group_size=6"""
    backbone: str = "efficientnet-lite0"
    """efficientnet-lite0, vgg16-d1 (with --weights), tiny, or timm:<name> (with --weights)"""
    weights: Path | None = None
    """backbone weights file; default: the backbone's own ImageNet weights"""
    groups: GroupOptions = field(default_factory=GroupOptions)
    amp: str = "off"
    """off, bf16 or fp16 (CUDA only)"""
    workers: int = 0
    """DataLoader worker processes"""


@dataclass(frozen=True, kw_only=True)
class TrainCosalConfig(TrainCosalOptions, DataInput, StageOutput):
    """Train DCFM (or the single-image baseline) on groups. Writes OUT/config.json, model.safetensors, tb/, DONE."""

    method: str = "dcfm"
    """dcfm or single-saliency (the methods of task co-saliency)"""
    fmt: str = "auto"
    """auto, davis, cosal (images/<group>/ + gts/<group>/) or a dataset format (voc, coco, yolo, folder)"""
    seed: int = 0


def cosal_method(name: str, preset: str, overrides: tuple[str, ...] = ()) -> CoSaliencyMethod:
    """The method ``name`` if it belongs to the co-saliency task, else a ConfigError naming the valid ones."""
    method = create_method(name, preset, overrides)
    if not isinstance(method, CoSaliencyMethod):
        raise ConfigError(f"method {name!r} is not a co-saliency method (task {method.task!r}); "
                          "use dcfm or single-saliency")  # fmt: skip
    return method


def open_groups(data: Path, split: str, fmt: str, g: GroupOptions):
    return open_group_data(data, split, fmt, by=g.by, images=g.images, davis_by=g.davis_by, davis_every=g.davis_every)


def train_cosal(cfg: TrainCosalConfig) -> Path:
    """Train (or resume, or skip when complete) a co-saliency method; returns ``cfg.out``."""
    out = Path(cfg.out)
    method = cosal_method(cfg.method, cfg.preset, cfg.set)
    ds, gl = open_groups(cfg.data, cfg.split, cfg.fmt, cfg.groups)
    if not ds.has_masks:
        raise ConfigError(f"{cfg.data} (split {cfg.split}) has no masks: co-saliency training reads them")
    record = {**stage_record(cfg, drop=("workers", "device", "overwrite", "out", "set", "preset")),
              "method_config": method.cfg}  # fmt: skip
    meta = {"preset": cfg.preset, "images": len(ds), "targets": list(gl.names), "grouped_by": gl.by}
    if begin_stage(out, "train-cosal", record, overwrite=cfg.overwrite, meta=meta) == "complete":
        return out
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    backbone = create_backbone(cfg.backbone, cfg.weights, method.cfg.output_stride, pretrained=True)
    net = method.build(backbone)
    make_loader, steps = method.group_loader(ds, gl, LoaderContext(seed=cfg.seed, workers=cfg.workers))
    log.info("train-cosal: %s on %d images (%d targets, by %s), %d epochs x %d groups", method.name, len(ds),
             len(gl.names), gl.by, method.epochs, steps)  # fmt: skip
    t0 = time.process_time()
    means = fit(net, method.step, make_loader, method.optimizer(net), method.lr_factor(steps),
                LoopConfig(epochs=method.epochs, seed=cfg.seed, amp=cfg.amp, grad_clip=method.grad_clip),
                out, device, log_dir=out / "tb", steps_per_epoch=steps)  # fmt: skip
    mark_done(out, {"last_epoch": means, "steps_per_epoch": steps, "train_cpu_s": round(time.process_time() - t0, 2)})
    return out


def load_cosal(model_dir: Path, device: torch.device) -> tuple[CoSaliencyMethod, DCFMNet, dict]:
    """The method, its trained network (eval mode, on ``device``) and the record of a train-cosal folder."""
    meta = stage_meta(model_dir)
    if meta.get("stage") != "train-cosal":
        raise ConfigError(f"{model_dir} was written by stage {meta.get('stage')!r}, not train-cosal")
    rec = meta["record"]
    method = method_from_record(rec["method"], rec["method_config"])
    if not isinstance(method, CoSaliencyMethod):
        raise ConfigError(f"{model_dir}: method {rec['method']!r} is not a co-saliency method")
    backbone = create_backbone(rec["backbone"], None, method.cfg.output_stride, pretrained=False)
    net = method.build(backbone)
    load_model(model_dir / MODEL, net)
    return method, net.to(device).eval(), rec


@dataclass(frozen=True)
class EvalCosalOptions:
    """Co-saliency evaluation options (nested as ``eval_cosal`` in ``weakseg run``)."""

    groups: GroupOptions = field(default_factory=GroupOptions)
    group_size: int = 0
    """images per evaluation group; 0 = the method's eval_group_size"""
    min_group: int = 2
    """a target with fewer images forms no evaluation group"""
    max_groups_per_target: int = 0
    """keep only each target's first groups (0 = all)"""
    save_maps: bool = True
    """write every map as maps/<group>/<image>.png (8-bit)"""


@dataclass(frozen=True, kw_only=True)
class EvalCosalConfig(EvalCosalOptions, DataInput, StageOutput):
    """Predict and score the groups of a split. Writes OUT/config.json, maps/, metrics.json, DONE."""

    model_dir: Path
    """a train-cosal folder"""
    split: str = "val"


def eval_cosal(cfg: EvalCosalConfig) -> dict:
    """Maps and SOD metrics of every evaluation group of ``cfg.split``; returns the metrics dict."""
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    method, net, rec = load_cosal(Path(cfg.model_dir), device)
    ds, gl = open_groups(cfg.data, cfg.split, cfg.fmt, cfg.groups)
    size = cfg.group_size or method.cfg.eval_group_size
    groups = eval_groups(gl, size, cfg.min_group, cfg.max_groups_per_target or None)
    if not groups:
        raise ConfigError(f"{cfg.data} (split {cfg.split}) has no target with {cfg.min_group} images or more")
    record = {**stage_record(cfg, drop=("workers", "device", "overwrite", "out")), "trained": rec}
    begin_stage(out, "eval-cosal", record, overwrite=True, meta={"groups": len(groups)})
    loader = GroupDataset(ds, gl, groups, method.cfg.input_size)
    overall, per_target = SaliencyMeter(), {t: SaliencyMeter() for t in {g.target for g in groups}}
    per_group = []
    t0 = time.perf_counter()
    for k, g in enumerate(groups):
        images = loader[k]["image"].to(device)
        prob = method.predict_group(net, images)  # [N, 1, S, S]
        meter = SaliencyMeter()
        for j, i in enumerate(g.members):
            mask = ds.load_mask(i)
            gt = target_mask(mask, g.target, gl.by) == 1  # ignore pixels count as background
            pred = F.interpolate(prob[j : j + 1], size=gt.shape, mode="bilinear", align_corners=False)[0, 0]
            pred = pred.clamp(0, 1).cpu().numpy().astype(np.float64)
            for m in (overall, per_target[g.target], meter):
                m.update(gt, pred)
            if cfg.save_maps:
                name = Path(ds.records[i].image_id).name
                save_png(out / "maps" / g.name / f"{name}.png", Image.fromarray(np.round(pred * 255).astype(np.uint8)))
        per_group.append({"group": g.name, "target": gl.names[g.target], "images": len(g.members), **_short(meter)})
    seconds = time.perf_counter() - t0
    result = {
        "split": cfg.split,
        "method": rec["method"],
        "grouped_by": gl.by,
        "groups": len(groups),
        "images": sum(len(g.members) for g in groups),
        "metrics": overall.results(),
        "per_target": {gl.names[t]: _short(m) for t, m in sorted(per_target.items())},
        "per_group": per_group,
        "predict_seconds": round(seconds, 2),
        "metric_names": {k: get_metric(k).description for k in ("smeasure", "fmeasure", "emeasure", "mae")},
    }
    result["table"] = _table(result)
    save_json(out / "metrics.json", result)
    mark_done(out, {"smeasure": result["metrics"]["smeasure"], "max_fmeasure": result["metrics"]["max_fmeasure"],
                    "mae": result["metrics"]["mae"]})  # fmt: skip
    log.info("eval-cosal %s: S %.4f  maxF %.4f  MAE %.4f (%d groups)", cfg.split, result["metrics"]["smeasure"],
             result["metrics"]["max_fmeasure"], result["metrics"]["mae"], len(groups))  # fmt: skip
    return result


def _short(meter: SaliencyMeter) -> dict[str, float]:
    r = meter.results()
    keys = ("smeasure", "max_fmeasure", "mean_fmeasure", "max_emeasure", "mae")
    return {k: round(r[k], 5) for k in keys}


def _table(result: dict) -> str:
    """Per-target and overall Sα / max Fβ / max Eξ / MAE as a small markdown table."""
    rows = ["| target | Sα | max Fβ | max Eξ | MAE |", "|---|---|---|---|---|"]
    items = [*result["per_target"].items(), ("**all**", result["metrics"])]
    for name, m in items:
        rows.append(
            f"| {name} | {m['smeasure']:.4f} | {m['max_fmeasure']:.4f} | {m['max_emeasure']:.4f} | {m['mae']:.4f} |"
        )
    return "\n".join(rows)


def describe_groups(gl: GroupLabels) -> dict:
    """How many images each target has (for logs and records)."""
    counts = np.bincount([t for ls in gl.labels for t in ls], minlength=len(gl.names))
    return {n: int(c) for n, c in zip(gl.names, counts, strict=True)}
