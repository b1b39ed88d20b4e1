"""Dense CRF refinement (Kraehenbuehl & Koltun, NIPS 2011) through pydensecrf (extra ``crf``).

The classic WSSS post-processing (DeepLab, PSA, IRN): a fully connected CRF with a Gaussian
smoothness kernel and a bilateral appearance kernel, solved by mean-field inference on the CPU.
``pydensecrf`` is optional (``pip install 'weakseg[crf]'`` installs ``pydensecrf2``); the torch
refiner :func:`weakseg.refine.par.par_refine` needs nothing extra and is the default.
"""

from __future__ import annotations

import numpy as np

from weakseg.errors import missing_extra


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise missing_extra("pydensecrf2", "crf", "dense CRF refinement") from None
    return dcrf


def crf_refine(
    image: np.ndarray,
    probs: np.ndarray,
    iters: int = 10,
    pos_xy_std: float = 3.0,
    pos_weight: float = 3.0,
    bi_xy_std: float = 50.0,
    bi_rgb_std: float = 13.0,
    bi_weight: float = 10.0,
) -> np.ndarray:
    """Refine per-pixel class probabilities with a dense CRF; returns ``float32 [C, H, W]`` marginals.

    Defaults follow the PSA / IRN ``crf_inference`` (Gaussian ``sxy=3, compat=3``; bilateral
    ``srgb=13, compat=10``) with a bilateral ``sxy`` of 50 instead of 80, as the images of this
    toolkit are often small; scale ``bi_xy_std`` with the image size.

    Args:
        image: ``uint8 [H, W, 3]`` RGB image.
        probs: ``[C, H, W]`` probabilities (renormalised per pixel here; zeros are clipped).
    """
    dcrf = _densecrf()
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    c, h, w = probs.shape
    if (h, w) != image.shape[:2]:
        raise ValueError(f"probs size {(h, w)} differs from the image size {image.shape[:2]}")
    p = np.clip(np.asarray(probs, dtype=np.float32), 1e-5, None)
    p /= p.sum(axis=0, keepdims=True)
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(p).reshape(c, -1)))
    d.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_weight)
    d.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(image), compat=bi_weight)
    q = d.inference(iters)
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)
