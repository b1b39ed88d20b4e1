"""Inference with a trained segmenter: multi-scale + flip prediction of one image.

The stages that use it: :mod:`weakseg.stages.eval_seg` (a split, scored) and :mod:`weakseg.stages.predict`
(any image files).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.errors import ConfigError
from weakseg.refine.crf import crf_refine


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
        probs = crf_refine(image, probs)
    return probs.astype(np.float32), probs.argmax(axis=0).astype(np.uint8)
