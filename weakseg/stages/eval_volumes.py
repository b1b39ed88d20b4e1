"""Stage ``eval-volumes``: a ``train-semi`` model on the 3D volumes of a split -> ``out/metrics.json``.

Each volume is predicted slice by slice by model 1 (:meth:`weakseg.methods.abd.SemiSupervisedMethod.predict_volume`)
and scored per class in 3D with :func:`weakseg.eval.medical.per_class_scores` (Dice, Jaccard, HD95, ASD; medpy
for the distances). Per class the scores are averaged over volumes, then over classes (the ACDC protocol of
SSL4MIS / ABD). Distances are in mm when a voxel spacing is known (``--spacing`` or the dataset's), in voxels
otherwise; ``unit`` in the result says which. Under the default empty-mask rule a class missed in a volume
gets NaN distances, left out of the means and counted in ``missed``.

Writes ``metrics.json`` and ``DONE`` into ``out``; an evaluation is always recomputed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from weakseg.data.acdc import open_slices
from weakseg.engine.artifacts import mark_done, save_json
from weakseg.engine.checkpoint import load_model
from weakseg.engine.device import resolve_device
from weakseg.engine.stage import stage_meta
from weakseg.errors import ConfigError, DataError
from weakseg.eval.medical import EMPTY_RULES, MedicalScores, mean_scores, per_class_scores
from weakseg.methods.abd import SemiSupervisedMethod
from weakseg.methods.base import method_from_record
from weakseg.stages.io import DataInput
from weakseg.stages.progress import progress

log = logging.getLogger(__name__)

CHECKPOINTS = {"last": "model.safetensors", "best": "best.safetensors"}


@dataclass(frozen=True)
class EvalVolumesOptions:
    """Volume-evaluation options (nested as ``eval_volumes`` in ``weakseg run``)."""

    checkpoint: str = "last"
    """last (the final weights) or best (the epoch with the best learning-curve Dice: the paper's selection)"""
    spacing: tuple[float, float, float] | None = None
    """voxel size in mm (slice, row, column) for HD95/ASD in mm; None: the dataset's, else voxels"""
    empty: str = "strict"
    """empty-mask rule: strict (a missed class has NaN distances) or ssl4mis (the reference code's zeros)"""


@dataclass(frozen=True, kw_only=True)
class EvalVolumesConfig(EvalVolumesOptions, DataInput):
    """Evaluate a semi-supervised model (train-semi folder) on the 3D volumes of a split."""

    model_dir: Path
    """folder written by train-semi (config.json, model.safetensors, best.safetensors)"""
    out: Path
    """output folder: metrics.json, DONE"""
    split: str = "test"
    device: str = "auto"
    fmt: str = "auto"
    """medical data layout: auto, h5 (data/*.h5 + lists), png (slices/ + labels/ + lists) or nifti
    ([<patient>/]<volume>.nii.gz + <volume>_gt.nii.gz + lists; spacing from the header); weakseg.data.acdc"""


def _as_dict(s: MedicalScores) -> dict:
    return {"dice": s.dice, "jaccard": s.jaccard, "hd95": s.hd95, "asd": s.asd}


def format_table(result: dict) -> str:
    """Per-class and mean Dice / Jaccard (%) and HD95 / ASD (``unit``) as a plain-text table."""
    unit = result["unit"]
    lines = [f"{'class':<8}{'Dice %':>9}{'Jacc %':>9}{'HD95 ' + unit:>13}{'ASD ' + unit:>12}"]
    rows = [*result["per_class"].items(), ("mean", result["mean"])]
    for name, m in rows:
        lines.append(f"{name:<8}{100 * m['dice']:>9.2f}{100 * m['jaccard']:>9.2f}{m['hd95']:>13.2f}{m['asd']:>12.2f}")
    return "\n".join(lines)


def eval_volumes(cfg: EvalVolumesConfig) -> dict:
    """Predict and score every volume of the split; writes and returns the metrics (see the module docstring)."""
    if cfg.checkpoint not in CHECKPOINTS:
        raise ConfigError(f"unknown checkpoint {cfg.checkpoint!r}; valid names: {', '.join(CHECKPOINTS)}")
    if cfg.empty not in EMPTY_RULES:
        raise ConfigError(f"unknown empty-mask rule {cfg.empty!r}; valid names: {', '.join(EMPTY_RULES)}")
    meta = stage_meta(cfg.model_dir)
    if meta.get("stage") != "train-semi":
        raise ConfigError(f"{cfg.model_dir} was not written by train-semi (stage {meta.get('stage')!r})")
    rec = meta["record"]
    method = method_from_record(rec["method"], rec["method_config"])
    if not isinstance(method, SemiSupervisedMethod):
        raise ConfigError(f"{cfg.model_dir} holds method {rec['method']!r}, not a semi-supervised one")
    weights = Path(cfg.model_dir) / CHECKPOINTS[cfg.checkpoint]
    if not weights.is_file():
        raise ConfigError(f"{weights} does not exist; finish train-semi first (best needs a learning curve)")
    names = tuple(rec["class_names"])
    device = resolve_device(cfg.device)
    net = method.build(None, len(names) + 1)
    load_model(weights, net)
    net.to(device).eval()
    ds = open_slices(cfg.data, cfg.split, cfg.fmt)
    if ds.class_names != names:
        raise ConfigError(f"the model was trained on classes {names}, split {cfg.split!r} has {ds.class_names}")
    classes = range(1, len(names) + 1)
    per_volume, units = {}, set()
    for v in progress(ds.volumes, "eval-volumes"):
        image, label = ds.load_volume(v)
        if label is None:
            continue
        spacing = cfg.spacing if cfg.spacing is not None else ds.spacing(v)
        scores = per_class_scores(label, method.predict_volume(net, image), classes, spacing, cfg.empty)
        per_volume[v] = {names[c - 1]: _as_dict(s) for c, s in scores.items()}
        units |= {s.unit for s in scores.values()}
    if not per_volume:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no labelled volume to evaluate")
    if len(units) > 1:
        raise DataError(f"split {cfg.split!r} of {cfg.data} mixes volumes with a voxel spacing and volumes without "
                        "one; pass --spacing to score them all in mm")  # fmt: skip
    unit = units.pop()
    per_class = {}
    for n in names:
        rows = [MedicalScores(**per_volume[v][n], unit=unit) for v in per_volume]
        per_class[n] = {**_as_dict(mean_scores(rows)), "missed": sum(math.isnan(r.hd95) for r in rows)}
    mean = {k: sum(per_class[n][k] for n in names) / len(names) for k in ("dice", "jaccard", "hd95", "asd")}
    result = {
        "split": cfg.split,
        "volumes": len(per_volume),
        "unit": unit,
        "empty": cfg.empty,
        "checkpoint": cfg.checkpoint,
        "method": rec["method"],
        "labelled_patients": rec.get("labelled_patients"),
        "per_class": per_class,
        "mean": mean,
        "per_volume": per_volume,
    }
    result["table"] = format_table(result)
    out = Path(cfg.out)
    save_json(out / "metrics.json", result)
    mark_done(out)
    log.info("%s on %d %s volumes: Dice %.2f %%, HD95 %.2f %s", rec["method"], len(per_volume), cfg.split,
             100 * mean["dice"], mean["hd95"], unit)  # fmt: skip
    return result
