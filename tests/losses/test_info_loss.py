"""InfoGAN's mutual-information loss against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from udl_med.losses.info import InfoCodes, draw_codes, info_loss


def test_info_loss_by_hand() -> None:
    # K = 2 categorical, N = 1 continuous, two items
    q = torch.tensor([[2.0, 0.0, 0.5, 0.0], [0.0, 1.0, -0.5, math.log(4.0)]])
    codes = InfoCodes(categorical=torch.tensor([0, 0]), continuous=torch.tensor([[0.5], [0.5]]))
    ce = 0.5 * (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(1 / (1 + math.e)))
    nll0 = 0.5 * math.log(2 * math.pi)  # mean 0.5 = code, variance 1
    nll1 = 0.5 * (math.log(2 * math.pi) + math.log(4.0) + 1.0**2 / 4.0)  # mean -0.5, variance 4
    terms = info_loss(q, codes, k=2)
    assert float(terms.categorical) == pytest.approx(ce)
    assert float(terms.continuous) == pytest.approx(0.5 * (nll0 + nll1))
    assert float(terms.loss) == pytest.approx(ce + 0.5 * (nll0 + nll1))
    assert float(terms.lower_bound) == pytest.approx(math.log(2) + math.log(2) - float(terms.loss))
    with pytest.raises(ValueError, match="Q's output"):
        info_loss(q[:, :3], codes, k=2)


def test_codes_are_one_hot_then_uniform() -> None:
    codes = draw_codes(500, 3, 2, torch.Generator().manual_seed(0))
    x = codes.as_input(3)
    assert x.shape == (500, 5)
    assert torch.equal(x[:, :3].argmax(1), codes.categorical) and torch.all(x[:, :3].sum(1) == 1)
    assert float(x[:, 3:].min()) >= -1 and float(x[:, 3:].max()) <= 1 and abs(float(x[:, 3:].mean())) < 0.1
    assert set(codes.categorical.tolist()) == {0, 1, 2}
    only_continuous = draw_codes(4, 0, 2)
    assert only_continuous.as_input(0).shape == (4, 2)


def test_without_a_categorical_code_the_codes_are_long_zeros() -> None:
    # InfoCodes' contract: `categorical` is a long class index per item, so code that one-hots or compares it
    # (F.one_hot, cross_entropy, ==) works whatever K is; with K = 0 every item's class is 0 (issue 26, losses seed 1)
    codes = draw_codes(5, 0, 3, torch.Generator().manual_seed(0))
    assert codes.categorical.dtype == torch.long and codes.categorical.tolist() == [0] * 5
    assert torch.equal(F.one_hot(codes.categorical, 1), torch.ones(5, 1, dtype=torch.long))
    assert codes.continuous.shape == (5, 3) and codes.continuous.dtype == torch.float32


def test_as_input_is_k_wide_even_when_the_batch_misses_the_top_values() -> None:
    codes = InfoCodes(categorical=torch.tensor([0, 1]), continuous=torch.tensor([[0.25], [-0.5]]))
    assert codes.as_input(4).tolist() == [[1.0, 0.0, 0.0, 0.0, 0.25], [0.0, 1.0, 0.0, 0.0, -0.5]]
