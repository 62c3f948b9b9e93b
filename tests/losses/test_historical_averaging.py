"""Historical averaging: the online mean equals the mean of the history; the penalty by hand; checkpointing."""

from __future__ import annotations

import pytest
import torch

from udl_med.losses.historical_averaging import HistoricalAverage


def test_average_is_mean_of_history_and_penalty_by_hand() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    avg = HistoricalAverage(net)
    assert avg.penalty(net).item() == 0.0  # no history yet
    history = []
    for _ in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        history.append({k: v.detach().clone() for k, v in net.named_parameters()})
        avg.update(net)
    assert int(avg.count) == 5
    for name, _ in net.named_parameters():
        expected = torch.stack([h[name] for h in history]).mean(0)
        assert torch.allclose(avg.mean(name), expected, atol=1e-6)
    # penalty: sum of squared differences to the mean, by hand on the bias of the last layer
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(avg.mean(name))
        net[1].bias.add_(3.0)
        net[0].weight[0, 0] -= 2.0
    pen = avg.penalty(net)
    assert pen.item() == pytest.approx(9.0 + 4.0, rel=1e-5)
    pen.backward()  # d/d theta ||theta - m||^2 = 2 (theta - m)
    assert net[1].bias.grad.item() == pytest.approx(6.0, rel=1e-5)


def test_state_dict_round_trip_and_shape_checks() -> None:
    net = torch.nn.Linear(2, 2)
    avg = HistoricalAverage(net)
    avg.update(net)
    avg.update(net)
    fresh = HistoricalAverage(net)
    fresh.load_state_dict(avg.state_dict())
    assert int(fresh.count) == 2 and torch.equal(fresh.mean("weight"), net.weight.detach())
    with pytest.raises(ValueError, match="differ"):
        avg.penalty(torch.nn.Linear(2, 3, bias=False))
    with pytest.raises(ValueError, match="shape"):
        avg.update(torch.nn.Linear(3, 2))
