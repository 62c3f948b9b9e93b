"""The engine's side of an optimizer step: precision, gradient averaging, clipping, schedules, EMA.

A method calls ``opt.step(name, loss)`` inside its ``train_step``; everything that is
the same for every method (mixed precision, distributed gradient averaging, clipping)
happens here, once. Gradients are averaged across processes with an all-reduce after
backward, the approach of StyleGAN2-ADA: unlike wrapping each network in
``DistributedDataParallel`` it works for steps that call a network several times,
freeze one network while stepping another (GANs), or run several optimizers.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from udl_med.engine.config import TrainConfig


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for ``train.amp`` on ``device`` (None: full precision)."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


class EngineOptimization:
    """Implements :class:`udl_med.methods.base.Optimization` for the engine.

    Args:
        optimizers: the method's optimizers by name.
        device: where the method lives.
        amp_dtype: autocast dtype, or None for full precision.
        grad_clip: maximum gradient norm per optimizer, or None.
    """

    def __init__(
        self,
        optimizers: dict[str, torch.optim.Optimizer],
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        grad_clip: float | None = None,
    ) -> None:
        self.optimizers = optimizers
        self.device = device
        self.amp_dtype = amp_dtype
        self.grad_clip = grad_clip
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.global_step = 0
        self._draw: Callable[[], dict[str, Any]] | None = None
        self._extra_left = 0

    def begin_step(self, global_step: int, draw: Callable[[], dict[str, Any]], extra_batches: int) -> None:
        """The engine, before ``train_step``: the step index and where ``next_batch`` draws from."""
        self.global_step = global_step
        self._draw = draw
        self._extra_left = extra_batches

    def unused_batches(self) -> int:
        """Batches the step declared but did not draw; the engine skips them to keep the data order."""
        return self._extra_left

    def next_batch(self) -> dict[str, Any]:
        """A fresh training batch; a step may draw ``method.batches_per_step() - 1`` of them."""
        if self._draw is None or self._extra_left <= 0:
            raise RuntimeError("train_step drew more batches than Method.batches_per_step() declares")
        self._extra_left -= 1
        return self._draw()

    def optimizer(self, name: str) -> torch.optim.Optimizer:
        if name not in self.optimizers:
            raise KeyError(f"no optimizer named {name!r}; the method has {sorted(self.optimizers)}")
        return self.optimizers[name]

    def snapshot(self, *names: str) -> dict[str, Any]:
        """Deep copies of the named optimizers' states (every optimizer when none is named)."""
        return {name: copy.deepcopy(self.optimizer(name).state_dict()) for name in names or self.optimizers}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Load optimizer states taken by :meth:`snapshot` (copied again, so a snapshot can be restored twice)."""
        for name, state in snapshot.items():
            self.optimizer(name).load_state_dict(copy.deepcopy(state))

    def autocast(self) -> AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _params(self, name: str) -> Iterator[Tensor]:
        for group in self.optimizers[name].param_groups:
            yield from group["params"]

    def step(self, name: str, loss: Tensor, retain_graph: bool = False) -> None:
        """Zero grads, back-propagate ``loss``, average across processes, clip, step optimizer ``name``."""
        optimizer = self.optimizer(name)
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward(retain_graph=retain_graph)
        if self.distributed or self.grad_clip is not None:
            params = [p for p in self._params(name) if p.grad is not None]
            if self.distributed:
                world = dist.get_world_size()
                for p in params:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad.div_(world)
            if self.grad_clip is not None:
                self.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()


def lr_factor(schedule: str, step: int, total: int, decay_start: float) -> float:
    """Learning-rate multiplier at ``step`` of ``total``.

    ``linear_decay`` is CycleGAN's schedule: constant for ``decay_start * total`` steps,
    then linearly to zero; ``cosine`` decays from 1 to 0 over the run.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "linear_decay":
        start = int(decay_start * total)
        if step < start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / max(1, total - start))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    raise ValueError(f"unknown lr_schedule {schedule!r}")


def build_schedulers(optimizers: dict[str, torch.optim.Optimizer], train: TrainConfig) -> dict[str, LambdaLR]:
    """One LambdaLR per optimizer following ``train.lr_schedule``; stepped once per training step."""

    def factor(step: int) -> float:
        return lr_factor(train.lr_schedule, step, train.steps, train.decay_start)

    return {name: LambdaLR(opt, factor) for name, opt in optimizers.items()}


class EMA:
    """Exponential moving averages of the method's ``ema_modules`` (e.g. a GAN generator)."""

    def __init__(self, method: nn.Module, names: tuple[str, ...], decay: float) -> None:
        self.averages = {
            name: AveragedModel(getattr(method, name), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
            for name in names
        }

    @staticmethod
    def start_share(decay: float, updates: int) -> float:
        """The starting weights' share of the average after ``updates`` updates: ``decay ** (updates - 1)``.

        The first update copies the weights and each later one keeps ``decay`` of the
        average, so a decay too slow for the run's length saves a model that is still
        partly its initialisation (0.999 over 1500 steps: 22%).
        """
        return decay ** max(updates - 1, 0)

    def update(self, method: nn.Module) -> None:
        for name, average in self.averages.items():
            average.update_parameters(getattr(method, name))

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        return {name: avg.state_dict() for name, avg in self.averages.items()}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        for name, avg in self.averages.items():
            avg.load_state_dict(state[name])

    def averaged_state(self, method: nn.Module) -> dict[str, Tensor]:
        """``method.state_dict()`` with the averaged modules' weights swapped in."""
        state = dict(method.state_dict())
        for name, avg in self.averages.items():
            for key, value in avg.module.state_dict().items():
                state[f"{name}.{key}"] = value
        return state

    @contextlib.contextmanager
    def swapped_in(self, method: nn.Module) -> Iterator[None]:
        """Evaluate with the averaged weights, then restore the live ones."""
        live = {k: v.clone() for k, v in method.state_dict().items()}
        method.load_state_dict(self.averaged_state(method))
        try:
            yield
        finally:
            method.load_state_dict(live)
