"""ImagePool: fills first, then swaps with probability 1/2, seeded, survives state_dict round trips."""

from __future__ import annotations

import pytest
import torch

from udl_med.losses.image_pool import ImagePool


def test_fills_then_mixes_history() -> None:
    pool = ImagePool(4, generator=torch.Generator().manual_seed(0))
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # while filling: the images themselves
    assert len(pool) == 4
    returned_old = 0
    for step in range(50):
        new = torch.full((4, 1, 1, 1), 100.0 + step)
        out = pool.query(new)
        assert out.shape == new.shape
        returned_old += int((out != new).sum())
        assert len(pool) == 4
    # about half of the 200 returned images come from the history
    assert 60 < returned_old < 140


def test_seeded_and_size_zero() -> None:
    def run(seed: int) -> torch.Tensor:
        pool = ImagePool(3, generator=torch.Generator().manual_seed(seed))
        return torch.cat([pool.query(torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(i))) for i in range(10)])

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    x = torch.randn(2, 1, 3, 3)
    assert ImagePool(0).query(x) is x
    with pytest.raises(ValueError, match="pool_size"):
        ImagePool(-1)


def test_state_dict_round_trip_resumes_exactly() -> None:
    pool = ImagePool(5)
    for i in range(4):
        pool.query(torch.full((2, 1, 3, 3, 3), float(i)))
    state = pool.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # the engine clones and saves tensors
    other = ImagePool(5)
    other.load_state_dict(state)
    assert len(other) == 5
    torch.manual_seed(3)
    a = pool.query(torch.full((2, 1, 3, 3, 3), 9.0))
    torch.manual_seed(3)
    b = other.query(torch.full((2, 1, 3, 3, 3), 9.0))
    assert torch.equal(a, b)
    empty = ImagePool(5)
    empty.load_state_dict(ImagePool(5).state_dict())
    assert len(empty) == 0
