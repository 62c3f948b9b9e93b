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

``run`` names a step kind: an action of :data:`udl_med.actions.ACTIONS` that is a step,
whose library function ``fn(**with) -> dict`` runs the step; ``with`` holds the action's
arguments (checked when the file loads: an unknown or missing one is a ConfigError). A
step refers to the work folder as ``${workdir}`` and to an earlier step's outputs as
``${steps.<name>.<key>}``. ``--set steps.<name>.with.<key>=value`` overrides a step's
parameter.

Paths: ``udl-med pipeline NAME`` runs a shipped pipeline (:mod:`udl_med.shipped`). A
step's input paths written in the file (the action's ``input`` arguments: a train step's
``config``, a probe's ``data`` ...) resolve relative to the pipeline file, and a train step's
``config`` may be a shipped config name; values given with ``--set`` resolve against
the working directory, like every path on the command line. Outputs (``workdir``,
``out``, ``output`` ...) are relative to the working directory.

A ``train`` step (``own_run``) is itself the nested run; every other step gets a nested
run that records its parameters, numeric outputs as metrics and any ``artifacts``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from udl_med.actions import Action, step_kinds
from udl_med.engine.config import apply_overrides, blame_overrides, known_keys
from udl_med.errors import ConfigError, did_you_mean
from udl_med.shipped import resolve_shipped

log = logging.getLogger(__name__)

STEP_KINDS: dict[str, Action] = step_kinds()  # {kind: action}, from the one table of actions

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
    privacy: Literal["standard", "strict"] = "standard"  # strict: paths hashed, previews of real scans withheld (engine/privacy.py)


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    workdir: str | None = None
    tracking: PipelineTracking = PipelineTracking()
    steps: list[StepConfig]


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
    ``--set`` (``from_command_line``: ``(step, key)`` pairs) is left as it is; an input
    the action marks ``shipped`` (a train step's ``config``) may also be a shipped name.
    """
    steps = []
    for step in pipeline.steps:
        params = dict(step.with_)
        for arg in STEP_KINDS[step.run].args:
            value = params.get(arg.name)
            if not arg.input or not isinstance(value, str) or "${" in value or _is_uri(value) or (step.name, arg.name) in from_command_line:
                continue
            if arg.shipped:
                params[arg.name] = str(resolve_shipped(arg.shipped, value, base=base, source=source, key=f"steps.{step.name}.with.{arg.name}"))
            elif not Path(value).is_absolute():
                params[arg.name] = str(base / value)
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


def check_steps(pipeline: PipelineConfig, source: str) -> None:
    """Every step's kind is a step action, its ``with`` keys that action's arguments, its required ones given, its name unique.

    Raises:
        ConfigError: naming ``steps.<name>.run`` or ``steps.<name>.with.<key>``, with the closest known names.
    """
    for step in pipeline.steps:
        action = STEP_KINDS.get(step.run)
        if action is None:
            hint = did_you_mean(step.run, STEP_KINDS)
            raise ConfigError(source, f"steps.{step.name}.run", f"unknown step kind {step.run!r}{hint}; valid: {', '.join(STEP_KINDS)}")
        for key in step.with_:
            if key not in action.names:
                hint = did_you_mean(key, action.names, f"steps.{step.name}.with.")
                raise ConfigError(source, f"steps.{step.name}.with.{key}", f"unknown argument of step kind {step.run!r}{hint}")
        missing = [name for name in action.required if name not in step.with_]
        if missing:
            raise ConfigError(source, f"steps.{step.name}.with.{missing[0]}", f"required by step kind {step.run!r}")
    names = [s.name for s in pipeline.steps]
    if len(set(names)) != len(names):
        raise ConfigError(source, "steps", "step names must be unique")


def load_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read and validate a pipeline file (or a shipped pipeline's name); ``steps.<name>.<key>`` overrides address steps by name.

    Literal input paths of the steps are resolved relative to the file (see the module
    docstring). An error in a key that an override gave is blamed on ``--set``.
    """
    path = resolve_shipped("pipelines", path, source=str(path))
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(source, "<file>", "not valid YAML") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list):
        raise ConfigError(source, "steps", "a pipeline needs a list of steps")
    by_name = {**raw, "steps": {str(s.get("name")): s for s in raw["steps"] if isinstance(s, dict)}}
    try:
        raw = apply_overrides(by_name, overrides, source)
        raw["steps"] = list(raw["steps"].values())
        pipeline = _validate(raw, source)
        check_steps(pipeline, source)
    except ConfigError as err:
        raise blame_overrides(err, overrides, by_name) from None
    return file_relative_inputs(pipeline, path.resolve().parent, source, _command_line_keys(overrides))


def _validate(raw: dict[str, Any], source: str) -> PipelineConfig:
    try:
        return PipelineConfig(**raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = list(first["loc"])
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key" + did_you_mean(str(loc[-1]), known_keys(PipelineConfig, loc[:-1]))
        if len(loc) > 1 and loc[0] == "steps" and isinstance(loc[1], int):
            loc[1] = raw["steps"][loc[1]].get("name", loc[1])
        raise ConfigError(source, ".".join(str(p) for p in loc), message) from None


def run_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = (), privacy: str | None = None) -> dict[str, Any]:
    """``udl-med pipeline PIPELINE.yaml|NAME``: run the steps in order under one parent MLflow run.

    ``privacy="strict"`` makes every run at least strict (see :mod:`udl_med.engine.privacy`).
    """
    from udl_med.engine.privacy import forced  # lazy: loading and checking a pipeline needs no MLflow

    pipeline = load_pipeline(path, overrides)
    with forced(privacy):
        return run_pipeline_config(pipeline, source=str(path))


def run_pipeline_config(pipeline: PipelineConfig, source: str = "<pipeline>") -> dict[str, Any]:
    """Run a validated pipeline (see :func:`check_steps`) under one parent MLflow run; return the run, work folder and step outputs."""
    import mlflow  # lazy: loading and checking a pipeline needs no MLflow

    from udl_med.engine.privacy import Scrubber, forced  # lazy: loading and checking a pipeline needs neither
    from udl_med.engine.tracking import configure_tracking, log_step, source_tags  # lazy: it imports MLflow

    check_steps(pipeline, source)

    workdir = Path(pipeline.workdir or Path("runs") / pipeline.name)
    workdir.mkdir(parents=True, exist_ok=True)
    uri = configure_tracking(pipeline.tracking.uri)
    scrub = Scrubber(pipeline.tracking.privacy)  # what the runs log, by privacy mode
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # nested training runs use the pipeline's store
    mlflow.set_experiment(pipeline.tracking.experiment)
    context: dict[str, Any] = {"workdir": str(workdir), "steps": {}}
    try:
        # nested train steps run in the pipeline's mode; names and params scrubbed
        with forced(scrub.mode), mlflow.start_run(run_name=scrub.text(pipeline.name), tags=source_tags(scrub)) as parent:
            mlflow.set_tag("udl_med.pipeline", scrub.text(pipeline.name))
            for step in pipeline.steps:
                params = resolve(step.with_, context, f"{source}: steps.{step.name}")
                log.info("pipeline %s: step %s (%s)", pipeline.name, step.name, step.run)
                action = STEP_KINDS[step.run]
                if action.own_run:
                    outputs = action(**params)
                else:
                    with mlflow.start_run(run_name=scrub.text(step.name), nested=True, tags=source_tags(scrub)) as child:
                        outputs = action(**params)
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
