"""In-process training on in-memory data: the engine's run in one call, for tests, probes and toy benchmarks.

A ``data.kind: memory`` run without MLflow (``tracking.enabled: false``) whose
datasets come from Python (:mod:`udl_med.data.memory`), so code that needs a trained
method does not run a loop of its own.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from udl_med import keys
from udl_med.engine.config import validate_config
from udl_med.engine.train import Trainer


class MemoryFit:
    """What :func:`fit_in_memory` hands back: the trained method, its per-step losses, the run.

    Attributes:
        method: the trained method, in eval mode.
        history: this run's losses after every step, ``[{name: value}]`` (a resumed run: its own steps).
        optimizers: the run's optimizers by name (their state as the last step left it).
        report: the engine's final report (``steps``, ``model_dir``, ``train/...``, ``eval/...``).
    """

    def __init__(self, method: Any, history: list[dict[str, float]], optimizers: dict[str, Any], report: dict[str, Any]) -> None:
        self.method = method
        self.history = history
        self.optimizers = optimizers
        self.report = report

    def losses(self, key: str = keys.LOSS) -> list[float]:
        """One loss per step: ``history[i][key]``."""
        return [h[key] for h in self.history]


def fit_in_memory(
    method: str,
    model: Any,
    train_set: Dataset,
    *,
    steps: int,
    batch_size: int,
    seed: int = 0,
    eval_set: Dataset | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    train: dict[str, Any] | None = None,
) -> MemoryFit:
    """Train the registered ``method`` on in-memory datasets with the engine, in this process.

    A ``data.kind: memory`` run without MLflow (``tracking.enabled: false``), evaluating
    and checkpointing only at the end unless ``train`` says otherwise: what tests, probes
    and toy benchmarks use instead of a loop of their own. The method is built by the
    engine after seeding with ``seed``, so ``torch.manual_seed(seed)`` followed by the
    method's constructor gives its initial weights.

    Args:
        method: a registered method name.
        model: its ``model:`` section, a dict or the method's ``Config``.
        train_set, eval_set: datasets of dict items (e.g. :class:`TensorItems`).
        steps: the run's total steps (a resumed run continues up to ``steps``).
        batch_size: items per step.
        seed: the run seed (initialisation and data order).
        output_dir: the run folder; None: a temporary folder removed afterwards.
        resume: continue the run in ``output_dir`` (exact: data order, optimizer state, RNG).
        train: further ``train:`` keys (``lr_schedule``, ``eval_every``, ``threads``...).

    Returns:
        a :class:`MemoryFit`.
    """
    if output_dir is None and resume:
        raise ValueError("resume needs the output_dir of the run to continue")
    model_section = model.model_dump() if hasattr(model, "model_dump") else dict(model or {})
    history: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="udl-med-fit-") if output_dir is None else nullcontext(str(output_dir)) as folder:
        config = validate_config(
            {
                "method": method,
                "seed": seed,
                "data": {"kind": "memory"},
                "model": model_section,
                "train": {"steps": steps, "batch_size": batch_size, "log_every": steps, "eval_every": steps, "checkpoint_every": steps, **(train or {})},
                "tracking": {"enabled": False, "log_model": False},
                "output_dir": str(folder),
            },
            f"<fit_in_memory {method}>",
        )
        trainer = Trainer(config, resume=resume, datasets=(train_set, eval_set), on_step=lambda step, losses: history.append(losses))
        report = trainer.run()
    return MemoryFit(trainer.method.eval(), history, trainer.optimizers, report)
