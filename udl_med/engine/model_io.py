"""Model folders: what ``train`` writes and every model-using command reads.

A model folder holds ``udl_med_model.pt``: the method name, the resolved run config,
the data spec (with the training geometry of scans, :class:`udl_med.data.spec.TrainingGeometry`,
so ``sample`` needs no training data) and the state dict, loaded with ``weights_only=True`` and rebuilt from
the config, never unpickled. MODEL on the command line is a local folder, or an MLflow
URI (``runs:/<id>/model``, ``models:/<name>/<version>``) whose artifacts hold that file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from udl_med import keys
from udl_med.data.spec import DataSpec
from udl_med.engine.checkpoint import atomic_torch_save
from udl_med.engine.config import validate_config
from udl_med.engine.tracking import configure_tracking
from udl_med.errors import ConfigError, InputError, UserError
from udl_med.methods.base import InitFrom, Method, get_method

log = logging.getLogger(__name__)
MODEL_FORMAT = 1


@dataclass(frozen=True)
class LoadedModel:
    """A trained method rebuilt from its model file, in eval mode on the CPU.

    Attributes:
        method: the method, eval mode.
        config: the resolved run config as plain data (what the file holds).
        data_spec: what the method was built for.
        source: what the user named.
        folder: the local folder the model file was read from.
        run_config: the same config validated (:class:`~udl_med.engine.config.RunConfig`):
            read settings from it (``loaded.run_config.data.ct_window``), so every
            setting has the one default its config class declares.
        validated: the RunConfig when the loader has it (``load_model`` does).
    """

    method: Method
    config: dict[str, Any]
    data_spec: DataSpec
    source: str
    folder: Path
    validated: Any = field(default=None, repr=False)  # the RunConfig, when the loader has it already

    @cached_property
    def run_config(self) -> Any:
        """The validated :class:`~udl_med.engine.config.RunConfig` (validated from ``config`` on first use)."""
        if self.validated is not None:
            return self.validated

        return validate_config(self.config, self.source)


def inference_state(method: Method, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of ``state_dict`` that ``method.inference_modules`` name (all of it when they name none)."""
    names = method.inference_modules
    if not names:
        return dict(state_dict)
    return {k: v for k, v in state_dict.items() if k.split(".", 1)[0] in names}


def save_model(folder: Path, method: Method, config: dict[str, Any], state_dict: dict[str, torch.Tensor], step: int) -> Path:
    """Write ``folder/udl_med_model.pt`` atomically, keeping the inference modules' state; return its path."""
    path = Path(folder) / keys.MODEL_FILE
    content = {
        "format": MODEL_FORMAT,
        "method": method.name,
        "config": config,
        "data_spec": method.data.model_dump(mode="json"),
        "state_dict": {k: v.detach().cpu() for k, v in inference_state(method, state_dict).items()},
        "modules": list(method.inference_modules),
        "step": step,
    }
    atomic_torch_save(content, path)
    return path


def _find_model_file(folder: Path) -> Path | None:
    for candidate in (folder / keys.MODEL_FILE, folder / "extra_files" / keys.MODEL_FILE):
        if candidate.is_file():
            return candidate
    found = sorted(folder.rglob(keys.MODEL_FILE))
    return found[0] if found else None


def resolve_model_folder(model: str) -> Path:
    """A local folder holding the model file: ``model`` itself, or MLflow artifacts downloaded."""
    local = Path(model)
    if local.exists():
        return local
    if "://" in model or model.startswith(("runs:/", "models:/")):
        import mlflow  # lazy: MLflow takes seconds to import; only this path logs

        configure_tracking(None)
        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
        except Exception as err:  # mlflow raises several types for a bad URI
            raise InputError(model, f"cannot fetch the model from MLflow ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    raise InputError(model, "no such model folder or MLflow model URI")


def load_inference_state(method: Method, state: dict[str, torch.Tensor], modules: tuple[str, ...], path: Path) -> None:
    """Load a model file's state: strictly, over the modules it kept (every key of those, nothing else)."""
    expected = {k for k in method.state_dict() if not modules or k.split(".", 1)[0] in modules}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise InputError(path, f"the model file does not match method {method.name!r} ({what})")
    method.load_state_dict(state, strict=False)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device (None: the CPU).

    Raises:
        UserError: a name torch does not know, or a CUDA/MPS device this machine lacks.
    """
    if device is None:
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"unknown device {device!r} ({str(err).splitlines()[0]}); e.g. cpu, cuda, cuda:1") from None
    if chosen.type == "cuda" and (not torch.cuda.is_available() or (chosen.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"device {device!r} is not available on this machine ({torch.cuda.device_count()} CUDA device(s))")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r} is not available on this machine")
    return chosen


def load_model(model: str | Path, device: str | torch.device | None = None) -> LoadedModel:
    """Rebuild the trained method that ``model`` names (folder or MLflow URI), eval mode, on ``device`` (default: CPU).

    Raises:
        InputError: no model there, or an unreadable model file.
        UserError: a device this machine does not have.
    """
    where = resolve_device(device)
    folder = resolve_model_folder(str(model))
    path = _find_model_file(folder) if folder.is_dir() else (folder if folder.name == keys.MODEL_FILE else None)
    if path is None:
        raise InputError(model, f"no {keys.MODEL_FILE} inside; is this a folder written by udl-med train or export?")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise InputError(path, f"unreadable model file ({type(err).__name__})") from None
    if not isinstance(content, dict) or content.get("format") != MODEL_FORMAT:
        raise InputError(path, f"not a udl-med model file (format {MODEL_FORMAT})")

    config = validate_config(content["config"], str(path))
    method_cls = get_method(content["method"])
    data_spec = DataSpec(**content["data_spec"])
    method = method_cls(config.model, data_spec)
    load_inference_state(method, content["state_dict"], tuple(content.get("modules", ())), path)
    method.eval().to(where)
    return LoadedModel(method=method, config=content["config"], data_spec=data_spec, source=str(model), folder=path.parent, validated=config)


def apply_init_from(method: Method, what: InitFrom, key: str = "train.init_from") -> None:
    """Copy the weights of ``what.modules`` from the trained model ``what.model`` into ``method`` (``train.init_from``).

    Each named submodule is loaded strictly from the submodule of the same name of the
    model ``what.model`` names (a model folder, a run folder holding one, or an MLflow
    URI), on the method's device; nothing else of ``method`` changes.

    Raises:
        InputError: no such model, a model of another method than ``what.method``, a
            module the model file does not keep, or weights that do not fit (each named,
            with ``key``).
        ConfigError: a module name this method does not have.
    """
    loaded = load_model(what.model)
    source = loaded.method
    if what.method is not None and source.name != what.method:
        raise InputError(what.model, f"{key} must be a {what.method!r} model, got {source.name!r}")
    kept = source.inference_modules
    for name in what.modules:
        target = getattr(method, name, None)
        if not isinstance(target, torch.nn.Module):
            raise ConfigError("<config>", key, f"method {method.name!r} has no module {name!r}")
        if not isinstance(getattr(source, name, None), torch.nn.Module) or (kept and name not in kept):
            raise InputError(what.model, f"{key}: the model file keeps no module {name!r} (it keeps {list(kept) or 'all of ' + source.name})")
        try:
            target.load_state_dict(getattr(source, name).state_dict())
        except RuntimeError as err:
            raise InputError(what.model, f"{key}: its {name!r} does not match this config ({str(err).splitlines()[0]})") from None
    log.info("%s: %s loaded from %s", key, ", ".join(what.modules), loaded.source)
