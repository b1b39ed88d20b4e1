"""Contrastive image-text loss for CLIP training when several captions of a batch fit one image.

CLIP (Radford et al., ICML 2021) trains with a symmetric InfoNCE whose positives are the diagonal of the
batch's image-text similarity matrix. On multi-label data two images of a batch often share their caption
("a photo of a star"), so the diagonal target punishes a correct match. :func:`multi_positive_clip_loss`
spreads each row's target uniformly over every matching caption (and each column's over every matching
image); with a one-to-one ``match`` it is CLIP's loss exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multi_positive_clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, match: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric soft-target InfoNCE over a batch of images and captions.

    ``image_emb`` ``[B, E]`` and ``text_emb`` ``[T, E]`` (L2-normalised here), ``match`` ``bool [B, T]``
    (caption ``t`` describes image ``b``; every row and column needs at least one ``True``), ``logit_scale``
    the temperature multiplier (CLIP's ``logit_scale.exp()``). Returns the mean of the image→text and
    text→image cross-entropies against targets uniform over the matches. Scalar tensor.
    """
    if not bool(match.any(1).all()) or not bool(match.any(0).all()):
        raise ValueError("every image and every caption needs at least one match")
    logits = logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T  # [B, T]
    target = match.float()
    i2t = -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    t2i = -(target / target.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return 0.5 * (i2t + t2i)
