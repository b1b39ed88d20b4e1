"""Seeded simulators of weak labels from full masks: boxes, scribbles, point clicks (numpy + scipy.ndimage).

Every simulator is deterministic per ``seed`` (a ``numpy.random.default_rng(seed)`` of its own) and reads the
mask without changing it. Masks are ``uint8 [H, W]`` (0 = background, ``c + 1`` = class ``c``, 255 = ignore).

Objects are the instances of an ``instances`` map (``int [H, W]``, 0 = none, one id per object; its class is
the majority class of its pixels in the mask) when one is given, else the 8-connected components of each
class. Ignore pixels (255) are never part of an object nor of the background.

- :func:`simulate_boxes`: the tight box of each object, each side moved by ``U(-jitter, jitter) x`` the box's
  side (the note's j in {0, 0.05, 0.1}), cut to the image; boxes smaller than ``min_size`` px are dropped
  (a box-tightness loss needs at least 2 rows and columns).
- :func:`simulate_scribbles`: no skeletonisation (scikit-image is not a dependency). Each object's scribble is
  a straight stroke through its deepest interior pixel (the maximum of the distance transform), along the
  object's principal axis turned by a random angle, walked outwards until it leaves the object shrunk by a
  margin, then cut to a random sub-segment of ``length`` of it and drawn ``width`` px wide, clipped to the
  object. A straight stroke stays inside convex objects end to end and inside the core of elongated ones;
  a curved object gets a shorter stroke than a skeleton would give (its medial axis is not followed).
  Background strokes are made the same way on the background shrunk by the margin. ``budget`` caps the
  labelled pixels (a fraction of the labelled image area when < 1, else a pixel count): strokes are
  shortened evenly until the total fits. ``drop`` is the per-object probability of no scribble (CC4S's
  "scribble_drop").
- :func:`simulate_points`: ``k`` clicks per object, uniformly among its pixels at least ``margin`` px from its
  border (the deepest ones when it is thinner than that), or its deepest pixel when ``mode="centre"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from weakseg.data.dataset import IGNORE, Box, Point
from weakseg.data.weak_labels import BACKGROUND

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class SimObject:
    """One object of a mask: its class (0-based foreground) and its pixels ``bool [H, W]``."""

    cls: int
    pixels: np.ndarray


def objects_of(mask: np.ndarray, instances: np.ndarray | None = None) -> list[SimObject]:
    """The objects of a mask (see module docstring), in class order then component / instance-id order."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    fg = (mask != 0) & (mask != IGNORE)
    out: list[SimObject] = []
    if instances is not None:
        instances = np.asarray(instances)
        if instances.shape != mask.shape:
            raise ValueError(f"instances {instances.shape} and mask {mask.shape} differ in shape")
        for iid in np.unique(instances[fg & (instances != 0)]).tolist():
            pix = (instances == iid) & fg
            cls = int(np.bincount(mask[pix].astype(np.int64)).argmax()) - 1
            out.append(SimObject(cls, pix))
        return sorted(out, key=lambda o: o.cls)
    for v in np.unique(mask[fg]).tolist():
        comps, n = ndimage.label(mask == v, structure=_EIGHT)
        out += [SimObject(int(v) - 1, comps == k) for k in range(1, n + 1)]
    return out


def tight_box(pixels: np.ndarray, cls: int) -> Box:
    """The smallest box (``x1``/``y1`` exclusive) holding every ``True`` of ``pixels`` ``bool [H, W]``."""
    rows, cols = np.flatnonzero(pixels.any(1)), np.flatnonzero(pixels.any(0))
    return Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1, cls)


def simulate_boxes(
    mask: np.ndarray, seed: int = 0, jitter: float = 0.0, min_size: int = 2, instances: np.ndarray | None = None
) -> tuple[Box, ...]:
    """Boxes of every object, jittered (module docstring). ``jitter`` 0 gives the tight boxes.

    Each side moves by at most ``round(jitter * side)`` px (``side`` = the tight box's width for ``x0``/``x1``,
    its height for ``y0``/``y1``), before cutting to the image.
    """
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    h, w = np.asarray(mask).shape
    rng = np.random.default_rng(seed)
    out = []
    for obj in objects_of(mask, instances):
        t = tight_box(obj.pixels, obj.cls)
        d = rng.uniform(-jitter, jitter, size=4) * np.array([t.width, t.height, t.width, t.height])
        x0, y0, x1, y1 = (int(round(v)) for v in np.array(t.as_tuple()) + d)
        b = Box(x0, y0, max(x1, x0), max(y1, y0), t.cls).clip(h, w)
        if b.width >= min_size and b.height >= min_size:
            out.append(b)
    return tuple(out)


