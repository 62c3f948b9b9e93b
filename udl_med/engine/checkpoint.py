"""Checkpoints: everything a run needs to continue exactly, written atomically.

A checkpoint is a plain dictionary of tensors and numbers (no pickled modules), so it
loads with ``torch.load(..., weights_only=True)``: the method name, the resolved
config, every state dict (method, optimizers, schedulers, grad scaler, EMA), the step
and the RNG states. The data position is the step itself (see ``data_order``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udl_med.io_utils import atomic_write  # re-exported: checkpoints were its first user

__all__ = ["atomic_write", "atomic_torch_save", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]

CHECKPOINT_FORMAT = 1


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def rng_state() -> dict[str, Any]:
    """Every RNG the run uses, as tensors and ints (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy_key": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(("MT19937", state["numpy_key"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def save_checkpoint(path: Path, **content: Any) -> None:
    """Save a checkpoint dictionary (adds the format version and RNG states)."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "rng": rng_state(), **content}, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (never unpickles code)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a udl-med checkpoint (format {CHECKPOINT_FORMAT})")
    return checkpoint
