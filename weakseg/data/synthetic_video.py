"""Seeded synthetic videos for box-initialised video object segmentation (FTMU's agent training and tests).

Each video: a textured background; a **target** (object 1) — a random polygon whose radii breathe over time
(deformation) and that turns slowly, moving at a constant velocity plus jitter and bouncing off the frame
edges; optionally a **same-texture distractor** (object 2) that enters later (forces appearance cues), and
a **crossing occluder** (object 3), a bar of another texture that sweeps across the frame over the target.
Masks hold object ids (0 = background); pixels of the target hidden by the occluder belong to the occluder.
The frame-0 box of the target is its mask's tight box. Same config and seed → the same arrays.

:func:`write_davis` saves a video in the DAVIS layout (``JPEGImages/480p/<name>/00000.jpg``,
``Annotations/480p/<name>/00000.png`` palette PNG of object ids) so :mod:`weakseg.data.davis` reads it.
This module is independent of :mod:`weakseg.data.synthetic` (the image benchmark).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from weakseg.data.palette import save_mask_png
from weakseg.errors import ConfigError

TARGET, DISTRACTOR, OCCLUDER = 1, 2, 3


@dataclass(frozen=True)
class SynthVideoConfig:
    """Shape of the generated videos."""

    frames: int = 24
    """frames per video"""
    height: int = 96
    """frame height (px)"""
    width: int = 128
    """frame width (px)"""
    radius: tuple[float, float] = (0.12, 0.22)
    """target radius range, fraction of the frame's smaller side"""
    speed: tuple[float, float] = (0.5, 2.5)
    """target speed range (px per frame)"""
    deform: float = 0.25
    """amplitude of the radius breathing (fraction of the radius)"""
    distractor: float = 0.5
    """probability of a same-texture distractor entering halfway"""
    occluder: float = 0.5
    """probability of a bar sweeping across the frame"""

    def check(self) -> None:
        if self.frames < 2 or self.height < 16 or self.width < 16:
            raise ConfigError(f"synthetic videos need >= 2 frames of >= 16x16 px; got {self.frames} x "
                              f"{self.height}x{self.width}")  # fmt: skip


PRESETS = {"default": SynthVideoConfig(), "tiny": SynthVideoConfig(frames=6, height=48, width=64)}


@dataclass(frozen=True)
class SynthVideo:
    """``frames uint8 [T, H, W, 3]``, ``masks uint8 [T, H, W]`` (object ids), the target's frame-0 box."""

    name: str
    frames: np.ndarray
    masks: np.ndarray

    @property
    def target(self) -> np.ndarray:
        """``bool [T, H, W]``: the target object's mask per frame."""
        return self.masks == TARGET


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random texture ``uint8 [H, W, 3]``: two colours in stripes, a checker or blotchy noise."""
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(3)
    period = rng.uniform(4, 12)
    if kind == 0:
        a = rng.uniform(0, math.pi)
        t = (np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period) > 0).astype(np.float32)
    elif kind == 1:
        t = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    else:
        small = rng.random((h // 6 + 2, w // 6 + 2)).astype(np.float32)
        t = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)) / 255.0
    out = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    return np.clip(out + rng.normal(0, 6, out.shape), 0, 255).astype(np.uint8)


def _polygon(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base radii, breathing phases and angles of an ``n``-vertex star-ish polygon."""
    radii = rng.uniform(0.7, 1.0, n)
    phases = rng.uniform(0, 2 * math.pi, n)
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    return radii, phases, angles


