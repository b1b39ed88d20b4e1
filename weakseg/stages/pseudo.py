"""Stage ``pseudo``: a folder of CAMs -> a folder of pseudo-label PNGs (:mod:`weakseg.refine.pseudo` per image).

For every image of a split, ``<cams>/<image_id>.npz`` (``cams`` float16 ``[K, H, W]`` in ``[0, 1]``,
``classes`` int16 ``[K]``) becomes ``<out>/<image_id>.png``: 0 = background, ``c + 1`` = class ``c``,
255 = ignore. Only the image's own classes can appear (the CAM channels whose class is among the
record's image-level labels).

Outputs: the PNGs (atomic, existing ones kept: an interrupted run resumes), ``config.json``,
``metrics.json`` (pseudo-label mIoU / precision / recall against the ground truth where it exists, and the
fraction of ignored pixels) and ``DONE`` last. ``miou`` scores every pixel with the ignored ones counted as
background, as IRN's ``eval_sem_seg.py`` scores its pseudo labels (Ahn et al., CVPR 2019); ``scored`` holds the
same metrics on the non-ignored pixels only (how clean the labels the segmenter learns from are). The masks
are read only for these metrics; a split without masks gets its labels and no metrics. ``bg_threshold_source``
says where the threshold rule's background score came from (given, tuned on masks by eval-cams, or the mask-free
default: :func:`weakseg.refine.pseudo.choose_bg_threshold`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from weakseg.data.palette import read_mask_png, save_mask_png
from weakseg.data.registry import open_dataset
from weakseg.engine.artifacts import is_done, load_json, load_npz, mark_done, save_json
from weakseg.engine.stage import begin_stage, stage_record
from weakseg.errors import ConfigError, DataError
from weakseg.eval.metrics import IGNORE, ConfusionMatrix, confusion, segmentation_class_names
from weakseg.refine.affinity_net import MODEL as AFFINITY_MODEL
from weakseg.refine.affinity_net import load_affinity_net
from weakseg.refine.pseudo import Affinity, PseudoOptions, choose_bg_threshold, make_label
from weakseg.stages.io import DataInput, StageOutput
from weakseg.stages.progress import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PseudoConfig(PseudoOptions, DataInput, StageOutput):
    """Make pseudo labels (palette PNGs, 255 = ignore) from CAMs."""

    cams: Path
    """folder of ``<image_id>.npz`` CAM files (with a DONE marker)"""
    seeds: Path | None = None
    """eval-cams result (JSON) whose best threshold sets bg_threshold when that is None (without it: the mask-free
    default)"""
    saliency: Path | None = None
    """folder of ``<image_id>.png`` saliency maps (0..255); given with background=power, mcis is used"""
    affinity: Path | None = None
    """folder written by train-aff (AffinityNet); needed by the rw refiner"""
    workers: int = 0
    """processes for labelling (0 = in this process)"""

    def resolved(self) -> PseudoConfig:
        """Check the options; fill ``bg_threshold`` from ``seeds``; a saliency folder with power selects mcis."""
        cfg = self
        if cfg.saliency is not None and cfg.background == "power":
            log.info("saliency folder given: using the MCIS saliency background rule")
            cfg = replace(cfg, background="mcis")
        cfg.check()
        if cfg.background == "mcis" and cfg.saliency is None:
            raise ConfigError("background rule 'mcis' needs saliency maps: give --saliency DIR")
        if cfg.background != "mcis" and cfg.saliency is not None:
            raise ConfigError(f"--saliency is only used by the 'mcis' background rule, not {cfg.background!r}")
        if cfg.refiner == "rw" and cfg.affinity is None:
            raise ConfigError("refiner 'rw' needs a trained AffinityNet: run `weakseg train-aff`, give --affinity DIR")
        if cfg.refiner != "rw" and cfg.affinity is not None:
            raise ConfigError(f"--affinity is only used by the 'rw' refiner, not {cfg.refiner!r}")
        if cfg.background == "threshold" and cfg.bg_threshold is None:
            cfg = replace(cfg, bg_threshold=cfg.threshold_choice()[0])
        return cfg

    def threshold_choice(self) -> tuple[float | None, str | None]:
        """The threshold rule's background score and its source in words (None, None for the other rules)."""
        if self.background != "threshold":
            return None, None
        if self.bg_threshold is None and self.seeds is not None and not Path(self.seeds).is_file():
            raise ConfigError(f"--seeds {self.seeds} does not exist; run eval-cams first or leave --seeds out")
        return choose_bg_threshold(self.bg_threshold, load_json(self.seeds) if self.seeds is not None else None)

    def record(self) -> dict:
        """What fixes the labels: the options in use and the inputs (not workers, out, overwrite, seeds)."""
        io = stage_record(
            self, drop=("workers", "out", "device", "overwrite", "seeds", *PseudoOptions.__dataclass_fields__)
        )
        if self.affinity is None:
            io.pop("affinity")
        if self.saliency is None:
            io.pop("saliency")
        return {**io, **stage_record(self.used())}


