"""Shared losses for box / scribble supervision: local kernels, Potts / L1, partial CE / BCE, box tightness, SSIM."""

from __future__ import annotations

import math

import pytest
import torch

from weakseg.data.dataset import IGNORE, Box
from weakseg.losses.pairwise import (
    energy_gate,
    gated_crf_loss,
    gaussian_kernel,
    l1_pairwise_loss,
    neighbours,
    potts_loss,
)
from weakseg.losses.partial import (
    balanced_partial_cross_entropy,
    box_tightness_loss,
    partial_bce,
    ssim,
    ssim_l1_consistency,
)


def _snap(*ts: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone() for t in ts]


def _unchanged(before: list[torch.Tensor], *ts: torch.Tensor) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, ts, strict=True))


# ---------------------------------------------------------------------------- kernels


def test_two_pixel_kernel_potts_l1_by_hand():
    image = torch.tensor([[[[0.0, 1.0]]]])  # [1, 1, 1, 2]
    probs = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # pixel 0 class 0, pixel 1 class 1
    before = _snap(image, probs)
    k = gaussian_kernel([(image, 1.0)], radius=1, xy_sigma=1.0)
    assert k.shape == (1, 9, 1, 2)
    # pixel 0's right neighbour (offset (0, +1) = index 5) is pixel 1: exp(-½(1 + 1)) = e^-1; all else 0
    expect = torch.zeros(1, 9, 1, 2)
    expect[0, 5, 0, 0] = expect[0, 3, 0, 1] = math.exp(-1)
    assert torch.allclose(k, expect)
    assert potts_loss(probs, k).item() == pytest.approx(math.exp(-1))  # (e^-1 + e^-1) / 2 pixels
    assert l1_pairwise_loss(probs, k).item() == pytest.approx(2 * math.exp(-1))  # |1-0| + |0-1| per pair
    half = torch.full_like(probs, 0.5)
    assert potts_loss(half, k).item() == pytest.approx(0.5 * math.exp(-1))  # uncertainty pays under Potts
    assert l1_pairwise_loss(half, k).item() == 0  # but not under L1
    assert _unchanged(before, image, probs)
    k0 = gaussian_kernel([(image, 1.0)], radius=1, xy_sigma=1.0, zero_centre=False)
    assert k0[0, 4].tolist() == [[1.0, 1.0]]


def test_kernel_matches_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.rand(2, 3, 5, 6, generator=g), torch.rand(2, 2, 5, 6, generator=g)
    r, sxy, s1, s2, wgt = 2, 1.5, 0.3, 0.7, 0.8
    k = gaussian_kernel([(f1, s1), (f2, s2)], radius=r, xy_sigma=sxy, weight=wgt)
    brute = torch.zeros_like(k)
    for b in range(2):
        for y in range(5):
            for x in range(6):
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        yy, xx = y + dy, x + dx
                        if (dy, dx) == (0, 0) or not (0 <= yy < 5 and 0 <= xx < 6):
                            continue
                        e = (dx * dx + dy * dy) / sxy**2
                        e += ((f1[b, :, y, x] - f1[b, :, yy, xx]) ** 2).sum() / s1**2
                        e += ((f2[b, :, y, x] - f2[b, :, yy, xx]) ** 2).sum() / s2**2
                        brute[b, (dy + r) * (2 * r + 1) + dx + r, y, x] = wgt * torch.exp(-0.5 * e)
    assert torch.allclose(k, brute, atol=1e-6)
    # symmetry: K_ij == K_ji
    kn = k.view(2, 5, 5, 5, 6)
    assert torch.allclose(kn[:, 2, 3, 1, 2], kn[:, 2, 1, 1, 3])  # (1,2)→(1,3) vs (1,3)→(1,2)
    # position-only kernel needs a size
    assert gaussian_kernel(radius=1, xy_sigma=1.0, size=(1, 3, 3)).shape == (1, 9, 3, 3)
    with pytest.raises(ValueError, match="size"):
        gaussian_kernel(radius=1)


def test_potts_masks_and_brute_force():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 4, 5, generator=g)
    probs = torch.rand(1, 3, 4, 5, generator=g).softmax(1)
    src = (torch.rand(1, 1, 4, 5, generator=g) > 0.3).float()
    dst = (torch.rand(1, 1, 4, 5, generator=g) > 0.3).float()
    before = _snap(image, probs, src, dst)
    r = 1
    k = gaussian_kernel([(image, 0.5)], radius=r, xy_sigma=2.0)
    total, ltot = 0.0, 0.0
    for y in range(4):
        for x in range(5):
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    yy, xx = y + dy, x + dx
                    if not (0 <= yy < 4 and 0 <= xx < 5):
                        continue
                    kij = k[0, (dy + r) * 3 + dx + r, y, x] * src[0, 0, y, x] * dst[0, 0, yy, xx]
                    total += float(kij * (1 - (probs[0, :, y, x] * probs[0, :, yy, xx]).sum()))
                    ltot += float(kij * (probs[0, :, y, x] - probs[0, :, yy, xx]).abs().sum())
    n = float(src.sum())
    assert potts_loss(probs, k, src, dst).item() == pytest.approx(total / n, rel=1e-5)
    assert l1_pairwise_loss(probs, k, src, dst).item() == pytest.approx(ltot / n, rel=1e-5)
    gcrf = gated_crf_loss(probs, image, radius=1, xy_sigma=2.0, rgb_sigma=0.5, mask_src=src, mask_dst=dst)
    assert gcrf.item() == pytest.approx(total / n, rel=1e-5)
    assert _unchanged(before, image, probs, src, dst)


