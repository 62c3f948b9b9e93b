"""A module in evaluation mode for the length of a block, its own mode restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in evaluation mode inside the block (no dropout, noise or batch statistics), back to its own mode after, also on error."""
    was_training = module.training
    module.train(False)
    try:
        yield module
    finally:
        module.train(was_training)
