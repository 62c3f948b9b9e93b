"""Minibatch discrimination: values by hand and by loops, duplicates, a batch of one."""

from __future__ import annotations

import math

import pytest
import torch

from udl_med.nets.minibatch_discrimination import MinibatchDiscrimination

torch.set_num_threads(1)


def test_hand_values_one_kernel() -> None:
    layer = MinibatchDiscrimination(1, num_kernels=1, kernel_dims=1)
    with torch.no_grad():
        layer.T.fill_(1.0)  # M_i = x_i
    x = torch.tensor([[0.0], [1.0], [3.0]])
    out = layer(x)
    assert out.shape == (3, 2) and torch.equal(out[:, :1], x)
    e = math.exp
    assert out[:, 1].tolist() == pytest.approx([e(-1) + e(-3), e(-1) + e(-2), e(-3) + e(-2)], rel=1e-6)


def test_matches_loop_computation() -> None:
    torch.manual_seed(0)
    a, b, c, n = 4, 3, 2, 5
    layer = MinibatchDiscrimination(a, num_kernels=b, kernel_dims=c, init_std=0.5)
    x = torch.randn(n, a)
    t = layer.T.detach()
    expected = torch.zeros(n, b)
    for i in range(n):
        m_i = (x[i] @ t.reshape(a, b * c)).reshape(b, c)
        for j in range(n):
            if j == i:
                continue
            m_j = (x[j] @ t.reshape(a, b * c)).reshape(b, c)
            for k in range(b):
                expected[i, k] += math.exp(-(m_i[k] - m_j[k]).abs().sum().item())
    assert torch.allclose(layer.closeness(x), expected, atol=1e-6)
    out = layer(x)
    assert out.shape == (n, a + b) and layer.out_features == a + b
    out.sum().backward()
    assert layer.T.grad is not None


def test_duplicates_and_batch_of_one() -> None:
    torch.manual_seed(1)
    layer = MinibatchDiscrimination(6, num_kernels=4, kernel_dims=3, init_std=1.0)
    a, b = torch.randn(1, 6), torch.randn(1, 6)
    distinct = layer.closeness(torch.cat([a, b]))
    duplicated = layer.closeness(torch.cat([a, a]))
    assert not torch.allclose(distinct, duplicated)
    assert torch.allclose(duplicated, torch.ones(2, 4))  # exp(0) from the one other copy
    assert torch.allclose(layer.closeness(torch.cat([a, a, a])), torch.full((3, 4), 2.0))
    assert torch.equal(layer.closeness(a), torch.zeros(1, 4))  # the self-pair is excluded
    with pytest.raises(ValueError, match="features"):
        layer(torch.randn(2, 5))
    with pytest.raises(ValueError, match="num_kernels"):
        MinibatchDiscrimination(6, num_kernels=0)