def _draw(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    im = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(im).polygon([tuple(p) for p in pts.tolist()], fill=1)
    return np.asarray(im, dtype=bool)


def _shape_points(centre, radius, rot, t, radii, phases, angles, deform) -> np.ndarray:
    r = radius * radii * (1 + deform * np.sin(0.3 * t + phases))
    a = angles + rot
    return np.stack([centre[0] + r * np.cos(a), centre[1] + r * np.sin(a)], 1)


def make_video(cfg: SynthVideoConfig, seed: int, name: str | None = None) -> SynthVideo:
    """One synthetic video (see the module docstring); deterministic in ``(cfg, seed)``."""
    cfg.check()
    rng = np.random.default_rng(seed)
    T, H, W = cfg.frames, cfg.height, cfg.width
    side = min(H, W)
    background = _texture(rng, H, W) // 2 + 60
    tex_target = _texture(rng, H, W)
    tex_occ = _texture(rng, H, W)
    radius = rng.uniform(*cfg.radius) * side
    poly = _polygon(rng, int(rng.integers(5, 10)))
    pos = np.array([rng.uniform(radius, W - radius), rng.uniform(radius, H - radius)])
    ang = rng.uniform(0, 2 * math.pi)
    vel = rng.uniform(*cfg.speed) * np.array([math.cos(ang), math.sin(ang)])
    spin = rng.uniform(-0.05, 0.05)
    has_dis, has_occ = rng.random() < cfg.distractor, rng.random() < cfg.occluder
    dis_poly = _polygon(rng, int(rng.integers(5, 10)))
    dis_radius = radius * rng.uniform(0.7, 1.1)
    dis_start = T // 2
    dis_side = rng.integers(2)  # enters from the left (0) or the right (1)
    dis_y = rng.uniform(dis_radius, H - dis_radius)
    dis_speed = rng.uniform(1.0, 3.0) * side / 96
    occ_w = rng.uniform(0.06, 0.12) * W
    occ_t0, occ_t1 = int(rng.integers(0, max(1, T // 3))), T
    frames = np.zeros((T, H, W, 3), np.uint8)
    masks = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        pos = pos + vel + rng.normal(0, 0.3, 2)
        for k, lim in ((0, W), (1, H)):  # bounce off the edges, keeping the centre inside
            if not radius * 0.5 <= pos[k] <= lim - radius * 0.5:
                vel[k] = -vel[k]
                pos[k] = np.clip(pos[k], radius * 0.5, lim - radius * 0.5)
        img = background.copy()
        m = np.zeros((H, W), np.uint8)
        tgt = _draw((H, W), _shape_points(pos, radius, spin * t, t, *poly, cfg.deform))
        img[tgt], m[tgt] = tex_target[tgt], TARGET
        if has_dis and t >= dis_start:
            dx = (t - dis_start) * dis_speed - dis_radius
            cx = dx if dis_side == 0 else W - dx
            dis = _draw((H, W), _shape_points((cx, dis_y), dis_radius, 0.0, t, *dis_poly, cfg.deform))
            dis &= m == 0  # behind the target
            img[dis], m[dis] = tex_target[dis], DISTRACTOR
        if has_occ and occ_t0 <= t < occ_t1:
            x = -occ_w + (W + 2 * occ_w) * (t - occ_t0) / max(1, occ_t1 - occ_t0 - 1)
            occ = np.zeros((H, W), bool)
            occ[:, int(max(0, x)) : int(max(0, x + occ_w))] = True
            img[occ], m[occ] = tex_occ[occ], OCCLUDER
        frames[t], masks[t] = img, m
    return SynthVideo(name or f"synth{seed:05d}", frames, masks)


def make_videos(cfg: SynthVideoConfig, n: int, seed: int) -> list[SynthVideo]:
    """``n`` videos with seeds ``seed … seed + n − 1``, skipping any whose target is missing on frame 0."""
    out, s = [], seed
    while len(out) < n:
        v = make_video(cfg, s)
        if v.target[0].any():
            out.append(v)
        s += 1
    return out


def write_davis(video: SynthVideo, root: str | Path, resolution: str = "480p") -> Path:
    """Write ``video`` in the DAVIS layout under ``root``; returns the sequence's JPEG folder."""
    root = Path(root)
    img_dir = root / "JPEGImages" / resolution / video.name
    ann_dir = root / "Annotations" / resolution / video.name
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    for t, (frame, mask) in enumerate(zip(video.frames, video.masks, strict=True)):
        Image.fromarray(frame).save(img_dir / f"{t:05d}.jpg", quality=95)
        save_mask_png(ann_dir / f"{t:05d}.png", mask)
    return img_dir
