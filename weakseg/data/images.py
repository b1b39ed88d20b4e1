"""Reading images and masks safely: every odd file either becomes a clean array or a clear error.

``load_rgb`` returns ``uint8 [H, W, 3]`` RGB with the EXIF orientation applied. Conversions:

- grayscale (``L``, ``1``), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, palette (``P``): converted to RGB;
- with transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent index): composited onto
  *white*, since transparent web images (product photos, icons) are meant to be seen on a light page;
- 16-bit grayscale (``I;16*``): divided by 257, so 65535 maps to 255 (the full 16-bit range; a
  per-image stretch would make brightness depend on content). 32-bit ``I`` values in 0..65535 are
  treated the same way; other ``I`` / ``F`` images are stretched from their min to their max
  (``F`` images already in 0..1 are multiplied by 255).

Zero-byte, truncated, corrupt and non-image files raise :class:`~weakseg.errors.DataError` naming the
file and the fix. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set: a truncated file is an error,
not a grey bottom half.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from weakseg.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
EXIF_ORIENTATION = 0x0112
_REEXPORT = "re-export the image as JPEG or PNG (or delete it and remove it from the split/label files)"
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # orientations that swap width and height


def display_path(path: str | os.PathLike) -> str:
    """The path as printable text, even when the file name is not valid UTF-8 (bytes shown as \\xNN)."""
    s = os.fspath(path)
    if isinstance(s, bytes):
        return s.decode("utf-8", "backslashreplace")
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8_name(path: str | os.PathLike) -> bool:
    """False when the file name holds bytes that are not UTF-8 (decoded by Python as surrogates)."""
    try:
        os.fspath(path).encode("utf-8")  # type: ignore[union-attr]
        return True
    except UnicodeEncodeError:
        return False


def _open(path: Path) -> Image.Image:
    """Open (lazily) with the common failure modes turned into DataError."""
    name = display_path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"image file not found: {name}; check the path or the split file that lists it") from None
    except OSError as e:
        raise DataError(f"cannot read {name}: {e}") from None
    if size == 0:
        raise DataError(f"{name} is empty (0 bytes); {_REEXPORT}")
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise DataError(f"{name} is not an image format PIL can read; {_REEXPORT}") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{name} is too large to decode safely ({e}); downscale it before use") from None
    except OSError as e:
        what = "truncated" if "truncat" in str(e).lower() else "corrupt"
        raise DataError(f"{name} is {what} ({e}); {_REEXPORT}") from None


def _decode(im: Image.Image, path: Path) -> Image.Image:
    """Force the full decode so truncated / corrupt data fails here, with the file named."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF / palettes; we handle those below
            im.load()
    except Image.DecompressionBombError as e:
        raise DataError(f"{display_path(path)} is too large to decode safely ({e}); downscale it") from None
    except (OSError, SyntaxError, ValueError) as e:
        what = "truncated" if "truncat" in str(e).lower() else "corrupt"
        raise DataError(f"{display_path(path)} is {what} ({e}); {_REEXPORT}") from None
    return im


def _exif_transpose(im: Image.Image, path: Path) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(im)
    except Exception as e:  # a broken EXIF block must not make an otherwise fine image unusable
        log.warning("ignoring unreadable EXIF orientation of %s: %s", display_path(path), e)
        return im
    return out if out is not None else im


def _to_uint8_gray(a: np.ndarray, mode: str) -> np.ndarray:
    if mode.startswith("I;16"):
        return (a.astype(np.float64) / 257.0).round().astype(np.uint8)
    if mode == "F" and a.size and a.min() >= 0.0 and a.max() <= 1.0:
        return (a * 255.0).round().astype(np.uint8)
    if mode == "I" and a.size and a.min() >= 0 and a.max() <= 65535:
        return (a.astype(np.float64) / 257.0).round().astype(np.uint8)
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return ((a - lo) * (255.0 / (hi - lo))).round().astype(np.uint8)


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """A decoded PIL image of any mode -> ``uint8 [H, W, 3]`` RGB (see module docstring)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode.startswith("I") or mode == "F":
        g = _to_uint8_gray(np.asarray(im), mode)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode == "P":
        im = im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)  # composite onto white
        return rgb.round().astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8 [H, W, 3]`` RGB with the EXIF orientation applied."""
    path = Path(path)
    with _open(path) as im:
        _decode(im, path)
        out = _exif_transpose(im, path)
        return to_rgb_array(out)


def load_mask(path: str | Path) -> np.ndarray:
    """Read a class-index mask (``P`` / ``L`` / ``1`` / 16-bit PNG) as ``uint8 [H, W]``.

    RGB(A) masks are refused: their colours are not class indices. 16-bit masks are accepted only
    when every value fits in 0..255.
    """
    path = Path(path)
    name = display_path(path)
    with _open(path) as im:
        _decode(im, path)
        mode = im.mode
        if mode in ("P", "L"):
            return np.asarray(im, dtype=np.uint8).copy()
        if mode == "1":
            return np.asarray(im, dtype=np.uint8).copy()  # 0/1
        if mode.startswith("I"):
            a = np.asarray(im)
            if a.size and (a.min() < 0 or a.max() > 255):
                raise DataError(
                    f"mask {name} is a {mode} (16/32-bit) image with values {a.min()}..{a.max()}; class-index "
                    "masks must hold values 0..255 (0 = background, c+1 = class c, 255 = ignore). "
                    "Re-save it as an 8-bit palette or grayscale PNG"
                )
            return a.astype(np.uint8)
        raise DataError(
            f"mask {name} has image mode {mode!r}; masks must be single-channel class-index PNGs (mode P or L, "
            "0 = background, c+1 = class c, 255 = ignore), not colour images. If it is a colour-coded mask, "
            "convert its colours to class indices and save with weakseg.data.palette.save_mask_png"
        )


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` as :func:`load_rgb` will return it (EXIF rotation applied), read from the header."""
    path = Path(path)
    with _open(path) as im:
        w, h = im.size
        try:
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        except Exception:
            orientation = 1
    return (h, w) if orientation in _TRANSPOSED_ORIENTATIONS else (w, h)


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`probe_image` learnt about a file (for ``weakseg data check``)."""

    path: Path
    format: str | None
    mode: str
    size: tuple[int, int]  # (width, height) after EXIF rotation
    orientation: int


_EXT_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".gif": "GIF",
}


def expected_format(path: str | Path) -> str | None:
    """The PIL format name a file extension promises (None for unknown extensions)."""
    return _EXT_FORMATS.get(Path(path).suffix.lower())


def probe_image(path: str | Path) -> ImageInfo:
    """Fully decode a file (raising DataError if it is unusable) and report its format and mode."""
    path = Path(path)
    with _open(path) as im:
        fmt = im.format
        _decode(im, path)
        try:
            orientation = int(im.getexif().get(EXIF_ORIENTATION, 1))
        except Exception:
            orientation = 1
        w, h = im.size
        if orientation in _TRANSPOSED_ORIENTATIONS:
            w, h = h, w
        return ImageInfo(path=path, format=fmt, mode=im.mode, size=(w, h), orientation=orientation)