def _deepest(region: np.ndarray, dist: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the largest distance-transform value inside ``region`` (first in raster order on ties)."""
    i = int(np.argmax(np.where(region, dist, -1.0)))
    return divmod(i, region.shape[1])


def _stroke(region: np.ndarray, core: np.ndarray, dist: np.ndarray, rng: np.random.Generator, angle: float):
    """Pixels ``int [N, 2]`` (row, col) of a straight stroke through ``core``'s deepest pixel, in walking order."""
    r0, c0 = _deepest(core, dist)
    ys, xs = np.nonzero(region)
    cov = np.cov(np.stack([xs, ys]).astype(np.float64)) if len(xs) > 1 else np.eye(2)
    evals, evecs = np.linalg.eigh(np.atleast_2d(cov))
    theta = float(np.arctan2(evecs[1, -1], evecs[0, -1])) + rng.uniform(-angle, angle)
    dx, dy = np.cos(theta), np.sin(theta)
    h, w = core.shape

    def walk(sign: int) -> list[tuple[int, int]]:
        pts, t = [], 0.5
        while True:
            r, c = int(round(r0 + sign * t * dy)), int(round(c0 + sign * t * dx))
            if not (0 <= r < h and 0 <= c < w) or not core[r, c]:
                return pts
            if not pts or pts[-1] != (r, c):
                pts.append((r, c))
            t += 0.5

    path = walk(-1)[::-1] + [(r0, c0)] + walk(1)
    dedup = [p for i, p in enumerate(path) if i == 0 or p != path[i - 1]]
    return np.array(dedup, dtype=np.int64)


def _draw(path: np.ndarray, width: int, region: np.ndarray) -> np.ndarray:
    """``bool [H, W]``: ``path`` thickened to ``width`` px (square structuring element), kept inside ``region``."""
    out = np.zeros(region.shape, dtype=bool)
    out[path[:, 0], path[:, 1]] = True
    if width > 1:
        out = ndimage.binary_dilation(out, structure=np.ones((width, width), dtype=bool))
    return out & region


def simulate_scribbles(
    mask: np.ndarray,
    seed: int = 0,
    width: int = 3,
    length: float = 1.0,
    margin: int = 2,
    budget: float | None = None,
    drop: float = 0.0,
    background: bool = True,
    angle: float = np.pi / 12,
    instances: np.ndarray | None = None,
) -> np.ndarray:
    """A scribble map ``uint8 [H, W]`` (255 = unknown, 0 = background, ``c + 1`` = class ``c``) from a mask.

    ``width``: stroke width (px); ``length``: fraction in (0, 1] of each stroke's full extent kept (a random
    sub-segment); ``margin``: px kept clear of each region's border (regions thinner than that use their
    deepest pixels); ``budget``: cap on labelled pixels (see module docstring), None = no cap; ``drop``: per-object
    probability of no scribble; ``background``: also scribble the background; ``angle``: max random turn (rad)
    of a stroke from the principal axis.
    """
    mask = np.asarray(mask)
    if not 0 < length <= 1:
        raise ValueError(f"length must be in (0, 1], got {length}")
    rng = np.random.default_rng(seed)
    regions: list[tuple[int, np.ndarray]] = [(o.cls, o.pixels) for o in objects_of(mask, instances)]
    if background and (mask == 0).any():
        for k in range(1, (comps := ndimage.label(mask == 0, structure=_EIGHT))[1] + 1):
            regions.append((BACKGROUND, comps[0] == k))
    strokes = []
    for cls, region in regions:
        if cls != BACKGROUND and rng.random() < drop:
            continue
        dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]  # the image edge is a border too
        core = dist > min(margin + width // 2, max(float(dist.max()) - 1, 0))
        path = _stroke(region, core, dist, rng, angle)
        n = max(1, int(round(length * len(path))))
        start = int(rng.integers(0, len(path) - n + 1))
        strokes.append((cls, region, path[start : start + n]))
    if budget is not None:
        limit = int(budget * int((mask != IGNORE).sum())) if budget < 1 else int(budget)
        keep = 1.0
        while keep > 0 and sum(int(_draw(p[: _cut(p, keep)], width, r).sum()) for _, r, p in strokes) > limit:
            keep -= 0.05
        strokes = [(c, r, p[: _cut(p, keep)]) for c, r, p in strokes if keep > 0]
    out = np.full(mask.shape, IGNORE, dtype=np.uint8)
    for cls, region, path in strokes:
        if len(path):
            out[_draw(path, width, region)] = 0 if cls == BACKGROUND else cls + 1
    return out


def _cut(path: np.ndarray, keep: float) -> int:
    """How many of a stroke's pixels to keep for the fraction ``keep`` (0 when ``keep`` <= 0)."""
    return int(len(path) * keep) if keep > 0 else 0


def simulate_points(
    mask: np.ndarray,
    seed: int = 0,
    k: int = 1,
    margin: int = 3,
    mode: str = "random",
    background: int = 0,
    instances: np.ndarray | None = None,
) -> tuple[Point, ...]:
    """``k`` clicks per object (module docstring), plus ``background`` clicks on the background (cls -1).

    ``mode``: ``"random"`` (uniform among pixels at least ``margin`` px inside) or ``"centre"`` (the deepest
    pixel; ``k`` is then 1). Clicks of one object may repeat a pixel when it has fewer than ``k`` candidates.
    """
    if mode not in ("random", "centre"):
        raise ValueError(f"mode must be 'random' or 'centre', got {mode!r}")
    mask = np.asarray(mask)
    rng = np.random.default_rng(seed)
    regions = [(o.cls, o.pixels, k) for o in objects_of(mask, instances)]
    if background > 0 and (mask == 0).any():
        regions.append((BACKGROUND, mask == 0, background))
    out = []
    for cls, region, n in regions:
        dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        if mode == "centre":
            r, c = _deepest(region, dist)
            out.append(Point(c, r, cls))
            continue
        deep = region & (dist > min(margin, float(dist.max()) - 1))
        rows, cols = np.nonzero(deep)
        pick = rng.choice(len(rows), size=n, replace=len(rows) < n)
        out += [Point(int(cols[i]), int(rows[i]), cls) for i in pick]
    return tuple(out)
