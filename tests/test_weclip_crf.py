"""WeCLIP's tag-free prediction (``WeCLIPPredictor.segment``) and its optional test-time dense CRF."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from weakseg.cams.cam import make_views
from weakseg.config import apply_overrides
from weakseg.errors import ConfigError
from weakseg.methods.weclip import PRESETS, WECLIP_CRF, WeCLIPMethod, WeCLIPPredictor, crf_probs

pytest.importorskip("pydensecrf")

SIZE = 32


def _image() -> np.ndarray:
    """Left half red (class 0), right half blue (background)."""
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[:, : SIZE // 2, 0] = 255
    img[:, SIZE // 2 :, 2] = 255
    return img


class NoisyNet(nn.Module):
    """Stand-in for WeCLIPNet: logits [background, class 0, class 1] = ±1 from the red channel + fixed noise
    (std 1.2: about a fifth of the pixels wrong); class 1 is never likely."""

    def __init__(self):
        super().__init__()
        self.visual = SimpleNamespace(patch_size=8)
        self.noise = torch.randn(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 1.2

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        fg = 2 * (x[:, :1] - 0.5) + self.noise
        return SimpleNamespace(logits=torch.cat([-fg, fg, torch.full_like(fg, -20.0)], 1))


def _predictor(crf: bool) -> WeCLIPPredictor:
    cfg = apply_overrides(PRESETS["tiny"], (f"input_size={SIZE}", f"crf={str(crf).lower()}", "crf_bi_xy=16"))
    ds = SimpleNamespace(load_image=lambda i: _image())
    return WeCLIPPredictor(NoisyNet(), ds, make_views((1.0,), False), cfg, torch.device("cpu"))


def _truth() -> np.ndarray:
    gt = np.zeros((SIZE, SIZE), np.uint8)
    gt[:, : SIZE // 2] = 1
    return gt


def test_segment_is_the_tag_free_argmax_over_every_class():
    probs, mask = _predictor(crf=False).segment(_image())
    assert probs.shape == (3, SIZE, SIZE)
    assert torch.allclose(probs.sum(0), torch.ones(SIZE, SIZE), atol=1e-5)
    fg = 2 * (torch.from_numpy(_image()[..., 0]).float() / 255 - 0.5) + NoisyNet().noise[0, 0]
    assert np.array_equal(mask, (fg > 0).numpy().astype(np.uint8))  # argmax of [-fg, fg, -20]
    assert 2 not in mask
    wrong = (mask != _truth()).mean()
    assert 0.1 < wrong < 0.4  # the noise is real: the CRF below has something to fix


def test_crf_cleans_the_noisy_prediction():
    _, plain = _predictor(crf=False).segment(_image())
    probs, refined = _predictor(crf=True).segment(_image())
    assert torch.allclose(probs.sum(0), torch.ones(SIZE, SIZE), atol=1e-4)
    assert (refined != _truth()).mean() < 0.02 < (plain != _truth()).mean()


def test_crf_on_the_make_cams_maps():
    plain = _predictor(crf=False)(0, [0])
    refined = _predictor(crf=True)(0, [0])
    assert plain.shape == refined.shape == (1, SIZE, SIZE)
    assert float(refined.min()) >= 0 and float(refined.max()) <= 1
    truth = torch.from_numpy(_truth()).bool()
    assert ((refined[0] > 0.5) != truth).float().mean() < 0.02 < ((plain[0] > 0.5) != truth).float().mean()


def test_crf_probs_uses_the_official_parameters(monkeypatch):
    seen = {}

    def fake(image, probs, **kw):
        seen.update(kw)
        return probs

    monkeypatch.setattr("weakseg.methods.weclip.crf_refine", fake)
    p = torch.full((2, 4, 4), 0.5)
    out = crf_probs(np.zeros((4, 4, 3), np.uint8), p, 12.0)
    assert torch.equal(out, p)
    assert seen == {"iters": 10, "bi_xy_std": 12.0, **{k: v for k, v in WECLIP_CRF.items() if k != "iters"}}


def test_crf_spatial_std_must_be_positive():
    with pytest.raises(ConfigError, match="crf_bi_xy"):
        WeCLIPMethod(apply_overrides(PRESETS["tiny"], ("crf_bi_xy=0",)))
