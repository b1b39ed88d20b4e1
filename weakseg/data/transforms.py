"""Image transforms for classifier training and CAM inference, plus a single-image torch dataset.

Following the MCIS reference, every input is resized to a *square* ``size × size`` (the official
loader's ``Resize`` ignores the aspect ratio), which lets images of any shape share a batch; the only
training augmentation is colour jitter (brightness/contrast/saturation 0.3, hue 0.1). Tensors are
``float32 [3, H, W]`` RGB in ``[0, 1]``; backbones normalise them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from weakseg.data.dataset import SegDataset


@dataclass(frozen=True)
class Jitter:
    """Colour-jitter strengths (torchvision ``ColorJitter`` semantics); all zero = off."""

    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.1

    @property
    def enabled(self) -> bool:
        return any(v > 0 for v in (self.brightness, self.contrast, self.saturation, self.hue))


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``uint8 [H, W, 3]`` → ``uint8 [size, size, 3]`` (bilinear)."""
    if image.shape[:2] == (size, size):
        return image
    return np.array(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W, 3]`` → ``float32 [3, H, W]`` in ``[0, 1]``."""
    if not image.flags.writeable:  # torch.from_numpy warns on read-only arrays
        image = image.copy()
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def color_jitter(x: torch.Tensor, jitter: Jitter) -> torch.Tensor:
    """Random colour jitter of ``float [3, H, W]`` in ``[0, 1]``; draws from torch's global RNG (seeded per epoch)."""
    if not jitter.enabled:
        return x
    from torchvision.transforms import ColorJitter

    return ColorJitter(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)(x).clamp_(0, 1)


def load_square(ds: SegDataset, i: int, size: int) -> torch.Tensor:
    """Image ``i`` of ``ds`` resized to ``size × size`` as ``float [3, size, size]``."""
    return to_tensor(resize_square(ds.load_image(i), size))


class LabelledImages(torch.utils.data.Dataset):
    """Single images with their multi-hot labels: ``{"image": [3, S, S], "label": [K]}`` (plain CAM training)."""

    def __init__(self, ds: SegDataset, indices: Sequence[int], size: int, jitter: Jitter = Jitter()):
        self.ds, self.indices, self.size, self.jitter = ds, list(indices), size, jitter

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        i = self.indices[k]
        x = color_jitter(load_square(self.ds, i, self.size), self.jitter)
        return {"image": x, "label": torch.from_numpy(self.ds.label_vector(i))}
