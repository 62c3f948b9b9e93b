"""Learning-rate schedules, EMA, clipping, and the data order that makes resume exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from udl_med.engine.data_order import StepSampler
from udl_med.engine.optimization import EMA, EngineOptimization, lr_factor


def test_linear_decay_is_cyclegans_schedule() -> None:
    total = 100
    assert lr_factor("linear_decay", 0, total, 0.5) == 1.0
    assert lr_factor("linear_decay", 49, total, 0.5) == 1.0
    assert lr_factor("linear_decay", 75, total, 0.5) == pytest.approx(0.5)
    assert lr_factor("linear_decay", 100, total, 0.5) == 0.0
    assert lr_factor("cosine", 0, total, 0.5) == 1.0 and lr_factor("cosine", 100, total, 0.5) == pytest.approx(0.0)
    assert lr_factor("constant", 77, total, 0.5) == 1.0


def test_step_clips_gradients() -> None:
    net = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    opt = EngineOptimization({"net": optimizer}, torch.device("cpu"), grad_clip=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    loss = 1000.0 * net(torch.ones(2, 4)).sum()
    opt.step("net", loss)
    change = float(torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(net.parameters(), before, strict=True))))
    assert change == pytest.approx(0.1, rel=1e-4)  # lr 1 x clipped norm 0.1
    with pytest.raises(KeyError, match="no optimizer named"):
        opt.step("other", loss)


def test_ema_tracks_and_swaps_back() -> None:
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.g = nn.Linear(2, 2)

    holder = Holder()
    ema = EMA(holder, ("g",), decay=0.5)
    live = holder.g.weight.detach().clone()
    with torch.no_grad():
        holder.g.weight.add_(1.0)
    ema.update(holder)  # first update copies, later ones average
    with torch.no_grad():
        holder.g.weight.add_(1.0)
    ema.update(holder)
    averaged = ema.averaged_state(holder)["g.weight"]
    assert torch.allclose(averaged, live + 1.5)
    current = holder.g.weight.detach().clone()
    with ema.swapped_in(holder):
        assert torch.allclose(holder.g.weight, live + 1.5)
    assert torch.equal(holder.g.weight, current)


def test_ema_start_share_is_what_the_average_keeps_of_the_first_weights() -> None:
    holder = nn.Module()
    holder.g = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        holder.g.weight.fill_(1.0)
    ema = EMA(holder, ("g",), decay=0.9)
    ema.update(holder)  # copies the starting weights
    with torch.no_grad():
        holder.g.weight.zero_()
    for _ in range(29):
        ema.update(holder)
    kept = ema.averaged_state(holder)["g.weight"]
    assert torch.allclose(kept, torch.full_like(kept, EMA.start_share(0.9, 30)))
    assert EMA.start_share(0.9, 30) == pytest.approx(0.9**29)
    assert EMA.start_share(0.999, 1500) == pytest.approx(0.22, abs=0.005)  # the warning's example
    assert EMA.start_share(0.5, 0) == 1.0


def test_sampler_resumes_at_any_step() -> None:
    full = StepSampler(n_items=10, batch_size=3, seed=7)
    it = iter(full)
    sequence = [next(it) for _ in range(3 * 8)]  # 8 batches, crossing epochs (3 batches per epoch)
    resumed = StepSampler(n_items=10, batch_size=3, seed=7, start_batch=5)
    it = iter(resumed)
    assert [next(it) for _ in range(3 * 3)] == sequence[3 * 5 :]
    assert len({i for i, _ in sequence[:9]}) == 9  # one epoch visits distinct items


def test_sampler_shards_between_processes() -> None:
    rank0 = iter(StepSampler(12, 2, seed=1, rank=0, world_size=2))
    rank1 = iter(StepSampler(12, 2, seed=1, rank=1, world_size=2))
    a = {next(rank0)[0] for _ in range(6)}
    b = {next(rank1)[0] for _ in range(6)}
    assert not a & b and len(a | b) == 12
    with pytest.raises(ValueError, match="larger than"):
        StepSampler(3, 4, seed=0)
