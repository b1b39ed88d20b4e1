"""Stage ``select``: SDS data selection — which (image, mask) pairs to train a segmenter on.

Paper: Tang, Yu, Pang, Zhang, "A Training-free Synthetic Data Selection Method for Semantic Segmentation" (SDS),
AAAI 2025. For every pair of a split (any loader format): PCS (the entropy change of CLIP's prediction when the
image's cells are shuffled) drops low-quality images; ASF (pooled IoU of the mask with a CLIP-ES pseudo mask of
its classes) with weakseg's class-balanced quota drops low-quality annotations among the PCS survivors. The masks
are what is being judged, so they are read (to score them); nothing is trained.

Writes into ``out``: ``config.json``; ``scores.json`` + ``scores.csv`` (per sample: classes, PCS and both entropies,
ASF, kept, why dropped); ``kept.txt`` / ``dropped.txt`` (image ids; ``weakseg train-seg --keep OUT/kept.txt``);
``report.md`` + ``summary.json`` (counts, cut values, per-class quotas, the dropped samples with their reasons);
``pseudo/<id>.png`` (the CLIP pseudo masks, with ``save_pseudo``); ``DONE`` last.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weakseg.cams.sds import asf_score, class_balanced_keep, entropy, pcs_keep, pcs_scores
from weakseg.config import apply_overrides
from weakseg.data.labels import labels_from_mask
from weakseg.data.palette import save_mask_png
from weakseg.data.registry import open_dataset
from weakseg.engine.artifacts import atomic_write_bytes, load_json, mark_done, save_json
from weakseg.engine.device import resolve_device
from weakseg.engine.stage import begin_stage, stage_record
from weakseg.errors import ConfigError, DataError
from weakseg.methods import create_method
from weakseg.methods.clip_es import clip_weights_record, load_clip_weights
from weakseg.methods.sds import SDSConfig, SDSScorer, pcs_cut, sds_preset
from weakseg.stages.io import DataInput, StageOutput
from weakseg.stages.progress import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SelectConfig(DataInput, StageOutput):
    """SDS: score every (image, mask) pair with a frozen CLIP (PCS: image quality; ASF: mask quality) and write the
    kept list (OUT/kept.txt, for train-seg --keep), per-sample scores and a report of what was dropped and why."""

    clip_weights: str = ""
    """the CLIP: a folder written by `weakseg clip pretrain` (the embedded toy CLIP), OpenAI's ViT-B-16.pt, or an
    open_clip checkpoint (with --clip-model)"""
    clip_model: str = ""
    """open_clip architecture of clip_weights (e.g. ViT-B-16); empty = OpenAI layout or the folder's config"""
    clip_preset: str = "cpu192"
    """clip-es preset for prompts, background words, input size and CAM refinement (paper: CLIP-ES's VOC prompts)"""
    clip_set: tuple[str, ...] = field(default_factory=tuple)
    """KEY=VALUE overrides of the clip-es config, e.g. background=ground,sky box_threshold=0.7"""
    preset: str = "paper"
    """SDS preset: paper (PCS > 0.1, keep half per class), toy (for the embedded toy CLIP), tiny (tests)"""
    set: tuple[str, ...] = field(default_factory=tuple)
    """KEY=VALUE overrides of the SDS config, e.g. asf_keep=0.7 pcs_rule=drop pcs_drop=0.1"""
    save_pseudo: bool = True
    """write the CLIP pseudo masks to OUT/pseudo/<id>.png"""


def _sds_config(cfg: SelectConfig) -> SDSConfig:
    sds = apply_overrides(sds_preset(cfg.preset), cfg.set)
    sds.check()
    return sds


