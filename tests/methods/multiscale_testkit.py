"""A stand-in for the engine's optimisation object, for driving train_step by hand."""

from __future__ import annotations

from contextlib import nullcontext

import torch


class HandOpt:
    """``opt.step`` / ``opt.autocast`` / ``opt.global_step`` over a method's own optimizers."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        self.global_step = 0
        self.stepped: list[str] = []

    def step(self, name: str, loss: torch.Tensor, retain_graph: bool = False) -> None:
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward(retain_graph=retain_graph)
        optimizer.step()
        self.stepped.append(name)

    def autocast(self):
        return nullcontext()


def batch(spatial_dims: int, size: int, n: int = 4, num_classes: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"image": torch.rand(n, 1, *([size] * spatial_dims), generator=g) * 2 - 1, "label": torch.arange(n) % num_classes}
