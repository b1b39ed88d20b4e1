"""The PASCAL VOC colour palette and mask <-> PNG conversion: the one place that knows it.

Masks are ``uint8 [H, W]`` (0 = background, ``c + 1`` = class ``c``, 255 = ignore) and are stored as
palette ("P" mode) PNGs, so the file holds class indices and still looks right in an image viewer.
Later stages (pseudo labels, the HTML report) import from here rather than keep their own palette.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from weakseg.data.dataset import IGNORE
from weakseg.data.images import load_mask
from weakseg.engine.artifacts import atomic_write_bytes


def voc_palette(n: int = 256) -> np.ndarray:
    """The VOC colour map ``uint8 [n, 3]`` (bit-interleaved; index 255 is (224, 224, 192))."""
    idx = np.arange(n)
    pal = np.zeros((n, 3), dtype=np.int64)
    c = idx.copy()
    for j in range(8):
        for ch in range(3):
            pal[:, ch] |= ((c >> ch) & 1) << (7 - j)
        c >>= 3
    return pal.astype(np.uint8)


PALETTE: np.ndarray = voc_palette()


def mask_to_png(mask: np.ndarray) -> Image.Image:
    """A ``uint8 [H, W]`` class-index mask as a palette ("P") PIL image with the VOC colours."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"mask values must lie in 0..255, got {mask.min()}..{mask.max()}")
        mask = mask.astype(np.uint8)
    h, w = mask.shape
    # frombytes keeps the raw indices; converting an "L" image to "P" would re-quantise them.
    im = Image.frombytes("P", (w, h), np.ascontiguousarray(mask).tobytes())
    im.putpalette(PALETTE.reshape(-1).tolist())
    return im


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """The PNG file content of :func:`mask_to_png` (deterministic: no timestamps are stored)."""
    buf = io.BytesIO()
    mask_to_png(mask).save(buf, format="PNG")
    return buf.getvalue()


def save_mask_png(path: str | Path, mask: np.ndarray) -> Path:
    """Write a mask as a palette PNG atomically."""
    return atomic_write_bytes(path, mask_png_bytes(mask))


def read_mask_png(path: str | Path) -> np.ndarray:
    """Read a class-index mask PNG (palette or grayscale) as ``uint8 [H, W]``."""
    return load_mask(path)


def colorize(mask: np.ndarray) -> np.ndarray:
    """``uint8 [H, W]`` mask -> ``uint8 [H, W, 3]`` VOC colours (255 = ignore in cream)."""
    return PALETTE[np.asarray(mask, dtype=np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the mask colours over an RGB image; background pixels (0) are left as they are."""
    image = np.asarray(image, dtype=np.float32)
    colours = colorize(mask).astype(np.float32)
    a = np.where(np.asarray(mask)[..., None] == 0, 0.0, alpha)
    a = np.where(np.asarray(mask)[..., None] == IGNORE, 0.8, a)
    return np.clip(image * (1 - a) + colours * a, 0, 255).astype(np.uint8)