def select(cfg: SelectConfig) -> dict:
    """Run (or skip when complete) SDS on a split; returns the summary (also ``out/summary.json``)."""
    out = Path(cfg.out)
    if not cfg.clip_weights:
        raise ConfigError(
            "SDS needs a CLIP: pass --clip-weights FOLDER (train the embedded toy CLIP with `weakseg clip pretrain "
            "--data DIR --out FOLDER`) or --clip-weights /path/to/ViT-B-16.pt"
        )
    sds = _sds_config(cfg)
    method = create_method("clip-es", cfg.clip_preset, (*cfg.clip_set, f"clip_weights={cfg.clip_weights}",
                                                          f"clip_model={cfg.clip_model}"))  # fmt: skip
    clip_cfg = method.cfg
    ds = open_dataset(cfg.data, split=cfg.split, fmt=cfg.fmt)
    if len(ds) == 0:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no images")
    if not ds.has_masks:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no masks: SDS selects (image, mask) pairs")
    record = {
        **stage_record(cfg, drop=("workers", "device", "overwrite", "out", "set", "preset", "clip_set", "clip_preset")),
        "sds": sds,
        "clip_es": clip_cfg,
        **clip_weights_record(cfg.clip_weights, cfg.clip_model),
    }
    if begin_stage(out, "select", record, overwrite=cfg.overwrite, meta={"preset": cfg.preset}) == "complete":
        return load_json(out / "summary.json")
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    clip = load_clip_weights(cfg.clip_weights, cfg.clip_model).to(device)
    scorer = SDSScorer(clip, ds, clip_cfg, sds, device)
    rows = []
    for i in progress(range(len(ds)), "select", total=len(ds)):
        rec = ds[i]
        mask = ds.load_mask(i)
        if mask is None:
            raise DataError(f"image {rec.image_id!r} ({rec.image_path}) has no mask; SDS scores (image, mask) pairs: "
                            "add its mask or leave it out of the split")  # fmt: skip
        image = ds.load_image(i)
        if image.shape[:2] != mask.shape:
            raise DataError(f"the mask of {rec.image_id!r} is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{rec.image_path} is {image.shape[1]}x{image.shape[0]}; fix the mask")  # fmt: skip
        classes = sorted(set(labels_from_mask(mask, ds.num_classes)) | set(rec.labels))
        probs = scorer.probs(image, classes)
        pseudo = scorer.pseudo_masks(i, classes, probs)
        if cfg.save_pseudo:
            save_mask_png(out / "pseudo" / f"{rec.image_id}.png", pseudo[sds.cam_weight])
        pcs = {"entropy": float(pcs_scores(probs.orig, probs.shuffled)), "embedding": 1.0 - probs.cosine}
        asf = {w: asf_score(mask, p, classes) for w, p in pseudo.items()}
        rows.append({
            "image_id": rec.image_id,
            "classes": [ds.class_names[c] for c in classes],
            "class_ids": classes,
            "pcs": pcs[sds.pcs_score],
            "entropy": float(entropy(probs.orig)),
            "entropy_shuffled": float(entropy(probs.shuffled)),
            "asf": asf[sds.cam_weight],
            "pcs_variants": pcs,
            "asf_variants": asf,
        })  # fmt: skip
    summary = decide(rows, sds, ds.class_names)
    summary.update(seconds=round(time.perf_counter() - t0, 1), data=str(cfg.data), split=cfg.split)
    write_outputs(out, rows, summary, sds)
    mark_done(out, {"kept": summary["kept"], "images": summary["images"]})
    return load_json(out / "summary.json")


def decide(rows: list[dict], sds: SDSConfig, class_names: tuple[str, ...]) -> dict:
    """Fill each row's ``kept`` / ``dropped_by`` / ``reason`` from its scores; returns the summary.

    Order: PCS first (its survivors are ASF's candidates), then ASF's class-balanced quota; a sample whose annotation
    has no foreground class is dropped as ``no_class`` (nothing to train a segmenter's classes on, nothing to score).
    """
    pcs = np.array([r["pcs"] for r in rows], dtype=np.float64)
    pcs_ok = pcs_keep(pcs, sds.pcs_rule, sds.pcs_threshold, sds.pcs_drop)
    cut = pcs_cut(pcs, sds)
    classes = [r["class_ids"] for r in rows]
    keep, quota = class_balanced_keep([r["asf"] for r in rows], classes, sds.asf_keep, candidates=pcs_ok)
    lowest_kept = {
        c: min((r["asf"] for r, k in zip(rows, keep, strict=True) if k and c in r["class_ids"]), default=None)
        for c in quota
    }
    for r, ok, k in zip(rows, pcs_ok, keep, strict=True):
        r["kept"] = bool(k)
        if k:
            r["dropped_by"], r["reason"] = "", ""
        elif not ok:
            rule = f"<= threshold {sds.pcs_threshold}" if sds.pcs_rule == "threshold" else (
                f"among the lowest {sds.pcs_drop:.0%} (cut {cut:.4g})")  # fmt: skip
            r["dropped_by"] = "pcs"
            r["reason"] = f"image: PCS {r['pcs']:.4g} {rule}: CLIP's prediction barely changes when it is shuffled"
        elif not r["class_ids"]:
            r["dropped_by"], r["reason"] = "no_class", "annotation: the mask has no foreground class"
        else:
            worst = ", ".join(
                f"{class_names[c]} keeps {quota[c]['kept']}/{quota[c]['candidates']} down to ASF {lowest_kept[c]:.3f}"
                for c in r["class_ids"]
            )
            r["dropped_by"] = "asf"
            r["reason"] = f"annotation: ASF {r['asf']:.3f} below every class quota ({worst})"
    n = len(rows)
    by = {k: sum(r["dropped_by"] == k for r in rows) for k in ("pcs", "asf", "no_class")}
    return {
        "images": n,
        "kept": int(keep.sum()),
        "kept_share": float(keep.sum() / n) if n else 0.0,
        "dropped": by,
        "pcs": {"rule": sds.pcs_rule, "threshold": sds.pcs_threshold, "drop": sds.pcs_drop, "cut": cut,
                "survivors": int(pcs_ok.sum())},
        "asf": {"keep_ratio": sds.asf_keep, "per_class": {class_names[c]: {**q, "lowest_kept_asf": lowest_kept[c]}
                                                         for c, q in quota.items()}},
        "sds": sds,
    }  # fmt: skip


