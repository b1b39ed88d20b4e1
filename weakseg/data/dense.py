"""Images with a per-pixel training target, augmented jointly (the dense trainer's dataset)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from weakseg.data.dataset import SegDataset
from weakseg.data.joint_transforms import apply_joint
from weakseg.errors import DataError

TargetFn = Callable[[int, tuple[int, int]], np.ndarray]
"""``(index, (H, W)) -> uint8 [H, W]`` target of an image (255 = ignore / unknown)"""


class TargetImages(Dataset):
    """Items ``(float [3, crop, crop] in [0, 1], int64 [crop, crop])``: image ``i`` and ``target(i, size)``."""

    def __init__(self, ds: SegDataset, target: TargetFn, transform):
        self.ds, self.target, self.transform = ds, target, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.ds.load_image(i)
        mask = self.target(i, image.shape[:2])
        if image.shape[:2] != mask.shape:
            raise DataError(f"target of {self.ds[i].image_id!r} is {mask.shape} but the image is {image.shape[:2]}")
        return apply_joint(self.transform, image, mask)
