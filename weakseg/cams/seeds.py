"""CAM seeds: the usual WSSS protocol for scoring CAMs with a constant background score.

At each pixel, ``argmax([t, cam_1, ..., cam_K'])``: a pixel is foreground class ``c`` when its highest
CAM (over the image's classes) is ``c``'s and exceeds ``t``, background otherwise.
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 … 0.95


def top_class(cams: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the best class as a mask value (``c + 1``, ``uint8``) and its CAM score (``float32``).

    ``cams`` ``[K', H, W]`` of the classes ``classes`` ``[K']`` → ``(uint8 [H, W], float32 [H, W])``.
    """
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], np.uint8), np.zeros(cams.shape[1:], np.float32)
    cams = cams.astype(np.float32)
    label = (np.asarray(classes, np.int64)[cams.argmax(0)] + 1).astype(np.uint8)
    return label, cams.max(0)


def seeds_from_cams(cams: np.ndarray, classes: np.ndarray, threshold: float) -> np.ndarray:
    """``uint8 [H, W]`` seed mask: ``argmax([threshold, cams])`` mapped to 0 = bg, ``c + 1`` = class c.

    ``cams`` ``[K', H, W]`` of the classes ``classes`` ``[K']``. Ties go to the background.
    """
    label, peak = top_class(cams, classes)
    return np.where(peak > threshold, label, 0).astype(np.uint8)
