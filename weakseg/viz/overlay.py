"""CAM overlays and a CAM grid (image | CAM per class | ground truth) as one PNG."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from weakseg.data.palette import colorize
from weakseg.data.registry import open_dataset
from weakseg.engine.artifacts import load_npz, save_png

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VizConfig:
    """Render a PNG grid of CAMs: each row an image, its CAM per class, its ground-truth mask."""

    cams: Path
    """folder written by make-cams"""
    data: Path
    out: Path
    """PNG file to write"""
    split: str = "train"
    fmt: str = "auto"
    n: int = 8
    """rows (images) in the grid"""


def jet(x: np.ndarray) -> np.ndarray:
    """The 'jet' colour map: ``float [...]`` in [0, 1] → ``uint8 [..., 3]`` (blue → cyan → yellow → red)."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0, 1)
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend ``cam`` (``float [H, W]`` in [0, 1], resized if needed) in jet colours over ``uint8 [H, W, 3]``."""
    image = np.asarray(image, dtype=np.uint8)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != image.shape[:2]:
        cam = np.asarray(Image.fromarray(cam).resize(image.shape[1::-1], Image.BILINEAR))
    out = image.astype(np.float32) * (1 - alpha) + jet(cam).astype(np.float32) * alpha
    return np.clip(out, 0, 255).astype(np.uint8)


def _tile(a: np.ndarray, h: int, caption: str | None = None) -> Image.Image:
    im = Image.fromarray(a)
    im = im.resize((max(1, round(im.width * h / im.height)), h), Image.BILINEAR)
    if caption:
        d = ImageDraw.Draw(im)
        d.rectangle((0, 0, 6 * len(caption) + 4, 11), fill=(0, 0, 0))
        d.text((2, 0), caption, fill=(255, 255, 255))
    return im


def render_cam_grid(
    cams_dir: str | Path, data: str | Path, split: str, out_png: str | Path, n: int = 8, fmt: str = "auto"
) -> Path:
    """PNG grid of the first ``n`` images having labels and a CAM file: image | CAM per class | GT mask."""
    ds = open_dataset(data, split, fmt)
    cams_dir = Path(cams_dir)
    rows: list[list[Image.Image]] = []
    tile_h = 128
    for i, rec in enumerate(ds.records):
        if len(rows) >= n:
            break
        path = cams_dir / f"{rec.image_id}.npz"
        if not rec.labels or not path.is_file():
            continue
        z = load_npz(path)
        image = ds.load_image(i)
        tiles = [_tile(image, tile_h, rec.image_id)]
        for cam, c in zip(z["cams"], z["classes"], strict=True):
            tiles.append(_tile(cam_overlay(image, cam.astype(np.float32)), tile_h, ds.class_names[int(c)]))
        mask = ds.load_mask(i)
        if mask is not None:
            tiles.append(_tile(colorize(mask), tile_h, "ground truth"))
        rows.append(tiles)
    if not rows:
        raise FileNotFoundError(f"no CAM files in {cams_dir} for labelled images of split {split!r}")
    width = max(sum(t.width for t in r) for r in rows)
    canvas = Image.new("RGB", (width, tile_h * len(rows)), (255, 255, 255))
    for y, r in enumerate(rows):
        x = 0
        for t in r:
            canvas.paste(t, (x, y * tile_h))
            x += t.width
    return save_png(out_png, canvas)


def render_cam_grid_cmd(cfg: VizConfig) -> Path:
    """CLI entry of :func:`render_cam_grid`."""
    out = render_cam_grid(cfg.cams, cfg.data, cfg.split, cfg.out, cfg.n, cfg.fmt)
    log.info("CAM grid written to %s", out)
    return out
