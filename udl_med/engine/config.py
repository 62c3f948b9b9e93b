"""Run configuration: one YAML file per experiment, validated on load.

A run config has the sections ``method``, ``seed``, ``data`` (the data engineer's
:class:`udl_med.data.config.DataConfig`), ``model`` (the method's own ``Config``),
``train``, ``tracking`` and ``output_dir``. Unknown or mistyped keys are rejected with a
message that names the file and the dotted key. ``--set key.path=value`` overrides
are applied before validation; values are parsed as YAML (``--set train.steps=10``
gives an int, ``--set data.size=[16,16]`` a list).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from udl_med.data.config import DataConfig
from udl_med.errors import ConfigError
from udl_med.methods.base import MethodConfig, get_method


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleEvalConfig(_Section):
    """FID and KID of generated samples against the evaluation split, every ``every`` steps."""

    every: int = Field(500, ge=1)
    n: int = Field(256, ge=2)  # samples drawn, and evaluation items compared with them
    extractor: str = "random"  # a udl_med.metrics.extractors name; point data uses the raw coordinates
    keep_best: bool = False  # the final model folder holds the weights with the lowest FID


class TrainConfig(_Section):
    """How the engine trains: steps, batches, schedule, precision, checkpoints."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(16, ge=1)
    lr_schedule: Literal["constant", "linear_decay", "cosine"] = "constant"
    decay_start: float = Field(0.5, ge=0.0, le=1.0)  # linear_decay: fraction of steps at full lr
    grad_clip: float | None = Field(None, gt=0)  # max gradient norm per optimizer
    ema_decay: float | None = Field(None, gt=0, lt=1)  # EMA of method.ema_modules weights
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, off on CPU
    deterministic: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)  # CPU threads for torch; None leaves torch's default
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(200, ge=1)
    eval_items: int = Field(32, ge=1)  # held-out items per evaluation
    checkpoint_every: int = Field(200, ge=1)
    num_workers: int = Field(0, ge=0)
    sample_eval: SampleEvalConfig | None = None  # methods that sample: FID/KID during training


class TrackingConfig(_Section):
    """Where MLflow records the run; ``uri`` overrides ``MLFLOW_TRACKING_URI``."""

    uri: str | None = None
    experiment: str = "udl-med"
    run_name: str | None = None
    log_model: bool = True  # log the model in MLflow's pytorch flavour (pt2) as well as our files
    enabled: bool = True  # false: no MLflow run (in-process fits: tests, benchmarks, probes)
    privacy: Literal["standard", "strict"] = "standard"  # strict: paths hashed, previews of real scans withheld (engine/privacy.py)


class RunConfig(_Section):
    """A whole experiment. ``model`` is validated against the method's own Config."""

    method: str
    seed: int = 0
    data: DataConfig
    model: SerializeAsAny[MethodConfig]
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    output_dir: str | None = None  # default: runs/<run name>

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        try:
            get_method(name)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        return name

    @property
    def run_name(self) -> str:
        return self.tracking.run_name or self.method

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.run_name

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able data (saved with every run)."""
        return self.model_dump(mode="json")


def _parse_override(item: str, source: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(source, item, "an override must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(source, key or item, "empty key in override")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key.path=value`` set (sections created as needed)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        parts, value = _parse_override(item, source)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(source, ".".join(parts[: i + 1]), "is not a section, cannot set a key inside it")
            node = child
        node[parts[-1]] = value
    return out


def _first_error(err: ValidationError, prefix: str = "") -> tuple[str, str]:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    key = f"{prefix}{key}" if key else prefix.rstrip(".")
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    elif first["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    return key or "<root>", message


def validate_config(raw: dict[str, Any], source: str = "<config>") -> RunConfig:
    """Validate a config dictionary; ``ConfigError`` names the source and the dotted key."""
    if not isinstance(raw, dict):
        raise ConfigError(source, "<root>", "a config must be a YAML mapping")
    body = dict(raw)
    model_raw = body.pop("model", {}) or {}
    if not isinstance(model_raw, dict):
        raise ConfigError(source, "model", "must be a mapping")
    method_name = body.get("method")
    if not isinstance(method_name, str):
        raise ConfigError(source, "method", "required key is missing" if method_name is None else "must be a string")
    try:
        method_cls = get_method(method_name)
    except KeyError as err:
        raise ConfigError(source, "method", err.args[0]) from None
    try:
        model = method_cls.Config(**model_raw)
    except ValidationError as err:
        raise ConfigError(source, *_first_error(err, "model.")) from None
    try:
        return RunConfig(**body, model=model)
    except ValidationError as err:
        raise ConfigError(source, *_first_error(err)) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read, override and validate a run config YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "<file>", "no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(path, "<file>", f"not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(path, "<root>", "a config must be a YAML mapping")
    return validate_config(apply_overrides(raw, overrides, str(path)), str(path))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested sections into dotted keys (for MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
