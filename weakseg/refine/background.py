"""Background scores and ignore rules: from foreground CAMs to a full label space.

CAMs only score the foreground classes of an image; a pseudo label also needs a background score
and a rule for pixels that are too uncertain to train on (label 255 = ignore). Everything here is
a pure function on tensors (numpy arrays are accepted and converted), tested on tiny arrays.

Shapes: ``cams`` is ``[K, H, W]`` in ``[0, 1]`` (one map per foreground class present in the
image), ``saliency`` is ``[H, W]`` in ``[0, 1]``, scores are ``[1 + K, H, W]`` with the background
first, ignore masks are ``bool [H, W]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Defaults of the MCIS pseudo-label script (GuoleiSun/MCIS_wsss, Classifier/gen_gt.py, which MCIS
# took over from OAA): thresholds on min-max normalised attention maps and a [0, 255] saliency map.
MCIS_FG_THRESHOLD = 0.3  # scores (background included) below this are zeroed before the argmax
MCIS_CONFLICT_THRESHOLD = 0.99  # a pixel with two or more scores above this is ambiguous -> ignore
MCIS_SALIENT_THRESHOLD = 32 / 255  # "salient" means saliency >= 32 (of 255)
MCIS_ATTENTION_THRESHOLD = 0.95  # attention above this counts as salient even where saliency is low
MCIS_MIN_FOREGROUND = 0.01  # an image whose foreground covers < 1 % of it is ignored entirely


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t if t.is_floating_point() else t.float()


def _cams3(cams: np.ndarray | torch.Tensor) -> torch.Tensor:
    cams = _as_tensor(cams).float()
    if cams.ndim != 3:
        raise ValueError(f"cams must be [K, H, W], got shape {tuple(cams.shape)}")
    return cams


def power_background(cams: np.ndarray | torch.Tensor, power: float = 3.0) -> torch.Tensor:
    """Saliency-free background score ``(1 - max_c CAM_c) ** power`` (PSA / IRN), shape ``[H, W]``.

    A larger ``power`` makes the background weaker, i.e. lets the foreground grow: a pixel goes to
    the foreground where ``max CAM > (1 - max CAM) ** power`` (at power 3: max CAM above ~0.32).
    An image without foreground classes (``K = 0``) is background everywhere.
    """
    cams = _cams3(cams)
    if cams.shape[0] == 0:
        return torch.ones(cams.shape[1:], dtype=cams.dtype)
    return (1 - cams.amax(dim=0).clamp(0, 1)).pow(power)


def threshold_background(cams: np.ndarray | torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """Constant background score ``threshold`` (the usual "CAM eval threshold"), shape ``[H, W]``.

    After the argmax a pixel is foreground where its best CAM exceeds ``threshold``.
    """
    cams = _cams3(cams)
    if cams.shape[0] == 0:
        return torch.ones(cams.shape[1:], dtype=cams.dtype)
    return torch.full(cams.shape[1:], float(threshold), dtype=cams.dtype)


def with_background(cams: np.ndarray | torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Stack a background score ``[H, W]`` in front of the CAMs: ``[1 + K, H, W]``."""
    cams = _cams3(cams)
    return torch.cat([_as_tensor(background).to(cams.dtype)[None], cams], dim=0)


