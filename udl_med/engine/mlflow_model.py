"""The MLflow model every training run logs: a pyfunc whose ``predict`` does what the method's command does.

A run's ``model`` (``runs:/<id>/model``, and ``models:/<name>/<version>`` once registered)
is an MLflow *python_function* model saved from code (no pickle): this module's
:class:`UdlMedModel`, with the udl-med model folder (``udl_med_model.pt``, loaded with
``weights_only=True``) as its artifact ``udl_med``. Every udl-med command still reads the
same URI. ``mlflow.pyfunc.load_model(uri).predict(model_input, params)``:

=================  ==========================================  ===============================================
operation          ``model_input``                              returns
=================  ==========================================  ===============================================
``sample``         an int N (seeds 0..N-1), a list / 1-D array  images ``(N, C, *item_size)`` in [-1, 1]
                   of seeds, or a DataFrame with a ``seed``     (points ``(N, D)``); one image per seed, the
                   column (optional ``label`` column)           same seed gives the same image
``encode``         items ``(B, C, *item_size)`` in [-1, 1]       codes ``(B, F)``
``translate``      items ``(B, C, *item_size)`` in [-1, 1]       translated items ``(B, C, *item_size)``
``classify``       items ``(B, C, *item_size)`` in [-1, 1]       class probabilities ``(B, K)``
=================  ==========================================  ===============================================

``params`` (all optional): ``operation`` (default: ``sample`` for integer input, else
the method's one image operation: ``translate``, then ``classify``, then ``encode``),
``label`` (sample a class of a conditional model; -1: none), ``direction``
(``ct2mr``/``mr2ct``; default: the model's first direction), ``device`` (``cpu``).
Items are what the network was trained on: slices or patches normalised as the run's
``data`` section says. Whole scans in physical units, with their geometry, go through
``udl_med.load_model`` (the Python API) or the commands.

``mlflow.pyfunc.load_model(uri).unwrap_python_model().loaded`` is the
:class:`~udl_med.engine.model_io.LoadedModel` (method, config, data spec).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from udl_med.nets.exported import probabilities

ARTIFACT = "udl_med"  # the artifact key (and folder) of the udl-med model folder
OPERATIONS = ("sample", "encode", "translate", "classify")
CODE_FILE = Path(__file__).with_name("mlflow_entry.py")  # what mlflow.pyfunc.log_model saves as the model's code

try:  # MLflow is a dependency; the class stays importable where it is absent (layer checks, docs)
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[assignment,misc]


def operations(method: Any) -> tuple[str, ...]:
    """The operations of :data:`OPERATIONS` that ``method`` supports, in that order."""
    caps = {str(getattr(c, "value", c)) for c in method.capabilities}
    ops = [op for op in OPERATIONS if op in caps]
    if "classify" in ops and not hasattr(method, "classify"):
        ops.remove("classify")
    return tuple(ops)


def _seeds_and_labels(model_input: Any) -> tuple[list[int], list[int] | None]:
    """Seeds (and per-row labels) from an int, a sequence of ints, or a DataFrame with ``seed`` [``label``]."""
    if hasattr(model_input, "columns"):  # a pandas DataFrame
        if "seed" not in model_input.columns:
            raise ValueError(f"sampling needs a 'seed' column, got columns {list(model_input.columns)}")
        labels = [int(v) for v in model_input["label"]] if "label" in model_input.columns else None
        return [int(v) for v in model_input["seed"]], labels
    if isinstance(model_input, dict):
        seeds = model_input.get("seed", model_input.get("n"))
        if isinstance(seeds, int | np.integer):
            seeds = list(range(int(seeds))) if "n" in model_input else [int(seeds)]
        labels = model_input.get("label")
        return [int(s) for s in np.asarray(seeds).ravel()], None if labels is None else [int(v) for v in np.asarray(labels).ravel()]
    if isinstance(model_input, int | np.integer):
        return list(range(int(model_input))), None
    array = np.asarray(model_input)
    if array.ndim == 0:
        return list(range(int(array))), None
    return [int(s) for s in array.ravel()], None


def _is_seed_input(model_input: Any) -> bool:
    if isinstance(model_input, int | np.integer | dict) or hasattr(model_input, "columns"):
        return True
    array = np.asarray(model_input)
    return array.dtype.kind in "iu" and array.ndim <= 1


def sample_seeds(method: Any, seeds: list[int], label: int | None = None, labels: list[int] | None = None) -> torch.Tensor:
    """One sample per seed (``torch.Generator().manual_seed(seed)``): ``(N, C, *spatial)`` in [-1, 1] on the CPU."""
    out = []
    for i, seed in enumerate(seeds):
        row_label = labels[i] if labels is not None and labels[i] >= 0 else label
        method.check_sample_label(row_label)
        generator = torch.Generator().manual_seed(int(seed))
        out.append(method.sample(1, generator=generator, label=row_label).detach().float().cpu())
    return torch.cat(out)


class UdlMedModel(PythonModel):
    """The pyfunc model of a udl-med run (see the module docstring)."""

    loaded: Any = None
    # predict takes ints, seed lists, DataFrames and arrays (the module docstring), so it has
    # no type hints for MLflow to validate against; this tells MLflow not to look for them
    # (and not to warn at every import that they are missing)
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from udl_med.engine.model_io import load_model  # lazy: model_io imports tracking, which imports this module

        self.loaded = load_model(context.artifacts[ARTIFACT])

    def load_folder(self, folder: str | Path) -> UdlMedModel:
        """Load from a udl-med model folder directly (tests, and use without MLflow)."""
        from udl_med.engine.model_io import load_model  # lazy: model_io imports tracking, which imports this module

        self.loaded = load_model(folder)
        return self

    @property
    def operations(self) -> tuple[str, ...]:
        return operations(self.loaded.method)

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - MLflow reads type hints as a schema
        """See the module docstring. Raises ``ValueError`` for an operation the model lacks or a bad input."""
        params = dict(params or {})
        method = self.loaded.method
        device = torch.device(params.get("device") or "cpu")
        method.to(device)
        ops = self.operations
        op = params.get("operation") or None
        if op is None:
            image_ops = [o for o in ("translate", "classify", "encode") if o in ops]
            op = "sample" if "sample" in ops and (_is_seed_input(model_input) or not image_ops) else (image_ops or ["sample"])[0]
        if op not in ops:
            raise ValueError(f"method {method.name!r} cannot {op}; it can: {', '.join(ops) or 'nothing'}")
        with torch.no_grad():
            if op == "sample":
                seeds, labels = _seeds_and_labels(model_input)
                label = params.get("label")
                label = None if label is None or int(label) < 0 else int(label)
                return sample_seeds(method, seeds, label, labels).numpy()
            x = torch.as_tensor(np.asarray(model_input, dtype=np.float32)).to(device)
            if op == "encode":
                return method.encode(x).detach().float().flatten(1).cpu().numpy()
            if op == "translate":
                direction = params.get("direction") or tuple(getattr(method, "directions", ("ct2mr",)))[0]
                return method.translate(x, direction).detach().float().cpu().numpy()
            logits = method.classify(x).detach().float()
            return probabilities(logits).cpu().numpy()


def signature() -> Any:
    """The model signature: free-form input, the ``params`` of the module docstring."""
    from mlflow.models import ModelSignature  # lazy: MLflow takes seconds to import; only this path logs
    from mlflow.types.schema import ParamSchema, ParamSpec  # lazy: MLflow takes seconds to import; only this path logs

    return ModelSignature(
        inputs=None,
        params=ParamSchema(
            [
                ParamSpec("operation", "string", ""),
                ParamSpec("label", "long", -1),
                ParamSpec("direction", "string", ""),
                ParamSpec("device", "string", "cpu"),
            ]
        ),
    )
