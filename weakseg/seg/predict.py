"""Inference with a trained segmenter: multi-scale + flip prediction, evaluation, prediction on any image.

- :func:`predict_masks`: one ``uint8 [H, W, 3]`` image -> class probabilities and a mask at its size,
  averaging softmax outputs over scales and horizontal flips; optional dense-CRF post-processing.
- :func:`eval_seg`: a dataset split -> ``out/pred/<id>.png`` and ``out/metrics.json`` (mIoU,
  precision, recall per class, background first) plus a printed table.
- :func:`predict_images`: any image files or folders (any size, EXIF orientation, RGBA/CMYK/
  grayscale, via :func:`weakseg.data.images.load_rgb`) -> ``<stem>.png`` masks and
  ``<stem>_overlay.png`` colour overlays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.engine.artifacts import mark_done, save_json
from weakseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@torch.no_grad()
def predict_masks(
    model: torch.nn.Module,
    image: np.ndarray,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict one image; returns ``(probs float32 [C, H, W], mask uint8 [H, W])`` at the image size.

    Softmax outputs are averaged over ``scales`` (image resized by each factor) and, with ``flip``,
    over the horizontally flipped image too. ``crf`` refines the averaged probabilities with a dense
    CRF (extra ``crf``). The model must be in eval mode; it runs on its own device.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if not scales or min(scales) <= 0:
        raise ConfigError(f"scales must be positive, got {tuple(scales)}")
    device = next(model.parameters()).device
    h, w = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device).float() / 255
    total = None
    n = 0
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(
            x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", align_corners=False, antialias=True
        )  # fmt: skip
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        logits = model(batch).float()
        probs = logits.softmax(dim=1)
        if flip:
            probs = probs[:1] + probs[1:].flip(-1)
        if probs.shape[-2:] != (h, w):
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        total = probs[0] if total is None else total + probs[0]
        n += 2 if flip else 1
    probs = (total / n).cpu().numpy()
    if crf:
        from weakseg.refine.crf import crf_refine

        probs = crf_refine(image, probs)
    return probs.astype(np.float32), probs.argmax(axis=0).astype(np.uint8)


@dataclass(frozen=True)
class EvalSegConfig:
    """Evaluate a trained segmenter on a dataset split."""

    seg_dir: Path
    """folder of the trained segmenter (model.safetensors + config.json)"""
    data: Path
    out: Path
    """output folder: pred/<image_id>.png, metrics.json"""
    fmt: str = "auto"
    split: str = "val"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = True
    crf: bool = False
    """dense-CRF post-processing (extra 'crf')"""
    device: str = "auto"


def eval_seg(cfg: EvalSegConfig) -> dict:
    """Predict every image of the split, write the masks and the metrics; returns the metrics dict.

    The result holds :meth:`weakseg.eval.metrics.SegMetrics.to_dict` (``miou``, ``per_class``, ...),
    ``table`` (a printable table) and the evaluation settings.
    """
    from weakseg.data.palette import save_mask_png
    from weakseg.data.registry import open_dataset
    from weakseg.engine.device import resolve_device
    from weakseg.eval.metrics import ConfusionMatrix, segmentation_class_names
    from weakseg.seg.models import load_segmenter

    device = resolve_device(cfg.device)
    model, info = load_segmenter(cfg.seg_dir, device)
    ds = open_dataset(cfg.data, split=cfg.split, fmt=cfg.fmt)
    names = segmentation_class_names(ds.class_names)
    if len(names) != info.num_classes:
        raise ConfigError(
            f"the segmenter in {cfg.seg_dir} predicts {info.num_classes} classes but {cfg.data} has {len(names)} "
            "(background included); was it trained on another dataset?"
        )
    out = Path(cfg.out)
    cm = ConfusionMatrix(names)
    with_gt = 0
    for i in _progress(range(len(ds)), "eval-seg"):
        _, mask = predict_masks(model, ds.load_image(i), cfg.scales, cfg.flip, cfg.crf)
        save_mask_png(out / "pred" / f"{ds[i].image_id}.png", mask)
        gt = ds.load_mask(i)
        if gt is not None:
            cm.update(gt, mask)
            with_gt += 1
    if with_gt == 0:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no ground-truth masks to evaluate against")
    m = cm.metrics()
    result = {
        **m.to_dict(),
        "table": m.table(),
        "split": cfg.split,
        "num_images": with_gt,
        "scales": list(cfg.scales),
        "flip": cfg.flip,
        "crf": cfg.crf,
    }
    save_json(out / "metrics.json", result)
    mark_done(out)
    log.info("segmenter on %s: mIoU %.2f over %d images", cfg.split, 100 * m.miou, with_gt)
    return result


@dataclass(frozen=True)
class PredictConfig:
    """Segment any images with a trained segmenter: masks (palette PNG) and colour overlays."""

    seg_dir: Path
    """folder of the trained segmenter (model.safetensors + config.json)"""
    images: tuple[Path, ...]
    """image files and/or folders of images"""
    out: Path
    """output folder: <stem>.png (mask) and <stem>_overlay.png for every image"""
    scales: tuple[float, ...] = (1.0,)
    flip: bool = True
    crf: bool = False
    alpha: float = 0.5
    """opacity of the class colours in the overlay"""
    device: str = "auto"


def _expand(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p} is neither an image file nor a folder")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, paths))}")
    return files


def predict_images(cfg: PredictConfig) -> list[Path]:
    """Write ``<stem>.png`` (class-index palette mask, image size) and ``<stem>_overlay.png``; returns the masks."""
    from PIL import Image

    from weakseg.data.images import load_rgb
    from weakseg.data.palette import overlay, save_mask_png
    from weakseg.engine.artifacts import save_png
    from weakseg.engine.device import resolve_device
    from weakseg.seg.models import load_segmenter

    model, info = load_segmenter(cfg.seg_dir, resolve_device(cfg.device))
    out = Path(cfg.out)
    files = _expand(cfg.images)
    stems = [f.stem for f in files]
    written = []
    for f in _progress(files, "predict"):
        image = load_rgb(f)
        _, mask = predict_masks(model, image, cfg.scales, cfg.flip, cfg.crf)
        # two inputs with the same stem (from different folders) must not overwrite each other
        stem = f.stem if stems.count(f.stem) == 1 else f"{f.parent.name}_{f.stem}"
        written.append(save_mask_png(out / f"{stem}.png", mask))
        save_png(out / f"{stem}_overlay.png", Image.fromarray(overlay(image, mask, cfg.alpha)))
        present = [info.class_names[c] for c in np.unique(mask) if c < len(info.class_names) and c > 0]
        log.info("%s: %s", f.name, ", ".join(present) or "background only")
    return written


def _progress(it, desc: str):
    from tqdm.auto import tqdm

    from weakseg.engine import dist

    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True, disable=not dist.is_main())