COLUMNS = ("image_id", "classes", "pcs", "entropy", "entropy_shuffled", "asf", "kept", "dropped_by", "reason")


def write_outputs(out: Path, rows: list[dict], summary: dict, sds: SDSConfig) -> None:
    """scores.json/.csv, kept.txt, dropped.txt, summary.json and report.md (each written atomically)."""
    save_json(out / "scores.json", rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([" ".join(r["classes"]) if k == "classes" else r[k] for k in COLUMNS])
    atomic_write_bytes(out / "scores.csv", buf.getvalue().encode())
    kept = [r["image_id"] for r in rows if r["kept"]]
    dropped = [r["image_id"] for r in rows if not r["kept"]]
    atomic_write_bytes(out / "kept.txt", "".join(f"{i}\n" for i in kept).encode())
    atomic_write_bytes(out / "dropped.txt", "".join(f"{i}\n" for i in dropped).encode())
    save_json(out / "summary.json", summary)
    atomic_write_bytes(out / "report.md", report_markdown(rows, summary, sds).encode())


def report_markdown(rows: list[dict], summary: dict, sds: SDSConfig) -> str:
    """A readable report: counts, the cuts, per-class quotas, and every dropped sample with its reason."""
    d = summary["dropped"]
    pcs = summary["pcs"]
    rule = (f"PCS > {sds.pcs_threshold}" if sds.pcs_rule == "threshold"
            else f"the lowest {sds.pcs_drop:.0%} by PCS dropped (cut {pcs['cut']:.4g})")  # fmt: skip
    lines = [
        "# SDS selection report",
        "",
        f"{summary['images']} pairs scored; **{summary['kept']} kept** ({summary['kept_share']:.1%}); dropped: "
        f"{d['pcs']} by PCS (image quality), {d['asf']} by ASF (annotation quality), {d['no_class']} with no "
        "foreground class in the mask.",
        "",
        f"- PCS ({sds.pcs_score}): "
        + (
            "|H(p) - H(p_shuffled)| over [annotated classes + background words]"
            if sds.pcs_score == "entropy"
            else "1 - cosine of the CLIP embeddings of the image and its shuffled copy"
        )
        + f", {sds.grid}x{sds.grid} cells, seed {sds.seed}; rule: {rule}; {pcs['survivors']} survivors.",
        f"- ASF: pooled IoU of the mask with the CLIP pseudo mask (cam_weight={sds.cam_weight}); class-balanced quota: "
        f"each class keeps its best ceil({sds.asf_keep} x n) PCS survivors.",
        "",
        "| class | PCS survivors with it | quota | kept | lowest kept ASF |",
        "|---|---|---|---|---|",
    ]
    for name, q in summary["asf"]["per_class"].items():
        low = "-" if q["lowest_kept_asf"] is None else f"{q['lowest_kept_asf']:.3f}"
        lines.append(f"| {name} | {q['candidates']} | {q['quota']} | {q['kept']} | {low} |")
    lines += ["", "## Dropped samples", "", "| image | classes | PCS | ASF | dropped by | why |"]
    lines.append("|---|---|---|---|---|---|")
    order = {"pcs": 0, "no_class": 1, "asf": 2}
    for r in sorted((r for r in rows if not r["kept"]), key=lambda r: (order[r["dropped_by"]], r["asf"])):
        lines.append(f"| {r['image_id']} | {' '.join(r['classes'])} | {r['pcs']:.4f} | {r['asf']:.3f} | "
                     f"{r['dropped_by']} | {r['reason']} |")  # fmt: skip
    return "\n".join(lines) + "\n"
