"""The pseudo-label stage: CAMs (+ optional saliency) -> background -> refiner -> palette PNGs.

For every image of a split, ``<cams>/<image_id>.npz`` (``cams`` float16 ``[K, H, W]`` in
``[0, 1]``, ``classes`` int16 ``[K]``) becomes ``<out>/<image_id>.png``: 0 = background,
``c + 1`` = class ``c``, 255 = ignore. Only the image's own classes can appear (the CAM channels
whose class is among the record's image-level labels).

Per image: a background rule (:data:`BACKGROUNDS`) adds a background score and possibly an
ignore mask; the scores are normalised per pixel, refined (:data:`REFINERS`), and the argmax is
taken; pixels whose top-1 minus top-2 probability is below ``ignore_margin`` are ignored. The ``rw``
refiner (AffinityNet's random walk, Ahn & Kwak, CVPR 2018; :mod:`weakseg.refine.affinity`) needs a
``train-aff`` folder (``affinity``) and propagates the raw scores (background included) before they
are normalised, as PSA does: on the AffinityNet feature grid, then upsampled to the image.

Outputs: the PNGs (atomic, existing ones kept: an interrupted run resumes), ``config.json``,
``metrics.json`` (pseudo-label mIoU / precision / recall against the ground truth where it exists, and the
fraction of ignored pixels) and ``DONE`` last. ``miou`` scores every pixel with the ignored ones counted as
background, as IRN's ``eval_sem_seg.py`` scores its pseudo labels (Ahn et al., CVPR 2019); ``scored`` holds the
same metrics on the non-ignored pixels only (how clean the labels the segmenter learns from are).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.engine.artifacts import is_done, load_json, load_npz, mark_done, save_json
from weakseg.errors import ConfigError, DataError, unknown_name
from weakseg.eval.metrics import IGNORE, ConfusionMatrix, confusion, segmentation_class_names
from weakseg.refine.background import (
    low_margin,
    mcis_background,
    normalise_scores,
    power_background,
    scores_to_label,
    threshold_background,
    with_background,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoConfig:
    """Make pseudo labels (palette PNGs, 255 = ignore) from CAMs."""

    cams: Path
    """folder of ``<image_id>.npz`` CAM files (with a DONE marker)"""
    data: Path
    """dataset root (images, image-level labels, ground truth for the metrics where present)"""
    out: Path
    """output folder: ``<image_id>.png``, config.json, metrics.json, DONE"""
    fmt: str = "auto"
    split: str = "train"
    background: str = "power"
    """background rule: power ((1 - max CAM)^bg_power), threshold (constant bg_threshold), mcis (saliency)"""
    bg_power: float = 3.0
    """exponent of the power rule; foreground where max CAM > (1 - max CAM)^p (p=3: above ~0.32)"""
    bg_threshold: float = 0.3
    """background score of the threshold rule"""
    saliency: Path | None = None
    """folder of ``<image_id>.png`` saliency maps (0..255); given with background=power, mcis is used"""
    refiner: str = "par"
    """par (torch pixel-adaptive refinement), crf (dense CRF, extra 'crf'), rw (AffinityNet random walk,
    needs --affinity) or none"""
    ignore_margin: float = 0.1
    """pixels whose top-1 minus top-2 class probability is below this become 255 (0 = off)"""
    par_max_side: int = 320
    """PAR runs at most at this resolution (longer side) and is upsampled back"""
    par_scale: float = 1.0
    """PAR runs at this fraction of the image size (≤ 1; par_max_side still caps it)"""
    par_iters: int = 10
    """PAR propagation steps (each reaches up to 24 px further with the default dilations)"""
    par_w1: float = 0.3
    """PAR colour/position temperature; smaller = stops more sharply at colour edges"""
    affinity: Path | None = None
    """folder written by train-aff (AffinityNet); needed by the rw refiner"""
    rw_beta: float = 8.0
    """rw: affinities are raised to this power before the walk (PSA: 8; larger = sharper boundaries)"""
    rw_iters: int = 256
    """rw: random-walk steps (PSA: 2^8 = 256)"""
    rw_max_side: int = 512
    """rw: images are shrunk to at most this side for the walk (512 px at stride 8: <= 4096 cells, a dense
    64 MiB transition matrix)"""
    workers: int = 0
    """processes for labelling (0 = in this process)"""

    def resolved(self) -> PseudoConfig:
        """Check the names; a saliency folder with the default rule selects the MCIS rule."""
        cfg = self
        if cfg.saliency is not None and cfg.background == "power":
            log.info("saliency folder given: using the MCIS saliency background rule")
            cfg = PseudoConfig(**{**asdict(cfg), "background": "mcis"})
        if cfg.background not in BACKGROUNDS:
            raise unknown_name("background rule", cfg.background, BACKGROUNDS)
        if cfg.refiner not in REFINERS:
            raise unknown_name("refiner", cfg.refiner, REFINERS)
        if cfg.background == "mcis" and cfg.saliency is None:
            raise ConfigError("background rule 'mcis' needs saliency maps: give --saliency DIR")
        if cfg.background != "mcis" and cfg.saliency is not None:
            raise ConfigError(f"--saliency is only used by the 'mcis' background rule, not {cfg.background!r}")
        if not 0 <= cfg.ignore_margin < 1:
            raise ConfigError(f"ignore_margin must lie in [0, 1), got {cfg.ignore_margin}")
        if cfg.refiner == "rw" and cfg.affinity is None:
            raise ConfigError("refiner 'rw' needs a trained AffinityNet: run `weakseg train-aff`, give --affinity DIR")
        if cfg.refiner != "rw" and cfg.affinity is not None:
            raise ConfigError(f"--affinity is only used by the 'rw' refiner, not {cfg.refiner!r}")
        if cfg.par_iters < 0 or cfg.par_w1 <= 0:
            raise ConfigError(f"need par_iters >= 0 and par_w1 > 0, got {cfg.par_iters} and {cfg.par_w1}")
        if not 0 < cfg.par_scale <= 1:
            raise ConfigError(f"par_scale must lie in (0, 1], got {cfg.par_scale}")
        if cfg.rw_beta <= 0 or cfg.rw_iters < 0 or cfg.rw_max_side < 16:
            raise ConfigError("need rw_beta > 0, rw_iters >= 0 and rw_max_side >= 16")
        return cfg


# --- registries --------------------------------------------------------------------------------

# (cams [K,H,W], saliency [H,W] or None, cfg) -> (scores [1+K,H,W], ignore bool [H,W] or None)
BackgroundRule = Callable[
    [torch.Tensor, "torch.Tensor | None", PseudoConfig],
    tuple[torch.Tensor, "torch.Tensor | None"],
]


def _bg_power(cams: torch.Tensor, saliency: torch.Tensor | None, cfg: PseudoConfig):
    return with_background(cams, power_background(cams, cfg.bg_power)), None


def _bg_threshold(cams: torch.Tensor, saliency: torch.Tensor | None, cfg: PseudoConfig):
    return with_background(cams, threshold_background(cams, cfg.bg_threshold)), None


def _bg_mcis(cams: torch.Tensor, saliency: torch.Tensor | None, cfg: PseudoConfig):
    assert saliency is not None
    r = mcis_background(cams, saliency)
    return r.scores, r.ignore


BACKGROUNDS: dict[str, BackgroundRule] = {"power": _bg_power, "threshold": _bg_threshold, "mcis": _bg_mcis}

# (image uint8 [H,W,3], probs [C,H,W], cfg) -> refined probs [C,H,W]
Refiner = Callable[[np.ndarray, torch.Tensor, PseudoConfig], torch.Tensor]


def _refine_none(image: np.ndarray | None, probs: torch.Tensor, cfg: PseudoConfig) -> torch.Tensor:
    return probs


def _refine_par(image: np.ndarray, probs: torch.Tensor, cfg: PseudoConfig) -> torch.Tensor:
    from weakseg.refine.par import par_refine

    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    kw = {"iters": cfg.par_iters, "w1": cfg.par_w1, "max_side": cfg.par_max_side, "scale": cfg.par_scale}
    return par_refine(img, probs[None], **kw)[0]


def _refine_crf(image: np.ndarray, probs: torch.Tensor, cfg: PseudoConfig) -> torch.Tensor:
    from weakseg.refine.crf import crf_refine

    return torch.from_numpy(crf_refine(image, probs.numpy()))


_AFFINITY_NET: dict[tuple, tuple] = {}  # the AffinityNet this process loaded (one per process, not per image)


def _affinity_net(folder: Path) -> tuple:
    """The (network, config) of a train-aff folder, loaded once per process."""
    from weakseg.refine import affinity_net

    model = Path(folder) / affinity_net.MODEL
    key = (str(Path(folder).resolve()), model.stat().st_mtime_ns if model.is_file() else None)
    if key not in _AFFINITY_NET:
        _AFFINITY_NET.clear()
        _AFFINITY_NET[key] = affinity_net.load_affinity_net(folder)
    return _AFFINITY_NET[key]


def _refine_rw(image: np.ndarray, scores: torch.Tensor, cfg: PseudoConfig) -> torch.Tensor:
    """AffinityNet random walk of scores ``[C, H, W]`` on the feature grid (PSA), back at ``[C, H, W]``."""
    from weakseg.refine.affinity import random_walk, transition_matrix
    from weakseg.refine.affinity_net import affinity_features, resize_to_max_side

    assert cfg.affinity is not None
    net, meta = _affinity_net(cfg.affinity)
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
    features = affinity_features(net, resize_to_max_side(img, cfg.rw_max_side))  # [D, h, w]
    small = F.interpolate(scores[None], size=features.shape[-2:], mode="area")[0]  # PSA: average pooling
    walked = random_walk(small, transition_matrix(features, int(meta["radius"]), cfg.rw_beta), cfg.rw_iters)
    return F.interpolate(walked[None], size=scores.shape[-2:], mode="bilinear", align_corners=False)[0]


REFINERS: dict[str, Refiner] = {"none": _refine_none, "par": _refine_par, "crf": _refine_crf, "rw": _refine_rw}
SCORE_REFINERS = frozenset({"rw"})
"""refiners that take the raw scores (before :func:`normalise_scores`) instead of probabilities"""


# --- one image ---------------------------------------------------------------------------------


def make_label(
    cams: np.ndarray | torch.Tensor,
    classes: Sequence[int],
    image: np.ndarray | None,
    cfg: PseudoConfig,
    saliency: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """Pseudo label ``uint8 [H, W]`` of one image from its CAMs ``[K, H, W]`` and classes ``[K]``.

    ``image`` (``uint8 [H, W, 3]``) is needed by the ``par``, ``crf`` and ``rw`` refiners; ``saliency``
    (``[H, W]`` in ``[0, 1]``) by the ``mcis`` rule. ``cfg`` must be :meth:`PseudoConfig.resolved`.
    """
    cams_t = torch.as_tensor(np.asarray(cams, dtype=np.float32))
    sal = None if saliency is None else torch.as_tensor(np.asarray(saliency, dtype=np.float32))
    scores, ignore = BACKGROUNDS[cfg.background](cams_t, sal, cfg)
    refine = cams_t.shape[0] > 0 and cfg.refiner != "none"
    if refine and image is None:
        raise ValueError(f"refiner {cfg.refiner!r} needs the image")
    if refine and cfg.refiner in SCORE_REFINERS:
        scores = REFINERS[cfg.refiner](image, scores, cfg)
    probs = normalise_scores(scores)
    if refine and cfg.refiner not in SCORE_REFINERS:
        probs = REFINERS[cfg.refiner](image, probs, cfg)
    uncertain = low_margin(probs, cfg.ignore_margin)
    ignore = uncertain if ignore is None else (ignore | uncertain)
    return scores_to_label(probs, list(classes), ignore)


def _resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].numpy()


def _load_saliency(folder: Path, image_id: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    for ext in (".png", ".jpg", ".jpeg", ".bmp"):
        path = folder / f"{image_id}{ext}"
        if path.is_file():
            sal = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
            return _resize_maps(sal[None], size)[0]
    raise DataError(f"no saliency map for image {image_id!r} in {folder} (expected {image_id}.png)")


_WORKER_DATASET: dict[tuple, object] = {}  # the dataset a worker process opened (one per process)


def _open(cfg: PseudoConfig):
    from weakseg.data.registry import open_dataset

    return open_dataset(cfg.data, split=cfg.split, fmt=cfg.fmt)


def _dataset(cfg: PseudoConfig):
    key = (str(cfg.data), cfg.split, cfg.fmt)
    if key not in _WORKER_DATASET:
        _WORKER_DATASET.clear()
        _WORKER_DATASET[key] = _open(cfg)
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
    from weakseg.data.palette import read_mask_png, save_mask_png

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
        label = make_label(cams, classes.tolist(), image, cfg, sal)
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


# --- the stage ---------------------------------------------------------------------------------


def _config_dict(cfg: PseudoConfig) -> dict:
    d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    d.pop("workers")  # does not change the output
    unused = {"rw": ("affinity", "rw_beta", "rw_iters", "rw_max_side"), "par": ("par_iters", "par_w1", "par_scale")}
    for refiner, keys in unused.items():  # folders made before these options existed stay valid
        if cfg.refiner != refiner:
            for k in keys:
                d.pop(k)
    if d.get("par_scale") == 1.0:  # the behaviour from before the option: par folders made then stay valid
        d.pop("par_scale")
    return d


def make_pseudo(cfg: PseudoConfig) -> dict:
    """Write pseudo labels for every image of ``cfg.split``; returns the metrics (also in metrics.json).

    Skips a complete output folder (DONE) made with the same configuration; resumes a partial one.
    """
    cfg = cfg.resolved()
    out = Path(cfg.out)
    cfg_path = out / "config.json"
    if cfg_path.is_file():
        previous = load_json(cfg_path)
        current = _config_dict(cfg)
        if previous != current:
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            raise ConfigError(
                f"{out} holds pseudo labels made with another configuration (differs in {changed}); "
                "delete the folder or choose another --out"
            )
        if is_done(out) and (out / "metrics.json").is_file():
            log.info("pseudo labels in %s are complete; skipping", out)
            return load_json(out / "metrics.json")
    if not Path(cfg.cams).is_dir():
        raise DataError(f"CAM folder {cfg.cams} does not exist; run the CAM stage first")
    if not is_done(cfg.cams):
        raise DataError(f"CAM folder {cfg.cams} has no DONE marker: the CAM stage is incomplete; rerun it")
    if cfg.affinity is not None and not is_done(cfg.affinity):
        raise DataError(f"AffinityNet folder {cfg.affinity} has no DONE marker: run (or finish) `weakseg train-aff`")
    ds = _open(cfg)
    class_names = segmentation_class_names(ds.class_names)
    if len(class_names) > 255:
        raise ConfigError(f"{len(class_names)} classes do not fit a uint8 palette PNG (255 = ignore)")
    out.mkdir(parents=True, exist_ok=True)
    save_json(cfg_path, _config_dict(cfg))

    t0 = time.perf_counter()
    indices = range(len(ds))
    if cfg.workers > 0:
        job = partial(_process, cfg=cfg, num_classes=len(class_names))
        with ProcessPoolExecutor(cfg.workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
            results = list(_progress(pool.map(job, indices, chunksize=8), len(ds)))
    else:
        job = partial(_process, cfg=cfg, num_classes=len(class_names), ds=ds)
        results = list(_progress(map(job, indices), len(ds)))
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
        "written": written,
        "kept": len(results) - written,
        "seconds": round(seconds, 2),
        "table": metrics.table() if with_gt else "no ground truth: no metrics",
    }
    if not with_gt:
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


def _progress(it, total: int):
    from tqdm.auto import tqdm

    from weakseg.engine import dist

    return tqdm(it, total=total, desc="pseudo labels", leave=False, dynamic_ncols=True, disable=not dist.is_main())
