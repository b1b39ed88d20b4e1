"""Co-attention math (MCIS Sec. 3.2) against hand computation; shared/unshared label sets."""

from __future__ import annotations

import math

import pytest
import torch

from weakseg.cams.coattention import affinity, co_attend, co_attention, shared_labels, unshared_labels


def _hand(f_m: torch.Tensor, f_n: torch.Tensor, w: torch.Tensor):
    """Loops over positions: S[i, j] = Σ_ab F_m[a, i] W[b, a] F_n[b, j] (Linear: x ↦ W x)."""
    c, pm = f_m.shape
    _, pn = f_n.shape
    s = [
        [sum(f_m[a, i] * w[b, a] * f_n[b, j] for a in range(c) for b in range(c)) for j in range(pn)] for i in range(pm)
    ]
    # A: softmax over m positions (each column j); B: softmax over n positions (each row i)
    a = [[math.exp(s[i][j]) / sum(math.exp(s[k][j]) for k in range(pm)) for j in range(pn)] for i in range(pm)]
    b = [[math.exp(s[i][j]) / sum(math.exp(s[i][k]) for k in range(pn)) for j in range(pn)] for i in range(pm)]
    f_n_co = [[sum(f_m[ch, i] * a[i][j] for i in range(pm)) for j in range(pn)] for ch in range(c)]
    f_m_co = [[sum(f_n[ch, j] * b[i][j] for j in range(pn)) for i in range(pm)] for ch in range(c)]
    return torch.tensor(s), torch.tensor(f_m_co), torch.tensor(f_n_co)


def test_co_attention_matches_hand_computation():
    f_m = torch.tensor([[1.0, 0.0], [0.5, 2.0]])  # C=2, m has 2 positions
    f_n = torch.tensor([[0.0, 1.0, -1.0], [1.0, 0.5, 0.0]])  # n has 3 positions
    w = torch.tensor([[0.3, -0.2], [0.7, 0.1]])  # not symmetric, so a transposition error would show
    s_ref, m_ref, n_ref = _hand(f_m, f_n, w)
    fm, fn = f_m.view(1, 2, 1, 2), f_n.view(1, 2, 1, 3)
    torch.testing.assert_close(affinity(fm, fn, w)[0], s_ref)
    m_co, n_co = co_attention(fm, fn, w)
    assert m_co.shape == fm.shape and n_co.shape == fn.shape
    torch.testing.assert_close(m_co.view(2, 2), m_ref)
    torch.testing.assert_close(n_co.view(2, 3), n_ref)
    # the same W as an nn.Linear(C, C, bias=False) applied to the features of m
    lin = torch.nn.Linear(2, 2, bias=False)
    lin.weight.data = w
    torch.testing.assert_close(affinity(fm, fn, w)[0], lin(f_m.t()) @ f_n)


def test_softmax_axes_give_convex_combinations():
    # one-hot features of m: F_n^co = F_m A shows A itself, whose columns must sum to 1 over m positions
    f_m = torch.eye(4).view(1, 4, 2, 2)
    f_n = torch.randn(1, 4, 3, 1)
    w = torch.randn(4, 4)
    _, n_co = co_attention(f_m, f_n, w)
    torch.testing.assert_close(n_co.flatten(2).sum(1), torch.ones(1, 3))
    f_n1 = torch.eye(3).view(1, 3, 3, 1)
    f_m1 = torch.randn(1, 3, 2, 2)
    m_co, _ = co_attention(f_m1, f_n1, torch.randn(3, 3))
    torch.testing.assert_close(m_co.flatten(2).sum(1), torch.ones(1, 4))


def test_swapping_images_transposes_w():
    f_m, f_n, w = torch.randn(2, 5, 3, 3), torch.randn(2, 5, 2, 4), torch.randn(5, 5)
    m_co, n_co = co_attention(f_m, f_n, w)
    n_co2, m_co2 = co_attention(f_n, f_m, w.t())
    torch.testing.assert_close(m_co, m_co2)
    torch.testing.assert_close(n_co, n_co2)
    sym = w + w.t()
    a, b = co_attention(f_m, f_n, sym)
    b2, a2 = co_attention(f_n, f_m, sym)
    torch.testing.assert_close(a, a2)
    torch.testing.assert_close(b, b2)


def test_co_attend_is_one_direction():
    f_m, f_n, w = torch.randn(3, 6, 4, 4), torch.randn(3, 6, 2, 5), torch.randn(6, 6)
    m_co, n_co = co_attention(f_m, f_n, w)
    torch.testing.assert_close(co_attend(f_n, f_m, w), m_co)
    torch.testing.assert_close(co_attend(f_m, f_n, w.t()), n_co)  # n in the role of m: W transposed


def test_gradients_reach_w_and_both_images():
    f_m = torch.randn(1, 3, 2, 2, requires_grad=True)
    f_n = torch.randn(1, 3, 2, 2, requires_grad=True)
    w = torch.randn(3, 3, requires_grad=True)
    m_co, n_co = co_attention(f_m, f_n, w)
    (m_co.square().sum() + n_co.sum()).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (f_m, f_n, w))


def test_mismatched_channels_raise():
    with pytest.raises(ValueError):
        co_attention(torch.randn(1, 3, 2, 2), torch.randn(1, 4, 2, 2), torch.randn(3, 3))


def test_shared_and_unshared_labels():
    y_m = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    y_n = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    assert shared_labels(y_m, y_n).tolist() == [[1, 0, 0, 1], [0, 1, 0, 0]]
    assert unshared_labels(y_m, y_n).tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    assert unshared_labels(y_n, y_m).tolist() == [[0, 0, 1, 0], [0, 0, 1, 0]]
    assert torch.equal(shared_labels(y_m, y_n), shared_labels(y_n, y_m))
    # shared + unshared = own labels
    torch.testing.assert_close(shared_labels(y_m, y_n) + unshared_labels(y_m, y_n), y_m)