def test_potts_prefers_the_true_edge_and_deep_features_separate_same_colour():
    # two flat regions split at column 8 of a 16x16 image
    image = torch.zeros(1, 3, 16, 16)
    image[..., 8:] = 1.0
    losses = []
    for split in (8, 9, 10, 12):
        fg = torch.zeros(1, 1, 16, 16)
        fg[..., split:] = 1
        probs = torch.cat([1 - fg, fg], 1)
        losses.append(gated_crf_loss(probs, image, radius=3, xy_sigma=6.0, rgb_sigma=0.1).item())
    assert losses[0] == pytest.approx(0, abs=1e-6) and losses == sorted(losses) and losses[1] > 0
    # camouflage: same colour everywhere, deep features = the true regions
    grey = torch.full((1, 3, 16, 16), 0.5)
    deep = torch.cat([torch.zeros(1, 1, 16, 8), torch.ones(1, 1, 16, 8)], 3)
    true_fg, shifted_fg = torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)
    true_fg[..., 8:], shifted_fg[..., 11:] = 1, 1
    true_p, shift_p = torch.cat([1 - true_fg, true_fg], 1), torch.cat([1 - shifted_fg, shifted_fg], 1)
    k_rgb = gaussian_kernel([(grey, 0.1)], radius=3, xy_sigma=6.0)
    k_deep = gaussian_kernel([(grey, 0.1), (deep, 0.1)], radius=3, xy_sigma=6.0)
    assert potts_loss(true_p, k_rgb) > 0 and potts_loss(shift_p, k_rgb) > 0
    assert potts_loss(true_p, k_deep) < 1e-6 < potts_loss(shift_p, k_deep)


def test_kernel_detach_and_gradcheck():
    deep = torch.rand(1, 2, 4, 4, requires_grad=True)
    k = gaussian_kernel([(deep, 0.5)], radius=1)
    assert not k.requires_grad  # dynamic kernel: features are not trained through it
    assert gaussian_kernel([(deep, 0.5)], radius=1, detach=False).requires_grad
    g = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, 5, 5, generator=g, dtype=torch.float64)
    k = gaussian_kernel([(image, 0.5)], radius=1, xy_sigma=2.0)
    p = torch.rand(1, 2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: potts_loss(x.softmax(1), k), (p,))
    assert torch.autograd.gradcheck(lambda x: l1_pairwise_loss(x.softmax(1) + 1e-3 * x, k), (p,))


def test_neighbours_layout():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    n = neighbours(x, 1)
    assert n.shape == (1, 1, 9, 3, 3)
    assert n[0, 0, :, 1, 1].tolist() == list(range(9))  # centre pixel sees the whole image in raster order
    assert n[0, 0, 0, 0, 0] == 0 and n[0, 0, 8, 0, 0] == 4  # top-left: padded up-left, (1, 1) down-right


# ---------------------------------------------------------------------------- partial labels


def test_balanced_partial_cross_entropy_by_hand():
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 1, 0, 1] = math.log(3.0)  # p(class 1) at pixel 1 = 3 / 5
    target = torch.tensor([[[0, 1, 2, IGNORE]]])
    before = _snap(logits, target)
    bg = math.log(3.0)  # pixel 0: uniform over 3
    fg = (-math.log(3 / 5) + math.log(3.0)) / 2  # pixels 1 and 2
    assert balanced_partial_cross_entropy(logits, target).item() == pytest.approx(bg + fg)
    assert balanced_partial_cross_entropy(logits, torch.full_like(target, IGNORE)).item() == 0
    assert _unchanged(before, logits, target)


def test_partial_bce_by_hand():
    logits = torch.tensor([[[[0.0, math.log(3.0), 0.0, 5.0]]]])  # [1, 1, 1, 4]
    target = torch.tensor([[[1, 1, 0, IGNORE]]])
    before = _snap(logits, target)
    l0, l1, l2 = math.log(2.0), -math.log(0.75), math.log(2.0)
    assert partial_bce(logits, target).item() == pytest.approx((l0 + l1 + l2) / 3)
    assert partial_bce(logits, target, balance=True).item() == pytest.approx((l0 + l1) / 2 + l2)
    assert partial_bce(logits[:, 0], torch.full_like(target, IGNORE)).item() == 0
    with pytest.raises(ValueError, match="only 0, 1"):
        partial_bce(logits, torch.tensor([[[2, 1, 0, 0]]]))
    assert _unchanged(before, logits, target)