_AFFINITY: dict[tuple, Affinity] = {}  # the AffinityNet this process loaded (one per process, not per image)


def _affinity(folder: Path) -> Affinity:
    model = Path(folder) / AFFINITY_MODEL
    key = (str(Path(folder).resolve()), model.stat().st_mtime_ns if model.is_file() else None)
    if key not in _AFFINITY:
        _AFFINITY.clear()
        _AFFINITY[key] = load_affinity_net(folder)
    return _AFFINITY[key]


def _resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].numpy()


def _load_saliency(folder: Path, image_id: str, size: tuple[int, int]) -> np.ndarray:
    for ext in (".png", ".jpg", ".jpeg", ".bmp"):
        path = folder / f"{image_id}{ext}"
        if path.is_file():
            sal = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
            return _resize_maps(sal[None], size)[0]
    raise DataError(f"no saliency map for image {image_id!r} in {folder} (expected {image_id}.png)")


_WORKER_DATASET: dict[tuple, object] = {}  # the dataset a worker process opened (one per process)


def _dataset(cfg: PseudoConfig):
    key = (str(cfg.data), cfg.split, cfg.fmt)
    if key not in _WORKER_DATASET:
        _WORKER_DATASET.clear()
        _WORKER_DATASET[key] = open_dataset(cfg.data, split=cfg.split, fmt=cfg.fmt)
    return _WORKER_DATASET[key]


@dataclass(frozen=True)
class _Result:
    image_id: str
    confusion: np.ndarray | None
    """all pixels, ignored ones counted as background"""
    confusion_scored: np.ndarray | None
    """non-ignored pixels only"""
    ignored: int
    pixels: int
    written: bool


def _process(index: int, cfg: PseudoConfig, num_classes: int, ds=None) -> _Result:
    """Label one image (or read back its existing PNG) and score it against the ground truth.

    ``ds`` is the opened dataset; worker processes (``ds=None``) open it once and keep it.
    """
    ds = ds if ds is not None else _dataset(cfg)
    rec = ds[index]
    out_path = Path(cfg.out) / f"{rec.image_id}.png"
    written = False
    if out_path.is_file():
        label = read_mask_png(out_path)
    else:
        cam_path = Path(cfg.cams) / f"{rec.image_id}.npz"
        if not cam_path.is_file():
            raise DataError(f"no CAM file for image {rec.image_id!r}: {cam_path} is missing; rerun the CAM stage")
        z = load_npz(cam_path)
        cams, classes = z["cams"].astype(np.float32), z["classes"].astype(np.int64).reshape(-1)
        if cams.ndim != 3 or cams.shape[0] != classes.shape[0]:
            raise DataError(f"{cam_path}: cams {cams.shape} and classes {classes.shape} do not match")
        keep = np.isin(classes, list(rec.labels))  # only the image's own (ground-truth) classes
        cams, classes = cams[keep], classes[keep]
        image = None
        size = tuple(cams.shape[1:])
        if cfg.refiner != "none":
            image = ds.load_image(index)
            size = image.shape[:2]
            cams = _resize_maps(cams, size) if cams.shape[0] else np.zeros((0, *size), np.float32)
        sal = _load_saliency(Path(cfg.saliency), rec.image_id, size) if cfg.saliency is not None else None
        aff = _affinity(cfg.affinity) if cfg.affinity is not None else None
        label = make_label(cams, classes.tolist(), image, cfg, sal, aff)
        save_mask_png(out_path, label)
        written = True
    gt = ds.load_mask(index)
    cm = cm_scored = None
    if gt is not None:
        if gt.shape != label.shape:
            raise DataError(
                f"pseudo label of {rec.image_id!r} is {label.shape} but its ground truth is {gt.shape}; "
                "were the CAMs made at another size?"
            )
        cm = confusion(gt, np.where(label == IGNORE, 0, label).astype(np.uint8), num_classes)
        cm_scored = confusion(np.where(label == IGNORE, IGNORE, gt).astype(np.uint8), label, num_classes)
    return _Result(rec.image_id, cm, cm_scored, int((label == IGNORE).sum()), int(label.size), written)


