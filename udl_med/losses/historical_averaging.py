"""Historical averaging: a penalty pulling a network's parameters towards their running average.

Salimans et al. 2016, "Improved Techniques for Training GANs"
(https://arxiv.org/abs/1606.03498), section 3.3: each player adds
``|| theta - (1/t) sum_{i=1}^t theta[i] ||^2`` to its cost, where ``theta[i]`` is the
value of its parameters at past time ``i``. The average is kept online (no history is
stored), as buffers, so it is saved and restored with the method's checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _buffer_name(param_name: str) -> str:
    return "mean__" + param_name.replace(".", "__")


class HistoricalAverage(nn.Module):
    """Online mean ``(1/t) sum_i theta[i]`` of a module's parameters and the penalty against it.

    The constructor only reads the parameters' names and shapes: the history is empty
    until the first :meth:`update` (call it after each optimizer step of ``module``).

    Args:
        module: the network whose parameters are averaged (not stored as a submodule).

    Example::

        avg = HistoricalAverage(discriminator)
        loss_d = gan_loss.discriminator_loss(...) + weight * avg.penalty(discriminator)
        opt.step("discriminator", loss_d)
        avg.update(discriminator)
    """

    count: Tensor

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.names: tuple[str, ...] = tuple(name for name, _ in module.named_parameters())
        if not self.names:
            raise ValueError("module has no parameters to average")
        for name, p in module.named_parameters():
            self.register_buffer(_buffer_name(name), torch.zeros_like(p, memory_format=torch.contiguous_format).detach())
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def mean(self, name: str) -> Tensor:
        """The running average of parameter ``name`` (zeros before the first update)."""
        return getattr(self, _buffer_name(name))

    def _pairs(self, module: nn.Module) -> list[tuple[Tensor, Tensor]]:
        params = dict(module.named_parameters())
        if tuple(params) != self.names:
            raise ValueError("module's parameters differ from those HistoricalAverage was built for")
        pairs = []
        for name in self.names:
            p, m = params[name], self.mean(name)
            if p.shape != m.shape:
                raise ValueError(f"parameter {name} has shape {tuple(p.shape)}, the average {tuple(m.shape)}")
            pairs.append((p, m))
        return pairs

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Add the current parameters of ``module`` to the average: ``mean += (theta - mean) / t``."""
        pairs = self._pairs(module)
        self.count += 1
        t = float(self.count.item())
        for p, m in pairs:
            m.add_((p.detach().to(m.dtype) - m) / t)

    def penalty(self, module: nn.Module) -> Tensor:
        """``sum over parameters of ||theta - mean||_2^2``, differentiable in ``theta``; 0 before any update."""
        pairs = self._pairs(module)
        if int(self.count.item()) == 0:
            return pairs[0][0].new_zeros((), dtype=torch.float32)
        total = pairs[0][0].new_zeros((), dtype=torch.float32)
        for p, m in pairs:
            total = total + ((p.float() - m.float()) ** 2).sum()
        return total
