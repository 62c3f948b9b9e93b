"""The ``reduction`` argument every udl-med loss takes: ``mean``, ``sum`` or ``none``."""

from __future__ import annotations

from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    """Return ``reduction``; ``ValueError`` lists the valid ones."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    return reduction


def reduce(x: Tensor, reduction: str) -> Tensor:
    """``x.mean()``, ``x.sum()`` or ``x`` itself (``none``: element-wise)."""
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x