def test_box_tightness_by_hand():
    probs = torch.zeros(1, 2, 3, 3)
    fg = torch.tensor([[0.5, 0.25, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.2]])
    probs[0, 1], probs[0, 0] = fg, 1 - fg
    box = Box(0, 0, 2, 2, 0)  # rows 0-1, cols 0-1
    before = _snap(probs)
    # bags: row 0 max .5, row 1 max 1, col 0 max .5, col 1 max 1; outside: .0, .0, .0, .0, .2
    pos = (2 * -math.log(0.5)) / 4
    neg = -math.log(0.8) / 5
    assert box_tightness_loss(probs, [[box]]).item() == pytest.approx(pos + neg, rel=1e-5)
    assert box_tightness_loss(probs, [[]]).item() == 0
    with pytest.raises(ValueError, match="empty"):
        box_tightness_loss(probs, [[Box(3, 0, 3, 2, 0)]])
    assert _unchanged(before, probs)
    perfect = torch.zeros(1, 2, 3, 3)
    perfect[0, 1, 0:2, 0:2] = 1
    perfect[0, 0] = 1 - perfect[0, 1]
    assert box_tightness_loss(perfect, [[box]]).item() == pytest.approx(0, abs=1e-5)


def test_ssim_l1_consistency():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 1, 6, 6, generator=g)
    b = torch.rand(2, 1, 6, 6, generator=g)
    before = _snap(a, b)
    assert ssim_l1_consistency(a, a.clone()).item() == pytest.approx(0, abs=1e-6)
    assert torch.allclose(ssim(a, a), torch.ones_like(a))
    # constant maps: SSIM = (2·0.2·0.6 + C1) / (0.04 + 0.36 + C1) (no variance), L1 = 0.4
    c1 = 0.01**2
    s = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    x, y = torch.full((1, 1, 4, 4), 0.2, dtype=torch.float64), torch.full((1, 1, 4, 4), 0.6, dtype=torch.float64)
    assert ssim_l1_consistency(x, y).item() == pytest.approx(0.85 * (1 - s) / 2 + 0.15 * 0.4, rel=1e-5)
    assert ssim_l1_consistency(a, b) > 0
    assert _unchanged(before, a, b)
    with pytest.raises(ValueError, match="shape"):
        ssim_l1_consistency(a, b[:, :, :3])


def test_losses_repeatable_on_one_sample():
    """Calling every loss twice on the same inputs gives the same value (guards SCWSSOD's in-place σ)."""
    g = torch.Generator().manual_seed(4)
    sample = {"image": torch.rand(1, 3, 8, 8, generator=g), "probs": torch.rand(1, 2, 8, 8, generator=g).softmax(1)}
    before = _snap(*sample.values())
    runs = [
        [
            gated_crf_loss(sample["probs"], sample["image"], radius=2).item(),
            l1_pairwise_loss(sample["probs"], gaussian_kernel([(sample["image"], 0.1)], radius=2, xy_sigma=6)).item(),
        ]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert _unchanged(before, *sample.values())


def test_matches_the_method_notes_numpy_reference():
    """The brief's independent numpy measurement (32x32, split at column 16, noise 0.02, r 5, σ_xy 6, σ_rgb 0.1):
    Potts 0 / 3.79 / 5.70 / 6.08 and L1 twice that for masks split at 16 / 18 / 20 / 24; uniform 0.5: Potts 31.7,
    L1 0. The noise draw differs from the reference's, hence the 3 % tolerance."""
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 1
    image = image + 0.02 * torch.randn(1, 3, 32, 32, generator=g)
    k = gaussian_kernel([(image, 0.1)], radius=5, xy_sigma=6.0)
    for split, want in ((16, 0.0), (18, 3.79), (20, 5.70), (24, 6.08)):
        fg = torch.zeros(1, 1, 32, 32)
        fg[..., split:] = 1
        probs = torch.cat([1 - fg, fg], 1)
        assert potts_loss(probs, k).item() == pytest.approx(want, rel=0.03, abs=1e-6)
        assert l1_pairwise_loss(probs, k).item() == pytest.approx(2 * want, rel=0.03, abs=1e-6)
    half = torch.full((1, 2, 32, 32), 0.5)
    assert potts_loss(half, k).item() == pytest.approx(31.7, rel=0.03)
    assert l1_pairwise_loss(half, k).item() == 0


def test_energy_gate_and_ssim_gradcheck():
    probs = torch.tensor([[[[0.9, 0.5]], [[0.1, 0.5]]]], requires_grad=True)  # [1, 2, 1, 2]
    gate = energy_gate(probs, torch.tensor([[[0, IGNORE]]]))
    assert gate.tolist() == [[[[pytest.approx(0.1), 1.0]]]] and not gate.requires_grad
    g = torch.Generator().manual_seed(5)
    a = torch.rand(1, 1, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.rand(1, 1, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ssim_l1_consistency, (a, b))
