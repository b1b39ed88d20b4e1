"""Stage ``predict``: segment any image files or folders with a trained segmenter.

Images of any size, EXIF orientation, RGBA/CMYK/grayscale (via :func:`weakseg.data.images.load_rgb`) give
``<stem>.png`` masks (palette PNG at the image size) and ``<stem>_overlay.png`` colour overlays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from weakseg.data.images import IMAGE_EXTENSIONS, load_rgb
from weakseg.data.palette import overlay, save_mask_png
from weakseg.engine.artifacts import save_png
from weakseg.engine.device import resolve_device
from weakseg.errors import DataError
from weakseg.seg.models import load_segmenter
from weakseg.seg.predict import predict_masks
from weakseg.stages.progress import progress

log = logging.getLogger(__name__)


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
            files.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p} is neither an image file nor a folder")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, paths))}")
    return files


def predict_images(cfg: PredictConfig) -> list[Path]:
    """Write ``<stem>.png`` (class-index palette mask, image size) and ``<stem>_overlay.png``; returns the masks."""
    model, info = load_segmenter(cfg.seg_dir, resolve_device(cfg.device))
    out = Path(cfg.out)
    files = _expand(cfg.images)
    stems = [f.stem for f in files]
    written = []
    for f in progress(files, "predict"):
        image = load_rgb(f)
        _, mask = predict_masks(model, image, cfg.scales, cfg.flip, cfg.crf)
        # two inputs with the same stem (from different folders) must not overwrite each other
        stem = f.stem if stems.count(f.stem) == 1 else f"{f.parent.name}_{f.stem}"
        written.append(save_mask_png(out / f"{stem}.png", mask))
        save_png(out / f"{stem}_overlay.png", Image.fromarray(overlay(image, mask, cfg.alpha)))
        present = [info.class_names[c] for c in np.unique(mask) if c < len(info.class_names) and c > 0]
        log.info("%s: %s", f.name, ", ".join(present) or "background only")
    return written