def _init_worker() -> None:
    torch.set_num_threads(1)  # each worker handles whole images; several threads each would oversubscribe


def make_pseudo(cfg: PseudoConfig) -> dict:
    """Write pseudo labels for every image of ``cfg.split``; returns the metrics (also in metrics.json).

    Skips a complete output folder (DONE) made with the same configuration; resumes a partial one.
    """
    source = cfg.threshold_choice()[1]
    cfg = cfg.resolved()
    out = Path(cfg.out)
    if not Path(cfg.cams).is_dir():
        raise DataError(f"CAM folder {cfg.cams} does not exist; run the CAM stage first")
    if not is_done(cfg.cams):
        raise DataError(f"CAM folder {cfg.cams} has no DONE marker: the CAM stage is incomplete; rerun it")
    if cfg.affinity is not None and not is_done(cfg.affinity):
        raise DataError(f"AffinityNet folder {cfg.affinity} has no DONE marker: run (or finish) `weakseg train-aff`")
    status = begin_stage(out, "pseudo", cfg.record(), overwrite=cfg.overwrite)
    if status == "complete" and (out / "metrics.json").is_file():
        return load_json(out / "metrics.json")
    ds = open_dataset(cfg.data, split=cfg.split, fmt=cfg.fmt)
    class_names = segmentation_class_names(ds.class_names)
    if len(class_names) > 255:
        raise ConfigError(f"{len(class_names)} classes do not fit a uint8 palette PNG (255 = ignore)")

    t0 = time.perf_counter()
    indices = range(len(ds))
    if cfg.workers > 0:
        job = partial(_process, cfg=cfg, num_classes=len(class_names))
        with ProcessPoolExecutor(cfg.workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
            results = list(progress(pool.map(job, indices, chunksize=8), "pseudo labels", len(ds)))
    else:
        job = partial(_process, cfg=cfg, num_classes=len(class_names), ds=ds)
        results = list(progress(map(job, indices), "pseudo labels", len(ds)))
    seconds = time.perf_counter() - t0

    cm, cm_scored = ConfusionMatrix(class_names), ConfusionMatrix(class_names)
    with_gt = 0
    for r in results:
        if r.confusion is not None:
            cm.matrix += r.confusion
            cm_scored.matrix += r.confusion_scored
            with_gt += 1
    pixels = sum(r.pixels for r in results)
    written = sum(r.written for r in results)
    metrics = cm.metrics()
    scored = cm_scored.metrics().to_dict()
    report = {
        **metrics.to_dict(),
        "scored": {k: scored[k] for k in ("miou", "pixel_accuracy", "mean_precision", "mean_recall")},
        "ignored_fraction": round(sum(r.ignored for r in results) / max(pixels, 1), 6),
        "num_images": len(results),
        "num_with_ground_truth": with_gt,
        "bg_threshold": cfg.bg_threshold,
        "bg_threshold_source": source,
        "masks_read": f"ground-truth masks of split {cfg.split!r} of {cfg.data}" if with_gt else None,
        "written": written,
        "kept": len(results) - written,
        "seconds": round(seconds, 2),
        "table": metrics.table() if with_gt else "no ground truth: no metrics",
    }
    if not with_gt:
        log.info("pseudo: split %r of %s has no masks: labels written, no metrics", cfg.split, cfg.data)
        for k in ("miou", "pixel_accuracy", "mean_precision", "mean_recall"):
            report[k] = report["scored"][k] = None
    save_json(out / "metrics.json", report)
    mark_done(out, {"images": len(results)})
    log.info(
        "pseudo labels: %d images (%d written, %d kept) in %.1f s; mIoU %s (ignored → background), ignored %.1f%%",
        len(results),
        written,
        len(results) - written,
        seconds,
        "-" if report["miou"] is None else f"{100 * report['miou']:.2f}",
        100 * report["ignored_fraction"],
    )
    return report
