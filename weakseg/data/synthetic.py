"""A procedural WSSS benchmark: images whose difficulties are the ones that separate WSSS methods.

``generate(SynthConfig(out=...))`` writes a PASCAL-VOC-layout dataset that
:class:`weakseg.data.voc.VOCDataset` reads::

    <out>/JPEGImages/<id>.jpg              RGB, JPEG quality ``jpeg_quality``
    <out>/SegmentationClass/<id>.png       palette PNG: 0 bg, c+1 class c, 255 = ignore band on boundaries
    <out>/SegmentationPart/<id>.png        c+1 on the visible discriminative part of class c (analysis only)
    <out>/ImageSets/Segmentation/{train,val}.txt
    <out>/cls_labels.csv, classes.txt      image-level labels (class names) and the 10 class names
    <out>/extra_single/...                 same layout, split ``train``: exactly one object per image
    <out>/extra_web/...                    same layout, split ``train``: noisy "web search" labels,
                                           plus ``true_labels.csv`` (what the masks really show)
    <out>/samples.png                      a grid of images with their masks
    <out>/synth.json                       the resolved config; written last (the completion marker)

Same seed -> byte-identical files (every image draws from its own ``numpy.random.Generator`` seeded
by ``(seed, set, index)``, so the worker count does not change the output).

What each image is made of, and the knob that controls each WSSS difficulty
---------------------------------------------------------------------------
*Classes.* 10 classes (``CLASS_NAMES``), each with its own shape, a body texture and a
**discriminative part**: a small, bright, class-coloured spot at a fixed place on the object
(``part_area`` of its area, ~7 %). Body textures come in 5 families shared by classes ``k`` and
``k + 5`` (stripes, dots, checker, blotches, rings); ``body_cue`` (0..1) sets how far the two classes
of a family differ (stripe period/angle, colours) relative to per-object jitter. With the default
0.25 the body is only weakly discriminative, so a classifier leans on the part and shape, and its CAM
covers the part and little else: the *partial activation* problem that MCIS-style cross-image
mining is meant to fix. Distractor blobs (``clutter``, mean count) reuse class body textures
without a part, so "texture = class" is also wrong on the background.

*Context.* Each class has its own background (tinted, patterned); an image is drawn on the
background of its first object's class with probability ``context_rate`` (0.3) and on a random one
(class or neutral) otherwise. CAMs trained on these labels leak into the background.

*Co-occurrence.* ``pairs`` ((0,1), (2,3), (4,5)): when an image's first class is in a pair, its partner
is added with probability ``pair_rate`` (0.5). CAMs of one class leak into its partner.

*Scale, count, occlusion.* 1..``max_objects`` objects (weights 1, .6, .36, .22), radius
log-uniform over ``[scale_min, scale_min * scale_ratio]`` of the short side (x4 by default),
random rotation, placed so that no earlier object loses more than ``max_occlusion`` of its area;
later objects are drawn on top and the mask shows what is visible. Objects may be cut by the image
border (at most 40 % outside).

*Labels.* A class is labelled when at least ``min_visible`` of its pixels remain after occlusion and
after the ignore band; a class with fewer pixels has them set to 255, so the label set always equals
the classes in the mask. Every main-set image has at least one object. ``ignore_band`` px on each
side of every object boundary are 255, as in VOC.

*Extra sets.* ``extra_single`` (``n_single`` images): one object per image, same generator.
``extra_web`` (``n_web`` images): each image is labelled with one query class; with probability
``web_wrong_rate`` the image does not contain it (1-2 objects of other classes instead), and otherwise
with probability ``web_missing_rate`` it also contains 1-2 unlisted objects of other classes. Its
appearance is shifted by ``web_shift`` (0..1): colour cast, gamma, saturation, Gaussian blur and a
lower JPEG quality (35..75 at full shift).

*More classes (few-shot folds).* ``n_classes`` (10 by default; 10..30) adds classes beyond the ten: class
``k >= 10`` has the shape of class ``k % 10`` but a pale (``k < 20``) or dark (``k >= 20``) part colour at
another place on the object and a body texture of another family (``class_names(n)`` gives their names, e.g.
"pale disc", "dark star"). With 20 classes, 4 folds of 5 held-out classes exist as in PASCAL-5i
(:mod:`weakseg.data.episodes`). With the default 10 every file is byte-identical to what the generator wrote
before the option existed (``n_classes`` is then left out of ``synth.json``; a test hashes a tiny preset).

Presets (``size``): ``tiny`` (64 train / 24 val, 96-112 px, for tests), ``small`` (600 / 150,
112-128 px, the CPU demo), ``default`` (2,000 / 300, 128-160 px), ``large`` (10,000 / 1,500,
192-256 px). Any count or side left as ``None`` comes from the preset.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from weakseg.data.dataset import IGNORE
from weakseg.data.labels import CLASSES_TXT, CLS_LABELS, write_classes, write_cls_labels
from weakseg.data.palette import mask_png_bytes, overlay
from weakseg.data.registry import open_dataset
from weakseg.engine.artifacts import atomic_write_bytes, load_json, save_json
from weakseg.errors import ConfigError, DataError, unknown_name

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = (
    "disc",
    "triangle",
    "ring",
    "cross",
    "star",
    "square",
    "ellipse",
    "arrow",
    "crescent",
    "hexagon",
)
K = len(CLASS_NAMES)
N_NEUTRAL_BG = 4  # backgrounds tied to no class
MAX_CLASSES = 3 * K  # base classes, then a pale and a dark variant of each shape
VARIANT_NAMES = ("", "pale ", "dark ")


def class_names(n_classes: int = K) -> tuple[str, ...]:
    """Names of the first ``n_classes`` classes: the ten shapes, then "pale <shape>", then "dark <shape>"."""
    return tuple(VARIANT_NAMES[k // K] + CLASS_NAMES[k % K] for k in range(n_classes))


PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(n_train=64, n_val=24, n_single=32, n_web=32, min_side=96, max_side=112),
    "small": dict(n_train=600, n_val=150, n_single=300, n_web=300, min_side=112, max_side=128),
    "default": dict(n_train=2000, n_val=300, n_single=1000, n_web=1000, min_side=128, max_side=160),
    "large": dict(n_train=10000, n_val=1500, n_single=5000, n_web=5000, min_side=192, max_side=256),
}
SETS = {"train": 0, "val": 1, "single": 2, "web": 3}  # seed stream of each set


@dataclass(frozen=True)
class SynthConfig:
    """Configuration of :func:`generate` (see the module docstring for what each knob tests)."""

    out: Path
    """Folder to write the dataset into (created; an existing synthetic dataset there is replaced)."""
    seed: int = 0
    """Random seed; the same seed gives byte-identical files."""
    size: str = "default"
    """Preset for the counts and image sides: tiny, small, default, large."""
    n_train: int | None = None
    """Images in the train split (None = from the preset)."""
    n_val: int | None = None
    """Images in the val split (None = from the preset)."""
    n_single: int | None = None
    """Images in ``extra_single`` (one object each); 0 skips the set."""
    n_web: int | None = None
    """Images in ``extra_web`` (noisy query labels); 0 skips the set."""
    min_side: int | None = None
    """Smallest image side in pixels (None = from the preset)."""
    max_side: int | None = None
    """Image height and width are drawn independently from ``[min_side, max_side]`` pixels."""
    max_objects: int = 4
    """Most objects per image (1..8; fewer are more likely)."""
    scale_min: float = 0.12
    """Smallest object radius as a fraction of the image's short side (0.12: objects big enough for
    stride-16 CAMs at 128 px to see; 0.1 made seeds mostly a resolution problem)."""
    scale_ratio: float = 4.0
    """Largest / smallest object radius."""
    max_occlusion: float = 0.5
    """Largest fraction of an object's area that objects drawn later may cover."""
    context_rate: float = 0.3
    """Probability that the background is the one tied to the first object's class (at 0.6 a CPU-sized
    classifier learned the backgrounds rather than the objects: seed mIoU 24.9% vs 30.3% at 0.3)."""
    pairs: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (4, 5))
    pair_rate: float = 0.5
    """Probability that a paired class brings its partner along."""
    part_area: float = 0.07
    """Area of the discriminative part as a fraction of its object's area."""
    part_rate: float = 1.0
    """Probability that an object shows its discriminative part."""
    body_cue: float = 0.25
    """How much the two classes sharing a body texture differ (0 = identical, 1 = clearly)."""
    clutter: float = 1.5
    """Mean number of distractor blobs per image (Poisson)."""
    min_visible: int = 24
    """Pixels a class needs (after occlusion and ignore band) to be labelled; fewer become 255."""
    ignore_band: int = 1
    """Ignore (255) pixels on each side of every object boundary; 0 for none."""
    noise_std: float = 4.0
    """Standard deviation of the per-pixel Gaussian noise (0..255 scale)."""
    jpeg_quality: int = 90
    """JPEG quality of the main and single-label sets."""
    web_wrong_rate: float = 0.2
    """extra_web: probability that the image does not show its listed (query) class."""
    web_missing_rate: float = 0.3
    """extra_web: probability that an image showing its query class also shows unlisted classes."""
    web_shift: float = 1.0
    """extra_web: strength of the appearance shift (colour cast, gamma, blur, lower JPEG quality); 0 = none."""
    save_parts: bool = True
    """Write ``SegmentationPart/`` masks of the visible discriminative parts."""
    n_classes: int = K
    """Number of classes (10..30): beyond 10, shape × part colour/place × texture variants (few-shot folds)."""

    def resolved(self) -> SynthConfig:
        """The config with preset values filled in, validated."""
        if self.size not in PRESETS:
            raise unknown_name("synthetic size preset", self.size, PRESETS)
        preset = PRESETS[self.size]
        filled = {k: (v if getattr(self, k) is None else getattr(self, k)) for k, v in preset.items()}
        cfg = replace(self, out=Path(self.out), **filled)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"SynthConfig: {msg}")

        for name in ("n_train", "n_val", "n_single", "n_web"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.n_train + self.n_val == 0:
            raise bad("n_train and n_val are both 0; nothing to generate")
        if not 48 <= self.min_side <= self.max_side:
            raise bad(f"need 48 <= min_side <= max_side, got {self.min_side}, {self.max_side}")
        for name in (
            "max_occlusion",
            "context_rate",
            "pair_rate",
            "part_rate",
            "body_cue",
            "web_wrong_rate",
            "web_missing_rate",
            "web_shift",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise bad(f"{name} must lie in [0, 1], got {v}")
        if not 0.0 < self.part_area < 0.5:
            raise bad(f"part_area must lie in (0, 0.5), got {self.part_area}")
        if not 1 <= self.max_objects <= 8:
            raise bad(f"max_objects must lie in 1..8, got {self.max_objects}")
        if not (0.02 <= self.scale_min and self.scale_ratio >= 1.0 and self.scale_min * self.scale_ratio <= 0.5):
            raise bad("need scale_min >= 0.02, scale_ratio >= 1 and scale_min * scale_ratio <= 0.5")
        if not 1 <= self.jpeg_quality <= 100:
            raise bad(f"jpeg_quality must lie in 1..100, got {self.jpeg_quality}")
        if self.clutter < 0 or self.noise_std < 0 or self.min_visible < 1 or not 0 <= self.ignore_band <= 4:
            raise bad("need clutter >= 0, noise_std >= 0, min_visible >= 1 and 0 <= ignore_band <= 4")
        if not K <= self.n_classes <= MAX_CLASSES:
            raise bad(f"n_classes must lie in {K}..{MAX_CLASSES}, got {self.n_classes}")
        nc = self.n_classes
        for a, b in self.pairs:
            if not (0 <= a < nc and 0 <= b < nc and a != b):
                raise bad(f"pair ({a}, {b}) must name two different classes in 0..{nc - 1}")


# ---------------------------------------------------------------------------- shapes
# Each shape is an implicit function of object-frame coordinates (u, v), in units of the object
# radius R, returning the inside mask; PARTS gives where the discriminative part sits on it.


def _polar(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.hypot(u, v), np.arctan2(v, u)


def _ngon(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    r, th = _polar(u, v)
    sector = 2 * math.pi / n
    return r * np.cos(np.mod(th, sector) - sector / 2) <= math.cos(math.pi / n)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r, th = _polar(u, v)
    t = np.abs(np.mod(th * 5 / (2 * math.pi), 1.0) - 0.5) * 2  # 1 at the tips, 0 between them
    return r <= 0.42 + 0.58 * t**1.5


def _arrow(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    shaft = (u >= -1) & (u <= 0.15) & (np.abs(v) <= 0.22)
    head = (u >= 0.15) & (u <= 1) & (np.abs(v) <= 0.62 * (1 - u) / 0.85)
    return shaft | head


SHAPES = {
    "disc": lambda u, v: u * u + v * v <= 1.0,
    "triangle": lambda u, v: _ngon(u, v, 3),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55**2),
    "cross": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1)),
    "star": _star,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    "ellipse": lambda u, v: u * u + (v / 0.55) ** 2 <= 1.0,
    "arrow": _arrow,
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.8**2),
    "hexagon": lambda u, v: _ngon(u, v, 6),
}
PARTS = {  # part centre in object-frame units, inside the shape
    "disc": (0.5, 0.0),
    "triangle": (0.4, 0.0),
    "ring": (0.0, 0.775),
    "cross": (0.7, 0.0),
    "star": (0.0, 0.0),
    "square": (0.5, 0.5),
    "ellipse": (-0.6, 0.0),
    "arrow": (0.5, 0.0),
    "crescent": (-0.68, 0.0),
    "hexagon": (0.0, 0.0),
}


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255


# Bright, saturated, one hue per class: the discriminative part.
PART_COLOURS = np.stack([_hsv(k / K, 1.0, 1.0) for k in range(K)])
# Muted colour pairs of the 5 body-texture families (shared by classes k and k + 5).
FAMILY_COLOURS = np.array(
    [
        [(170, 140, 100), (95, 80, 70)],  # stripes
        [(120, 140, 165), (60, 70, 95)],  # dots
        [(150, 150, 115), (90, 100, 80)],  # checker
        [(160, 120, 135), (95, 70, 85)],  # blotches
        [(120, 160, 140), (70, 95, 85)],  # rings
    ],
    dtype=np.float32,
)
FAMILY_PERIOD = np.array([7.0, 8.0, 9.0, 8.0, 7.0], dtype=np.float32)  # texture period in pixels
FAMILY_ANGLE = np.array([0.6, 0.0, 0.3, 0.0, 0.0], dtype=np.float32)  # texture angle in the object frame
# Background of class k: hue next to the class's part hue, low saturation, its own pattern.
BG_COLOURS = np.stack(
    [np.stack([_hsv(k / K + 0.05, 0.35, 0.78), _hsv(k / K + 0.05, 0.45, 0.5)]) for k in range(K)]
    + [np.stack([_hsv(0.1 * i, 0.06, 0.75), _hsv(0.1 * i, 0.08, 0.45)]) for i in range(N_NEUTRAL_BG)]
)
# Classes beyond the ten (``n_classes > 10``): variant v = k // 10 of shape k % 10 has its part elsewhere
# (object-frame units, inside the shape), a pale (v = 1) or dark (v = 2) part colour and a shifted texture family.
PARTS_VARIANT = {
    "disc": ((-0.5, 0.0), (0.0, 0.5)),
    "triangle": ((-0.4, 0.0), (0.0, 0.4)),
    "ring": ((0.0, -0.775), (-0.775, 0.0)),
    "cross": ((-0.7, 0.0), (0.0, 0.7)),
    "star": ((0.3, 0.0), (-0.3, 0.0)),
    "square": ((-0.5, -0.5), (-0.5, 0.5)),
    "ellipse": ((0.6, 0.0), (0.0, 0.0)),
    "arrow": ((-0.5, 0.0), (-0.85, 0.0)),
    "crescent": ((-0.6, 0.5), (-0.6, -0.5)),
    "hexagon": ((0.4, 0.0), (0.0, 0.4)),
}


def _part_colour(k: int) -> np.ndarray:
    if k < K:
        return PART_COLOURS[k]
    hue = (k % K) / K + 0.05
    return _hsv(hue, 0.5, 1.0) if k < 2 * K else _hsv(hue, 1.0, 0.55)


def _part_place(k: int) -> tuple[float, float]:
    name = CLASS_NAMES[k % K]
    return PARTS[name] if k < K else PARTS_VARIANT[name][k // K - 1]


def _bg_colours(n_classes: int) -> np.ndarray:
    """Background colour pairs: one per class (its context background), then the neutral ones."""
    if n_classes == K:
        return BG_COLOURS
    extra = [
        np.stack([_hsv(k / K + 0.05 + 0.03 * (k // K), 0.3, 0.85 - 0.1 * (k // K)), _hsv(k / K + 0.1, 0.5, 0.45)])
        for k in range(K, n_classes)
    ]
    return np.concatenate([BG_COLOURS[:K], np.stack(extra), BG_COLOURS[K:]])


# ---------------------------------------------------------------------------- textures


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise ``float32 [h, w]`` in 0..1 with blobs about ``cell`` pixels across."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.random((gh, gw), dtype=np.float32)
    up = Image.fromarray(grid).resize((int(gw * cell), int(gh * cell)), Image.BILINEAR)
    return np.asarray(up, dtype=np.float32)[:h, :w]


def _pattern(family: int, x: np.ndarray, y: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Texture field ``float32`` in 0..1 on pixel-unit coordinates (x, y) of the texture frame."""
    ph = rng.random(2, dtype=np.float32)
    if family == 0:  # stripes
        return np.clip(0.5 + 2.0 * np.sin(2 * math.pi * (x / period + ph[0])), 0, 1)
    if family == 1:  # dots
        dx = np.mod(x / period + ph[0], 1.0) - 0.5
        dy = np.mod(y / period + ph[1], 1.0) - 0.5
        return (dx * dx + dy * dy < 0.09).astype(np.float32)
    if family == 2:  # checker
        return (np.mod(np.floor(x / period + ph[0]) + np.floor(y / period + ph[1]), 2) > 0).astype(np.float32)
    if family == 3:  # blotches
        n = _smooth_noise(rng, x.shape[0], x.shape[1], period * 0.7)
        return np.clip((n - 0.5) * 4 + 0.5, 0, 1)
    # concentric rings
    return np.clip(0.5 + 2.0 * np.sin(2 * math.pi * (np.hypot(x, y) / period + ph[0])), 0, 1)


def _body(
    k: int, x: np.ndarray, y: np.ndarray, R: float, rng: np.random.Generator, cue: float, as_class: bool = True
) -> np.ndarray:
    """Body colours ``float32 [h, w, 3]`` of class ``k`` at object-frame pixel coordinates (x, y)."""
    fam = (k % 5 + 2 * (k // K)) % 5  # classes beyond the ten take another texture family than their shape's
    second = 1.0 if (k % K >= 5 and as_class) else 0.0
    angle = FAMILY_ANGLE[fam] + second * cue * 0.8 + rng.uniform(-0.2, 0.2)
    period = FAMILY_PERIOD[fam] * (1 + 0.5 * cue * second) * rng.uniform(0.85, 1.15)
    ca, sa = math.cos(angle), math.sin(angle)
    tx, ty = x * ca + y * sa, -x * sa + y * ca
    t = _pattern(fam, tx, ty, period, rng)[..., None]
    cols = FAMILY_COLOURS[fam] + second * cue * np.array([45, -35, 25], dtype=np.float32)
    cols = cols * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20, size=3).astype(np.float32)
    g = rng.uniform(-0.15, 0.15, size=2)
    shade = 1.0 + (g[0] * x + g[1] * y) / R  # a soft light gradient across the object
    return (cols[0] * t + cols[1] * (1 - t)) * shade[..., None]


def _background(bg: int, h: int, w: int, rng: np.random.Generator, n_classes: int = K) -> np.ndarray:
    cols = _bg_colours(n_classes)[bg] + rng.uniform(-15, 15, size=(1, 3)).astype(np.float32)
    style = bg % 3 if bg < n_classes else 0
    if style == 0:  # soft blotches
        t = _smooth_noise(rng, h, w, 10 + 3 * (bg % 4))
    elif style == 1:  # waves
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = 0.5 + 0.5 * np.sin(yy / 3.0 + 1.5 * np.sin(xx / 9.0 + rng.uniform(0, 6)))
    else:  # grain on a slow gradient
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = 0.7 * (xx / w) * rng.uniform(0.3, 1) + 0.3 * _smooth_noise(rng, h, w, 3)
    t = t[..., None]
    return cols[0] * t + cols[1] * (1 - t)


# ---------------------------------------------------------------------------- scenes


@dataclass
class Scene:
    """One rendered sample: image ``uint8 [H, W, 3]``, mask ``uint8 [H, W]``, part mask (c+1 on parts).

    ``bg`` is the background used: ``k < 10`` is the context background of class ``k``, larger is neutral.
    """

    image: np.ndarray
    mask: np.ndarray
    parts: np.ndarray
    labels: tuple[int, ...]
    bg: int


def _grid(cx: float, cy: float, R: float, theta: float, x0: int, x1: int, y0: int, y1: int):
    """Object-frame coordinates in pixels (x, y) of the pixel box [y0:y1, x0:x1]."""
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5 - cy
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5 - cx
    X, Y = np.meshgrid(xs, ys)
    c, s = math.cos(theta), math.sin(theta)
    return X * c + Y * s, -X * s + Y * c


class _Canvas:
    def __init__(self, cfg: SynthConfig, rng: np.random.Generator, h: int, w: int, bg: int):
        self.cfg, self.rng, self.h, self.w = cfg, rng, h, w
        self.img = _background(bg, h, w, rng, cfg.n_classes)
        self.inst = np.full((h, w), -1, dtype=np.int16)
        self.parts = np.zeros((h, w), dtype=np.uint8)
        self.obj_cls: list[int] = []
        self.full: list[int] = []
        self.vis: list[int] = []
        short = min(h, w)
        self.rmin, self.rmax = cfg.scale_min * short, cfg.scale_min * cfg.scale_ratio * short

    def _radius(self) -> float:
        return float(math.exp(self.rng.uniform(math.log(self.rmin), math.log(self.rmax))))

    def distractor(self) -> None:
        rng = self.rng
        R = 0.85 * self._radius()
        cx, cy = rng.uniform(0, self.w), rng.uniform(0, self.h)
        theta, stretch = rng.uniform(0, 2 * math.pi), rng.uniform(1.0, 1.6)
        p1, p2 = rng.uniform(0, 2 * math.pi, size=2)
        x0, x1 = max(0, int(cx - 1.4 * R * stretch)), min(self.w, int(cx + 1.4 * R * stretch) + 1)
        y0, y1 = max(0, int(cy - 1.4 * R * stretch)), min(self.h, int(cy + 1.4 * R * stretch) + 1)
        if x1 <= x0 or y1 <= y0:
            return
        x, y = _grid(cx, cy, R, theta, x0, x1, y0, y1)
        r, th = _polar(x / (R * stretch), y / R)
        inside = r <= 1 + 0.25 * np.sin(3 * th + p1) + 0.12 * np.sin(5 * th + p2)
        if rng.random() < 0.5:  # a class body texture without its part: texture alone is not the class
            body = _body(int(rng.integers(self.cfg.n_classes)), x, y, R, rng, self.cfg.body_cue)
        else:
            fam = int(rng.integers(5))
            t = _pattern(fam, x, y, float(rng.uniform(5, 12)), rng)[..., None]
            cols = rng.uniform(40, 200, size=(2, 3)).astype(np.float32)
            body = cols[0] * t + cols[1] * (1 - t)
        box = self.img[y0:y1, x0:x1]
        box[inside] = body[inside]

    def place(self, k: int, tries: int = 12) -> bool:
        """Draw an object of class ``k`` on top, if a placement respecting ``max_occlusion`` is found."""
        rng, cfg = self.rng, self.cfg
        name = CLASS_NAMES[k % K]
        for _ in range(tries):
            R = self._radius()
            cx = rng.uniform(0.3 * R, self.w - 0.3 * R)
            cy = rng.uniform(0.3 * R, self.h - 0.3 * R)
            theta = rng.uniform(0, 2 * math.pi)
            bx0, bx1 = int(math.floor(cx - 1.05 * R)), int(math.ceil(cx + 1.05 * R)) + 1
            by0, by1 = int(math.floor(cy - 1.05 * R)), int(math.ceil(cy + 1.05 * R)) + 1
            x, y = _grid(cx, cy, R, theta, bx0, bx1, by0, by1)
            shape = SHAPES[name](x / R, y / R)
            full = int(shape.sum())
            x0, x1, y0, y1 = max(bx0, 0), min(bx1, self.w), max(by0, 0), min(by1, self.h)
            if full == 0 or x1 <= x0 or y1 <= y0:
                continue
            sl = (slice(y0 - by0, y1 - by0), slice(x0 - bx0, x1 - bx0))
            inside = shape[sl]
            if inside.sum() < 0.6 * full:
                continue
            under = self.inst[y0:y1, x0:x1][inside]
            covered = np.bincount(under[under >= 0], minlength=len(self.obj_cls))
            if any(v - c < (1 - cfg.max_occlusion) * f for v, c, f in zip(self.vis, covered, self.full, strict=False)):
                continue
            x, y = x[sl], y[sl]
            body = _body(k, x, y, R, rng, cfg.body_cue)
            box = self.img[y0:y1, x0:x1]
            box[inside] = body[inside]
            pbox = self.parts[y0:y1, x0:x1]
            pbox[inside] = 0
            if rng.random() < cfg.part_rate:
                px, py = _part_place(k)
                rho = math.sqrt(cfg.part_area * full / math.pi)  # pixels
                part = inside & ((x - px * R) ** 2 + (y - py * R) ** 2 <= rho * rho)
                colour = _part_colour(k) * rng.uniform(0.9, 1.0) + rng.uniform(-12, 12, size=3)
                box[part] = colour.astype(np.float32)
                pbox[part] = k + 1
            j = len(self.obj_cls)
            self.vis = [v - int(c) for v, c in zip(self.vis, covered, strict=False)]
            self.inst[y0:y1, x0:x1][inside] = j
            self.obj_cls.append(k)
            self.full.append(full)
            self.vis.append(int(inside.sum()))
            return True
        return False

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
        """Mask with the ignore band and min-visible rule applied; image with lighting and noise."""
        cfg, rng = self.cfg, self.rng
        lut = np.array([c + 1 for c in self.obj_cls] + [0], dtype=np.uint8)
        cls_map = lut[self.inst]  # index -1 -> last entry -> background
        mask = cls_map.copy()
        if cfg.ignore_band > 0:
            edge = np.zeros(cls_map.shape, dtype=bool)
            d = cls_map[1:, :] != cls_map[:-1, :]
            edge[1:, :] |= d
            edge[:-1, :] |= d
            d = cls_map[:, 1:] != cls_map[:, :-1]
            edge[:, 1:] |= d
            edge[:, :-1] |= d
            for _ in range(cfg.ignore_band - 1):
                grown = edge.copy()
                grown[1:, :] |= edge[:-1, :]
                grown[:-1, :] |= edge[1:, :]
                grown[:, 1:] |= edge[:, :-1]
                grown[:, :-1] |= edge[:, 1:]
                edge = grown
            mask[edge] = IGNORE
        counts = np.bincount(mask.ravel(), minlength=256)
        labels = []
        for c in range(cfg.n_classes):
            n = counts[c + 1]
            if 0 < n < cfg.min_visible:
                mask[mask == c + 1] = IGNORE
            elif n >= cfg.min_visible:
                labels.append(c)
        parts = np.where(np.isin(self.parts, [c + 1 for c in labels]), self.parts, 0).astype(np.uint8)
        img = self.img * np.float32(rng.uniform(0.85, 1.15)) + np.float32(rng.uniform(-12, 12))
        if cfg.noise_std > 0:
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(cfg.noise_std)
        return np.clip(img, 0, 255).round().astype(np.uint8), mask, parts, tuple(labels)


_COUNT_WEIGHTS = np.array([0.6**i for i in range(8)])


def make_scene(cfg: SynthConfig, rng: np.random.Generator, kind: str = "main") -> tuple[Scene, int]:
    """Render one sample. ``kind``: 'main' (train/val), 'single' or 'web'.

    Returns the scene and, for 'web', the query class (the image's only listed label); else -1.
    """
    h, w = (int(v) for v in rng.integers(cfg.min_side, cfg.max_side + 1, size=2))
    nc = cfg.n_classes
    partner = {a: b for a, b in cfg.pairs} | {b: a for a, b in cfg.pairs}
    for _attempt in range(50):
        query = -1
        if kind == "main":
            p = _COUNT_WEIGHTS[: cfg.max_objects] / _COUNT_WEIGHTS[: cfg.max_objects].sum()
            n = int(rng.choice(np.arange(1, cfg.max_objects + 1), p=p))
            classes = [int(rng.integers(nc))]
            if classes[0] in partner and rng.random() < cfg.pair_rate:
                classes.append(partner[classes[0]])
            while len(classes) < n:
                classes.append(int(rng.integers(nc)))
            need = {classes[0]}
        elif kind == "single":
            classes = [int(rng.integers(nc))]
            need = set(classes)
        elif kind == "web":
            query = int(rng.integers(nc))
            others = [c for c in range(nc) if c != query]
            if rng.random() < cfg.web_wrong_rate:
                classes = [int(c) for c in rng.choice(others, size=int(rng.integers(1, 3)), replace=False)]
                need = {classes[0]}
            else:
                classes = [query]
                if rng.random() < cfg.web_missing_rate:
                    classes += [int(c) for c in rng.choice(others, size=int(rng.integers(1, 3)), replace=False)]
                need = set(classes)
        else:
            raise ValueError(f"unknown scene kind {kind!r}")
        bg = classes[0] if rng.random() < cfg.context_rate else int(rng.integers(nc + N_NEUTRAL_BG))
        canvas = _Canvas(cfg, rng, h, w, bg)
        for _ in range(int(rng.poisson(cfg.clutter))):
            canvas.distractor()
        if kind == "main":
            order = [classes[i] for i in rng.permutation(len(classes))]
        else:  # the listed (or first) object is drawn first; the others may partly cover it
            order = [classes[0]] + [classes[1:][i] for i in rng.permutation(len(classes) - 1)]
        for c in order:
            canvas.place(c)
        image, mask, parts, labels = canvas.finish()
        if need <= set(labels):
            return Scene(image, mask, parts, labels, bg), query
    raise ConfigError(
        f"could not render a valid {kind!r} scene in 50 attempts: min_visible={cfg.min_visible} px is too large "
        f"for objects of radius {cfg.scale_min:.2f}..{cfg.scale_min * cfg.scale_ratio:.2f} x {cfg.min_side} px; "
        "lower min_visible or raise scale_min / min_side"
    )


def _web_shift(image: np.ndarray, rng: np.random.Generator, s: float) -> tuple[Image.Image, int]:
    """Shifted appearance of the web set: colour cast, gamma, saturation, blur; and its JPEG quality."""
    x = image.astype(np.float32) / 255.0
    x = x * rng.uniform(1 - 0.25 * s, 1 + 0.25 * s, size=3).astype(np.float32)
    x = np.clip(x, 0, 1) ** rng.uniform(1 - 0.35 * s, 1 + 0.5 * s)
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * rng.uniform(1 - 0.5 * s, 1 + 0.3 * s)
    im = Image.fromarray(np.clip(x * 255, 0, 255).round().astype(np.uint8))
    radius = rng.uniform(0.3, 1.5) * s
    if radius > 0.05:
        im = im.filter(ImageFilter.GaussianBlur(radius))
    quality = int(round(90 - s * (90 - rng.uniform(35, 75))))
    return im, quality


# ---------------------------------------------------------------------------- writing


def _jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)  # libjpeg output is deterministic for fixed settings
    return buf.getvalue()


def _render_chunk(args: tuple[dict, str, str, list[int]]) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """Worker: render and write images ``idx`` of one set; returns (id, listed labels, true labels)."""
    cfg_dict, set_name, folder, idx = args
    cfg = SynthConfig(**{**cfg_dict, "out": Path(cfg_dict["out"])})
    folder = Path(folder)
    kind = {"train": "main", "val": "main"}.get(set_name, set_name)
    out = []
    for i in idx:
        rng = np.random.default_rng([cfg.seed, SETS[set_name], i])
        scene, query = make_scene(cfg, rng, kind)
        image_id = f"{set_name}_{i:05d}"
        if kind == "web":
            im, quality = _web_shift(scene.image, rng, cfg.web_shift)
            listed = (query,)
        else:
            im, quality = Image.fromarray(scene.image), cfg.jpeg_quality
            listed = scene.labels
        (folder / "JPEGImages" / f"{image_id}.jpg").write_bytes(_jpeg(im, quality))
        (folder / "SegmentationClass" / f"{image_id}.png").write_bytes(mask_png_bytes(scene.mask))
        if cfg.save_parts and kind == "main":
            (folder / "SegmentationPart" / f"{image_id}.png").write_bytes(mask_png_bytes(scene.parts))
        out.append((image_id, listed, scene.labels))
    return out


_MARKER = ".weakseg-synth"  # written first: the folder is ours even if a run was interrupted
_OUR_DIRS = ("JPEGImages", "SegmentationClass", "SegmentationPart", "ImageSets", "extra_single", "extra_web")


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not ((out / "synth.json").exists() or (out / _MARKER).exists()):
            raise DataError(
                f"{out} exists, is not empty and holds no synth.json, so it is not a synthetic dataset written "
                "by weakseg; choose an empty or new folder for the output"
            )
        if (out / "synth.json").exists():
            (out / "synth.json").unlink()  # the dataset is incomplete until it is written again
        for d in _OUR_DIRS:
            if (out / d).is_dir():
                shutil.rmtree(out / d)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("written by weakseg.data.synthetic.generate\n")


def _run_set(cfg: SynthConfig, set_name: str, folder: Path, n: int, pool: ProcessPoolExecutor | None):
    for d in ("JPEGImages", "SegmentationClass") + (("SegmentationPart",) if set_name in ("train", "val") else ()):
        if d != "SegmentationPart" or cfg.save_parts:
            (folder / d).mkdir(parents=True, exist_ok=True)
    cfg_dict = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    cfg_dict["out"] = str(cfg.out)
    chunk = 64
    jobs = [(cfg_dict, set_name, str(folder), list(range(s, min(n, s + chunk)))) for s in range(0, n, chunk)]
    results = pool.map(_render_chunk, jobs) if pool is not None else map(_render_chunk, jobs)
    return [r for part in results for r in part]


def _meta(cfg: SynthConfig) -> dict:
    meta = {k: v for k, v in asdict(cfg).items() if k != "out"}  # no path: same seed -> same bytes
    if cfg.n_classes == K:  # the default: synth.json stays byte-identical to the one written before the option
        del meta["n_classes"]
    meta |= {"class_names": list(class_names(cfg.n_classes)), "format": "voc", "generator": "weakseg.data.synthetic"}
    return json.loads(json.dumps(meta))  # tuples -> lists, as read back from synth.json


def generate(cfg: SynthConfig, workers: int | None = None, overwrite: bool = False) -> Path:
    """Write the synthetic benchmark described by ``cfg`` (see module docstring); returns its root.

    A complete dataset with the same config already in ``cfg.out`` is kept as it is (same seed, same
    bytes) unless ``overwrite``. ``workers``: processes used for rendering (default: CPU count, at most
    8; 1 = in this process); the output does not depend on it.
    """
    cfg = cfg.resolved()
    out = cfg.out
    if not overwrite and (out / "synth.json").is_file():
        try:
            same = load_json(out / "synth.json") == _meta(cfg)
        except ValueError:
            same = False
        if same:
            log.info("synthetic dataset in %s is complete and has the same config; kept", out)
            return out
    _prepare_out(out)
    total = cfg.n_train + cfg.n_val + cfg.n_single + cfg.n_web
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    workers = 1 if total < 400 else max(1, workers)
    log.info("generating synthetic dataset (%d images, %d worker(s)) into %s", total, workers, out)
    pool = None
    if workers > 1:
        import multiprocessing as mp

        # spawn: the caller may hold threads (torch) that make fork unsafe
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    try:
        main = {s: _run_set(cfg, s, out, n, pool) for s, n in (("train", cfg.n_train), ("val", cfg.n_val))}
        extras = {}
        if cfg.n_single:
            extras["single"] = _run_set(cfg, "single", out / "extra_single", cfg.n_single, pool)
        if cfg.n_web:
            extras["web"] = _run_set(cfg, "web", out / "extra_web", cfg.n_web, pool)
    finally:
        if pool is not None:
            pool.shutdown()

    def write_meta(folder: Path, splits: dict[str, list]) -> None:
        for split, rows in splits.items():
            text = "".join(f"{r[0]}\n" for r in rows)
            atomic_write_bytes(folder / "ImageSets" / "Segmentation" / f"{split}.txt", text.encode())
        names = class_names(cfg.n_classes)
        write_cls_labels(folder / CLS_LABELS, {r[0]: r[1] for rows in splits.values() for r in rows}, names)
        write_classes(folder / CLASSES_TXT, names)

    write_meta(out, main)
    if "single" in extras:
        write_meta(out / "extra_single", {"train": extras["single"]})
    if "web" in extras:
        write_meta(out / "extra_web", {"train": extras["web"]})
        rows = extras["web"]
        write_cls_labels(out / "extra_web" / "true_labels.csv", {r[0]: r[2] for r in rows}, class_names(cfg.n_classes))
    if cfg.n_train or cfg.n_val:
        render_sample_grid(out, out / "samples.png", split="train" if cfg.n_train else "val")
    save_json(out / "synth.json", _meta(cfg))  # last: marks the dataset complete
    return out


def read_synth_config(root: str | Path) -> dict:
    """The ``synth.json`` of a generated dataset (raises DataError if the folder is not one)."""
    p = Path(root) / "synth.json"
    if not p.is_file():
        raise DataError(f"{p} not found: {root} is not a complete synthetic dataset; rerun the generator")
    return load_json(p)


# ---------------------------------------------------------------------------- sample grid


def render_sample_grid(root: str | Path, out_png: str | Path, n: int = 12, split: str = "train", cols: int = 3) -> Path:
    """Write a PNG grid of the first ``n`` images of a split, each beside its mask overlay and labels."""
    ds = open_dataset(root, split=split)
    tile_h = 128
    tiles = []
    for i in range(min(n, len(ds))):
        img = ds.load_image(i)
        mask = ds.load_mask(i)
        ov = overlay(img, mask) if mask is not None else img
        pair = np.concatenate([img, np.full((img.shape[0], 4, 3), 255, np.uint8), ov], axis=1)
        im = Image.fromarray(pair)
        im = im.resize((max(1, round(im.width * tile_h / im.height)), tile_h), Image.BILINEAR)
        canvas = Image.new("RGB", (im.width, tile_h + 14), (255, 255, 255))
        canvas.paste(im, (0, 0))
        names = ", ".join(ds.class_names[c] for c in ds.records[i].labels) or "(no object)"
        ImageDraw.Draw(canvas).text((2, tile_h + 1), f"{ds.records[i].image_id}: {names}"[:60], fill=(0, 0, 0))
        tiles.append(canvas)
    if not tiles:
        raise DataError(f"split {split!r} of {root} has no images to draw")
    cols = max(1, min(cols, len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    cw = max(t.width for t in tiles) + 6
    ch = max(t.height for t in tiles) + 6
    grid = Image.new("RGB", (cw * cols, ch * rows), (255, 255, 255))
    for j, t in enumerate(tiles):
        grid.paste(t, ((j % cols) * cw + 3, (j // cols) * ch + 3))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return atomic_write_bytes(out_png, buf.getvalue())
