"""Run configuration: one YAML file per experiment, validated on load.

A run config has the sections ``method``, ``seed``, ``data`` (the data engineer's
:class:`udl_med.data.config.DataConfig`), ``model`` (the method's own ``Config``),
``train``, ``tracking`` and ``output_dir``. Unknown or mistyped keys are rejected with a
message that names the file and the dotted key, and an unknown key with the closest
known ones. ``--set key.path=value`` overrides are applied before validation; values
are parsed as YAML (``--set train.steps=10`` gives an int, ``--set data.size=[16,16]``
a list). An error in a key that an override gave is blamed on ``--set``.

The run name (MLflow's run name, and ``runs/<name>`` when ``output_dir`` is not set) is
``tracking.run_name``, else the config file's name; when ``--set`` gives the run other
data than the file names (``data.source``, ``data.kind`` or ``data.points``), the data's
name is appended (:func:`run_name_for`): ``ae2d-phantom`` on ``scans/mni/manifest.csv``
is ``ae2d-phantom-mni``, so a run on your scans is neither called after the phantoms nor
written over the phantom run's folder. In strict privacy mode the data's name is a
salted hash (``ae2d-phantom-data-1a2b3c4d5e6f``), since folder names can name patients.
"""

from __future__ import annotations

import copy
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from udl_med.data.config import DataConfig
from udl_med.errors import ConfigError, did_you_mean
from udl_med.methods.base import InitFrom, MethodConfig, get_method


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
    init_from: tuple[InitFrom, ...] = ()  # weights of trained models copied into named submodules before step 0


class TrackingConfig(_Section):
    """Where MLflow records the run; ``uri`` overrides ``MLFLOW_TRACKING_URI``."""

    uri: str | None = None
    experiment: str = "udl-med"
    run_name: str | None = None
    log_model: bool = True  # log the model as an MLflow pyfunc model (engine/mlflow_model.py); false: our files only
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


def set_source(source: str | Path) -> str:
    """Where a ``--set`` override of ``source`` is said to come from in error messages."""
    return f"--set on {source}"


def _parse_override(item: str, source: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(set_source(source), item, "an override must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(set_source(source), key or item, "empty key in override")
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
                raise ConfigError(set_source(source), ".".join(parts[: i + 1]), "is not a section, cannot set a key inside it")
            node = child
        node[parts[-1]] = value
    return out


def _holds(raw: Any, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(raw, dict) or part not in raw:
            return False
        raw = raw[part]
    return True


def blame_overrides(err: ConfigError, overrides: list[str] | tuple[str, ...], raw: dict[str, Any]) -> ConfigError:
    """``err`` said of ``--set`` when an override gave its key, else ``err`` itself.

    An override gave the key when it set the key or a section holding it, or set a key
    inside it that the file (``raw``, before the overrides) does not have.
    """
    if err.source.startswith(set_source("")):
        return err
    parts = err.key.split(".")
    for item in overrides:
        given = item.split("=", 1)[0].strip().split(".")
        if parts[: len(given)] == given or (given[: len(parts)] == parts and not _holds(raw, parts)):
            return ConfigError(set_source(err.source), err.key, err.problem)
    return err


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``X``, ``X | None``, ``list[X]`` ...), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for inner in typing.get_args(annotation):
        found = _model_in(inner)
        if found is not None:
            return found
    return None


def known_keys(model: type[BaseModel], path: list[str | int]) -> list[str]:
    """The keys of the section at ``path`` (list indices skipped) below ``model``; [] where it is not a model."""
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            return []
        model = inner
    return [field.alias or name for name, field in model.model_fields.items()]


def _first_error(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> tuple[str, str]:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    key = f"{prefix}{key}" if key else prefix.rstrip(".")
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        loc = list(first["loc"])
        known = known_keys(model, loc[:-1]) if model is not None else []
        section = key[: len(key) - len(str(loc[-1]))]
        message = "unknown key" + did_you_mean(str(loc[-1]), known, section)
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
        raise ConfigError(source, *_first_error(err, "model.", method_cls.Config)) from None
    try:
        run = RunConfig(**body, model=model)
    except ValidationError as err:
        raise ConfigError(source, *_first_error(err, model=RunConfig)) from None
    try:
        model.check_run(run.train)  # model keys that depend on train: (model.pack vs train.batch_size)
        model.check_data(run.data)  # data keys the method refuses (data.augment with an adversarial method)
    except ConfigError as err:
        raise ConfigError(source, err.key, err.problem) from None
    return run


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
    try:
        final = apply_overrides(raw, overrides, str(path))
        config = validate_config(final, str(path))
    except ConfigError as err:
        raise blame_overrides(err, overrides, raw) from None
    if any(item.split("=", 1)[0].strip() == "tracking.run_name" for item in overrides):
        return config  # named by --set
    name = run_name_for(config, base=_tracking(raw).get("run_name") or path.stem, own_data=_data_identity(raw) == _data_identity(final))
    return config.model_copy(update={"tracking": config.tracking.model_copy(update={"run_name": name})})


def _tracking(raw: dict[str, Any]) -> dict[str, Any]:
    section = raw.get("tracking")
    return section if isinstance(section, dict) else {}


def _data_identity(raw: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a run's data this data: kind, source, the point mixture (not how it is cut or cropped)."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    points = data.get("points") if isinstance(data.get("points"), dict) else {}
    return (data.get("kind") or "scans", data.get("source"), tuple(sorted((k, str(v)) for k, v in points.items() if v is not None)))


_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm", ".csv")


def data_name(config: RunConfig) -> str:
    """A short name of a run's data: the folder of a manifest, a folder's or file's name, the point mixture."""
    data = config.data
    if data.kind == "points":
        points = data.points
        return f"points-{points.mixture}" if points is not None else "points"
    if data.kind == "memory" or not data.source:
        return "memory"
    path = Path(str(data.source).rstrip("/\\"))
    name = path.name
    if name.lower() == "manifest.csv" or (path.suffix.lower() == ".csv" and path.parent.name and path.stem.lower() == "manifest"):
        name = path.parent.name or path.resolve().parent.name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "data"


def run_name_for(config: RunConfig, base: str, own_data: bool) -> str:
    """``base`` for the config's own data; ``base-<data name>`` (strict privacy: ``base-data-<hash>``) for other data."""
    if own_data:
        return base
    from udl_med.engine.privacy import Scrubber  # lazy: the salt file is read only when the name needs it

    scrub = Scrubber(config.tracking.privacy)
    if scrub.strict and config.data.kind == "scans" and config.data.source:
        digest = re.search(r"#(\w+)", scrub.path(str(config.data.source)))
        return f"{base}-data-{digest.group(1) if digest else 'hidden'}"
    name = data_name(config)
    return base if name.lower() in base.lower() else f"{base}-{name}"


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
