"""GAN wrappers: flattened MLPs keep the item shape, a packed D scores whole groups, the swap history survives a state dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from udl_med.nets.gan_wrappers import Flat, Packed, SwapHistory


class Recorder(nn.Module):
    """``(x, labels) -> x`` that keeps what it saw, with ``forward_features`` and ``set_reference``."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x, labels=None):
        self.seen.append(x)
        return x.sum(1, keepdim=True).flatten(1)[:, :1]

    def forward_features(self, x, labels=None):
        return self(x, labels), x

    def set_reference(self, x, labels=None):
        self.seen.append(x)


@pytest.mark.parametrize("shape", [(2,), (1, 4, 4), (2, 3, 3, 3)])
def test_flat_generator_reshapes_and_flat_discriminator_flattens(shape: tuple[int, ...]) -> None:
    n = int(torch.tensor(shape).prod())
    g = Flat(nn.Linear(5, n), shape, "generator")
    g.net.forward = lambda z, labels=None: nn.Linear.forward(g.net, z)  # an MLP generator takes (z, labels)
    assert g(torch.randn(3, 5)).shape == (3, *shape)
    inner = Recorder()
    d = Flat(inner, shape, "discriminator")
    x = torch.randn(3, *shape)
    d(x)
    assert inner.seen[-1].shape == (3, n) and torch.equal(inner.seen[-1], x.flatten(1))
    _, features = d.forward_features(x)
    assert features.shape == (3, n)
    d.set_reference(x)
    assert inner.seen[-1].shape == (3, n)
    with pytest.raises(ValueError, match="role"):
        Flat(inner, shape, "critic")


def test_packed_stacks_m_consecutive_items_along_the_channels() -> None:
    inner = Recorder()
    packed = Packed(inner, 3)
    x = torch.arange(6 * 2 * 4, dtype=torch.float32).reshape(6, 2, 4)  # 6 items, 2 channels
    packed(x)
    seen = inner.seen[-1]
    assert seen.shape == (2, 6, 4)
    assert torch.equal(seen[0], torch.cat([x[0], x[1], x[2]])) and torch.equal(seen[1], torch.cat([x[3], x[4], x[5]]))
    packed.forward_features(x)
    assert inner.seen[-1].shape == (2, 6, 4)
    with pytest.raises(ValueError, match="model.pack 3"):
        packed(x[:4])
    with pytest.raises(ValueError, match="pack"):
        Packed(inner, 0)


def test_swap_history_round_trips_through_a_state_dict() -> None:
    history = SwapHistory()
    history.snapshots = [{"step": 4, "weights": {"w": torch.ones(2)}, "optimizer": {"d": {"state": {}}}}]
    history.live, history.until = {"weights": {"w": torch.zeros(2)}, "optimizer": {}}, 7
    other = SwapHistory()
    other.load_state_dict(history.state_dict())
    assert other.until == 7 and other.snapshots[0]["step"] == 4
    assert torch.equal(other.snapshots[0]["weights"]["w"], torch.ones(2)) and torch.equal(other.live["weights"]["w"], torch.zeros(2))
    empty = SwapHistory()
    empty.load_state_dict(SwapHistory().state_dict())
    assert empty.live is None and empty.until == -1 and empty.snapshots == []
