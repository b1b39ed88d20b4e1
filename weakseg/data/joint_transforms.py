"""Joint image + mask augmentation for segmentation training (torchvision.transforms.v2).

The image is a ``tv_tensors.Image`` and the mask a ``tv_tensors.Mask``, so one v2 pipeline moves
both: the mask is resized with nearest-neighbour interpolation and padded with 255 (ignore), the
image padded with 0. Random scale (relative to the image's own size, as in DeepLab/IRN), random
crop to ``crop x crop``, horizontal flip, then the image is converted to float in ``[0, 1]``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from weakseg.data.dataset import IGNORE


class RandomScale(v2.Transform):
    """Resize image and mask by one random factor drawn uniformly from ``scale_range``."""

    def __init__(self, scale_range: tuple[float, float] = (0.5, 1.5)):
        super().__init__()
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = next(TF.get_size(x) for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask)))
        s = random.uniform(*self.scale_range)
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return TF.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
        if isinstance(inpt, tv_tensors.Image):
            return TF.resize(inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        return inpt


def train_transform(crop: int, scale_range: tuple[float, float] = (0.5, 1.5), flip: bool = True) -> v2.Compose:
    """The training pipeline: random scale, random crop (padded: image 0, mask 255), flip, to float."""
    steps: list[v2.Transform] = [
        RandomScale(scale_range),
        v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE}),
    ]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    return v2.Compose(steps)


def to_tv(image: np.ndarray, mask: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """``uint8 [H, W, 3]`` image and ``uint8 [H, W]`` mask as tv_tensors (CHW image)."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image size {image.shape[:2]} differs from mask size {mask.shape}")
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    return img, tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))


def apply_joint(transform: v2.Transform, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``transform`` on an image/mask pair; returns ``float [3, h, w]`` and ``int64 [h, w]`` tensors."""
    img, m = transform(*to_tv(image, mask))
    return img.as_subclass(torch.Tensor), m.as_subclass(torch.Tensor).long()