def normalise_scores(scores: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Turn non-negative scores ``[C, H, W]`` into per-pixel distributions (sum 1 over ``C``).

    A pixel whose scores are all zero becomes uniform (the refiners then fill it from neighbours).
    """
    scores = scores.clamp_min(0) + eps
    return scores / scores.sum(dim=0, keepdim=True)


@dataclass(frozen=True)
class SaliencyLabels:
    """Result of :func:`mcis_background`: scores ``[1 + K, H, W]`` and ignore mask ``bool [H, W]``."""

    scores: torch.Tensor
    ignore: torch.Tensor


def mcis_background(
    cams: np.ndarray | torch.Tensor,
    saliency: np.ndarray | torch.Tensor,
    fg_threshold: float = MCIS_FG_THRESHOLD,
    conflict_threshold: float = MCIS_CONFLICT_THRESHOLD,
    salient_threshold: float = MCIS_SALIENT_THRESHOLD,
    attention_threshold: float = MCIS_ATTENTION_THRESHOLD,
    min_foreground: float = MCIS_MIN_FOREGROUND,
    normalise: bool = True,
) -> SaliencyLabels:
    """The saliency-guided pseudo-label rule of MCIS (Sun et al., ECCV 2020), as in its official script.

    1. Background score = ``1 - saliency``; each class map is min-max normalised (``normalise``).
    2. Every score (background included) below ``fg_threshold`` is set to 0.
    3. A pixel with two or more scores above ``conflict_threshold`` is ambiguous -> ignore.
    4. After the argmax, a pixel labelled background that is salient (``saliency >=
       salient_threshold``) or holds a very confident CAM (``> attention_threshold``) is a conflict
       -> ignore. This covers both kinds of disagreement: salient but no CAM above threshold (all
       scores zeroed, argmax falls back to background), and a confident CAM outside the salient
       region (the background score ``1 - 0`` wins the argmax).
    5. An image whose labelled foreground covers less than ``min_foreground`` of it is ignored.

    The zeroed scores are returned (not a hard label) so that a refiner can run on them; the
    ignore mask is applied after the final argmax. With no refiner, ``argmax(scores)`` with
    ``ignore`` set to 255 reproduces the official labels.

    Args:
        cams: ``[K, H, W]`` class maps of the image's classes.
        saliency: ``[H, W]`` saliency in ``[0, 1]`` (the official maps are 0/255 PNGs).
    """
    cams = _cams3(cams).clone()
    sal = _as_tensor(saliency).float()
    if sal.shape != cams.shape[1:]:
        raise ValueError(f"saliency shape {tuple(sal.shape)} differs from the CAM size {tuple(cams.shape[1:])}")
    if normalise and cams.shape[0]:
        lo = cams.amin(dim=(1, 2), keepdim=True)
        hi = cams.amax(dim=(1, 2), keepdim=True)
        cams = (cams - lo) / (hi - lo + 1e-8)
    salient = sal >= salient_threshold
    if cams.shape[0]:
        salient = salient | (cams > attention_threshold).any(dim=0)
    scores = torch.cat([(1 - sal)[None], cams], dim=0)
    scores = torch.where(scores < fg_threshold, torch.zeros_like(scores), scores)
    ambiguous = (scores > conflict_threshold).sum(dim=0) > 1
    label = scores.argmax(dim=0)  # ties (all zero) -> background, as np.argmax does
    ignore = ambiguous | ((label == 0) & salient)
    foreground = ((label > 0) & ~ignore).float().mean()
    if foreground < min_foreground:
        ignore = torch.ones_like(ignore)
    return SaliencyLabels(scores=scores, ignore=ignore)


def low_margin(probs: torch.Tensor, margin: float) -> torch.Tensor:
    """Confidence rule: ``bool [H, W]``, true where top-1 minus top-2 probability is below ``margin``.

    ``probs`` is ``[C, H, W]`` (normalised per pixel). With a single class nothing is uncertain.
    """
    if margin <= 0 or probs.shape[0] < 2:
        return torch.zeros(probs.shape[1:], dtype=torch.bool)
    top2 = probs.topk(2, dim=0).values
    return (top2[0] - top2[1]) < margin


def scores_to_label(
    scores: torch.Tensor, classes: np.ndarray | torch.Tensor | list[int], ignore: torch.Tensor | None = None
) -> np.ndarray:
    """Argmax of ``[1 + K, H, W]`` scores to a mask ``uint8 [H, W]`` in the dataset's label space.

    Channel 0 -> 0 (background); channel ``k + 1`` -> ``classes[k] + 1``; ``ignore`` -> 255.
    """
    lut = torch.tensor([0, *[int(c) + 1 for c in torch.as_tensor(classes).tolist()]], dtype=torch.int64)
    if int(lut.max()) >= 255:
        raise ValueError("class index too large for a uint8 mask (255 is the ignore value)")
    label = lut[scores.argmax(dim=0)]
    if ignore is not None:
        label[ignore] = 255
    return label.numpy().astype(np.uint8)
