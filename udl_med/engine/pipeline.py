"""Multi-step workflows: each step a nested MLflow run under the pipeline's run.

A pipeline YAML file::

    name: pretrain-encoder
    workdir: runs/pretrain-encoder          # default: runs/<name>
    tracking: {uri: null, experiment: udl-med}
    steps:
      - name: phantoms
        run: phantoms
        with: {out: "${workdir}/phantoms", n: 24}
      - name: train
        run: train
        with: {config: ae2d-phantom, set: ["data.source=${steps.phantoms.manifest}"]}   # a shipped config name or a path

``run`` names a step kind (a library function ``fn(**params) -> dict``); a step refers
to the work folder as ``${workdir}`` and to an earlier step's outputs as
``${steps.<name>.<key>}``. ``--set steps.<name>.with.<key>=value`` overrides a step's
parameter.

Paths: ``udl-med pipeline NAME`` runs a shipped pipeline (:mod:`udl_med.shipped`). A
step's input paths written in the file (``INPUT_PARAMS``: a train step's ``config``, a
probe's ``data`` ...) resolve relative to the pipeline file, and a train step's
``config`` may be a shipped config name; values given with ``--set`` resolve against
the working directory, like every path on the command line. Outputs (``workdir``,
``out``, ``output`` ...) are relative to the working directory.

A ``train`` step is itself the nested run; every other step gets a nested
run that records its parameters, numeric outputs as metrics and any ``artifacts``.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from udl_med.engine.config import apply_overrides
from udl_med.errors import ConfigError

log = logging.getLogger(__name__)

# Step kinds: "module:function", imported when a step of that kind runs.
STEP_KINDS: dict[str, str] = {
    "phantoms": "udl_med.data.phantoms:write_phantoms",
    "select": "udl_med.engine.pipeline:select_step",
    "train": "udl_med.engine.pipeline:train_step_kind",
    "export": "udl_med.inference.export:export_model",
    "encode": "udl_med.inference.encode:encode_to_file",
    "sample": "udl_med.inference.sample:sample_to_dir",
    "translate": "udl_med.inference.translate:translate_path",
    "fid": "udl_med.metrics.compare:compare_sets",
    "probe": "udl_med.evaluation.probe:probe_step",
    "evaluate_translation": "udl_med.evaluation.translation:evaluate_translation_step",
    # synthesis (issue 15)
    "lesion_slices": "udl_med.evaluation.utility:lesion_slices",
    "synthesize": "udl_med.inference.synthesize:synthesize",
    "fid_gate": "udl_med.evaluation.synthesis:fid_gate_step",
    "memorization": "udl_med.metrics.memorization:memorization_check",
    "utility": "udl_med.evaluation.utility:utility_step",
    # semi-supervised classification (issue 14)
    "classify": "udl_med.inference.classify:classify_to_file",
}

# The parameters of each step kind that name existing inputs (resolved relative to the pipeline file).
INPUT_PARAMS: dict[str, tuple[str, ...]] = {
    "select": ("source",),
    "train": ("config",),
    "export": ("model",),
    "encode": ("model", "input"),
    "sample": ("model",),
    "translate": ("model", "input"),
    "fid": ("real", "fake"),
    "probe": ("encoder", "data"),
    "evaluate_translation": ("model", "source"),
    "classify": ("model", "input"),
}

_REFERENCE = re.compile(r"\$\{([^}]+)\}")


class StepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    run: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")


class PipelineTracking(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str | None = None
    experiment: str = "udl-med"
    privacy: Literal["standard", "strict"] = "standard"  # issue 27: udl_med/engine/privacy.py


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    workdir: str | None = None
    tracking: PipelineTracking = PipelineTracking()
    steps: list[StepConfig]


def train_step_kind(config: str, set: list[str] | None = None, resume: bool = False) -> dict[str, Any]:  # noqa: A002
    """The ``train`` step: ``udl-med train CONFIG|NAME --set ...``."""
    from udl_med.engine.train import train_from_file
    from udl_med.shipped import resolve_shipped

    return train_from_file(resolve_shipped("configs", config), overrides=list(set or []), resume=resume)


def select_step(source: str, out: str, modality: str | None = None, split: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """The ``select`` step: a manifest of the images of ``source`` with that modality and split.

    Returns ``manifest`` (the new CSV, written by :func:`udl_med.data.manifest.write_manifest`:
    paths relative to it where the images lie below its folder, else absolute), ``first``
    (its first image, e.g. a volume to translate) and ``n``.
    """
    from udl_med.data.manifest import list_images, write_manifest

    records = [
        r for r in list_images(source) if (modality is None or r.modality == modality) and (split is None or r.split == split)
    ][: limit or None]
    if not records:
        raise ConfigError(source, "select", f"no images with modality={modality} split={split}")
    path = write_manifest(out, records)
    return {"manifest": str(path), "first": str(records[0].path), "n": len(records)}


def _step_function(kind: str) -> Callable[..., dict[str, Any]]:
    module, _, name = STEP_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def _lookup(expr: str, context: dict[str, Any], source: str) -> Any:
    node: Any = context
    for part in expr.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(source, expr, "refers to an output that no earlier step produced")
        node = node[part]
    return node


def resolve(value: Any, context: dict[str, Any], source: str) -> Any:
    """Substitute ``${...}`` references in strings, lists and mappings."""
    if isinstance(value, str):
        whole = _REFERENCE.fullmatch(value)
        if whole:
            return _lookup(whole.group(1), context, source)
        return _REFERENCE.sub(lambda m: str(_lookup(m.group(1), context, source)), value)
    if isinstance(value, list):
        return [resolve(v, context, source) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, context, source) for k, v in value.items()}
    return value


def _is_uri(value: str) -> bool:
    return "://" in value or value.startswith(("runs:/", "models:/"))


def file_relative_inputs(pipeline: PipelineConfig, base: Path, source: str, from_command_line: set[tuple[str, str]] = frozenset()) -> PipelineConfig:
    """The pipeline with the literal input paths of its steps resolved against ``base`` (the pipeline's folder).

    A value holding a ``${...}`` reference, a URI, an absolute path, or one given with
    ``--set`` (``from_command_line``: ``(step, key)`` pairs) is left as it is; a train
    step's ``config`` may also be a shipped config name.
    """
    from udl_med.shipped import resolve_shipped

    steps = []
    for step in pipeline.steps:
        params = dict(step.with_)
        for key in INPUT_PARAMS.get(step.run, ()):
            value = params.get(key)
            if not isinstance(value, str) or "${" in value or _is_uri(value) or (step.name, key) in from_command_line:
                continue
            if step.run == "train" and key == "config":
                params[key] = str(resolve_shipped("configs", value, base=base, source=source, key=f"steps.{step.name}.with.config"))
            elif not Path(value).is_absolute():
                params[key] = str(base / value)
        steps.append(step.model_copy(update={"with_": params}))
    return pipeline.model_copy(update={"steps": steps})


def _command_line_keys(overrides: list[str] | tuple[str, ...]) -> set[tuple[str, str]]:
    """``(step, key)`` of each ``steps.<step>.with.<key>=...`` override."""
    keys = set()
    for item in overrides:
        parts = item.split("=", 1)[0].strip().split(".")
        if len(parts) >= 4 and parts[0] == "steps" and parts[2] == "with":
            keys.add((parts[1], parts[3]))
    return keys


def load_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read and validate a pipeline file (or a shipped pipeline's name); ``steps.<name>.<key>`` overrides address steps by name.

    Literal input paths of the steps are resolved relative to the file (see the module docstring).
    """
    from udl_med.shipped import resolve_shipped

    path = resolve_shipped("pipelines", path, source=str(path))
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(source, "<file>", "not valid YAML") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list):
        raise ConfigError(source, "steps", "a pipeline needs a list of steps")
    by_name = {str(s.get("name")): s for s in raw["steps"] if isinstance(s, dict)}
    raw = apply_overrides({**raw, "steps": by_name}, overrides, source)
    raw["steps"] = list(raw["steps"].values())
    try:
        pipeline = PipelineConfig(**raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = list(first["loc"])
        if len(loc) > 1 and loc[0] == "steps" and isinstance(loc[1], int):
            loc[1] = raw["steps"][loc[1]].get("name", loc[1])
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(source, ".".join(str(p) for p in loc), message) from None
    for step in pipeline.steps:
        if step.run not in STEP_KINDS:
            raise ConfigError(source, f"steps.{step.name}.run", f"unknown step kind {step.run!r}; valid: {', '.join(STEP_KINDS)}")
    names = [s.name for s in pipeline.steps]
    if len(set(names)) != len(names):
        raise ConfigError(source, "steps", "step names must be unique")
    return file_relative_inputs(pipeline, path.resolve().parent, source, _command_line_keys(overrides))


def run_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """``udl-med pipeline PIPELINE.yaml|NAME``: run the steps in order under one parent MLflow run."""
    pipeline = load_pipeline(path, overrides)
    return run_pipeline_config(pipeline, source=str(path))


def run_pipeline_config(pipeline: PipelineConfig, source: str = "<pipeline>") -> dict[str, Any]:
    import mlflow

    from udl_med.engine.privacy import Scrubber, forced
    from udl_med.engine.tracking import configure_tracking, log_step, source_tags

    workdir = Path(pipeline.workdir or Path("runs") / pipeline.name)
    workdir.mkdir(parents=True, exist_ok=True)
    uri = configure_tracking(pipeline.tracking.uri)
    scrub = Scrubber(pipeline.tracking.privacy)  # privacy (issue 27): what the runs log
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # nested training runs use the pipeline's store
    mlflow.set_experiment(pipeline.tracking.experiment)
    context: dict[str, Any] = {"workdir": str(workdir), "steps": {}}
    try:
        # privacy (issue 27): nested train steps run in the pipeline's mode; names and params scrubbed
        with forced(scrub.mode), mlflow.start_run(run_name=scrub.text(pipeline.name), tags=source_tags(scrub)) as parent:
            mlflow.set_tag("udl_med.pipeline", scrub.text(pipeline.name))
            for step in pipeline.steps:
                params = resolve(step.with_, context, f"{source}: steps.{step.name}")
                log.info("pipeline %s: step %s (%s)", pipeline.name, step.name, step.run)
                function = _step_function(step.run)
                if step.run == "train":
                    outputs = function(**params)
                else:
                    with mlflow.start_run(run_name=scrub.text(step.name), nested=True, tags=source_tags(scrub)) as child:
                        outputs = function(**params)
                        log_step(step.run, outputs, params, scrub)
                        outputs = {**outputs, "run_id": child.info.run_id}
                context["steps"][step.name] = outputs
            status = {"run_id": parent.info.run_id, "workdir": str(workdir), "tracking_uri": uri}
    finally:
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env
    summary = {f"{name}.{k}": v for name, out in context["steps"].items() for k, v in out.items() if isinstance(v, int | float | str)}
    return {**status, **summary}
