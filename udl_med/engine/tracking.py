"""MLflow tracking for runs: the only place (with the commands that read runs) that imports mlflow.

The store is ``tracking.uri`` if the config sets it, else ``MLFLOW_TRACKING_URI``, else
MLflow's SQLite default: ``mlflow.db`` (and ``mlruns/`` for artifacts) in the working
directory. Only rank 0 tracks; other processes get a :class:`NullTracker`.
Nothing read from DICOM headers is ever logged: only the config, metrics and images.
What a run logs goes through its privacy mode's :class:`~udl_med.engine.privacy.Scrubber`
(``tracking.privacy``, ``--privacy``, ``UDL_MED_PRIVACY``): in strict mode paths are
hashed and previews of real scans withheld (:mod:`udl_med.engine.privacy`).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric

from udl_med.engine.config import flatten
from udl_med.engine.mlflow_model import ARTIFACT, CODE_FILE, signature
from udl_med.engine.privacy import Scrubber
from udl_med.engine.store import prepare_store

log = logging.getLogger(__name__)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_PARAM_LENGTH = 6000
FLUSH_SECONDS = 2.0
MAX_METRICS_PER_BATCH = 1000
PYFUNC_MLFLOW_MAJOR = 3  # log_model(name=...) is an MLflow 3 argument
_warned: set[str] = set()


def warn_once(key: str, message: str, *args: Any) -> bool:
    """Log ``message`` as a warning the first time ``key`` comes up in this process; True if it was shown."""
    if key in _warned:
        return False
    _warned.add(key)
    log.warning(message, *args)
    return True


def mlflow_major() -> int:
    """The installed MLflow's major version (0 if it cannot be read)."""
    try:
        return int(str(mlflow.__version__).split(".", 1)[0])
    except (AttributeError, ValueError):
        return 0


def configure_tracking(uri: str | None) -> str:
    """Point MLflow at ``uri``, ``MLFLOW_TRACKING_URI`` or the SQLite default; return the URI used."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    prepare_store(chosen)  # created and migrated once, under a file lock: parallel runs on a fresh store (engine/store.py)
    mlflow.set_tracking_uri(chosen)
    return chosen


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


class MetricWriter:
    """Writes metric batches to the store from one background thread.

    A store write costs milliseconds (an SQLite commit, an HTTP request) and, on a loaded
    machine, tens of them: as much as several training steps of a small network. The
    loop queues a batch and goes on; :meth:`close` waits for every queued batch (and
    re-raises the first failed write). Unlike MLflow's own asynchronous logging, closing
    does not wait for a polling interval.
    """

    def __init__(self, client: Any, run_id: str) -> None:
        self._client = client
        self._run_id = run_id
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._work, name="udl-med-metrics", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (batch := self._queue.get()) is not None:
            try:
                self._client.log_batch(self._run_id, metrics=batch)
            except Exception as err:  # reported by close(), in the training thread
                self._errors.append(err)

    def write(self, batch: list[Metric]) -> None:
        self._queue.put(batch)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._errors:
            raise self._errors[0]


class Tracker:
    """Logs one run (or one nested step of a pipeline) to MLflow."""

    def __init__(
        self, uri: str | None, experiment: str, run_name: str, run_id: str | None = None, nested: bool = False, privacy: str | None = None
    ):
        self.uri = configure_tracking(uri)
        self.scrub = Scrubber(privacy)
        parent = mlflow.active_run()
        if run_id is None and parent is None:
            mlflow.set_experiment(experiment)  # a step of a pipeline stays in the pipeline's experiment
        self.run = mlflow.start_run(
            run_id=run_id,
            run_name=None if run_id else self.scrub.text(run_name),
            nested=nested or parent is not None,
            tags=source_tags(self.scrub) if run_id is None else None,
        )
        self.run_id = self.run.info.run_id
        self._client = mlflow.MlflowClient()
        self._pending: list[Metric] = []
        self._writer = MetricWriter(self._client, self.run_id)
        self._last_flush = time.monotonic()

    def log_config(self, config: dict[str, Any]) -> None:
        config = self.scrub.config(config)
        params = {k: _param_value(v) for k, v in flatten(config).items()}
        existing = mlflow.get_run(self.run_id).data.params
        new = {k: v for k, v in params.items() if k not in existing}  # a resumed run keeps its params
        if new:
            mlflow.log_params(new)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            mlflow.log_artifact(str(path))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record metrics at ``step``; they reach the store in one batch every few seconds.

        A store write costs milliseconds (SQLite, HTTP), as much as a training step of a
        small network; batching keeps every point while the loop almost never waits.
        """
        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Hand the buffered metrics to the background writer (the loop does not wait for the store)."""
        for start in range(0, len(self._pending), MAX_METRICS_PER_BATCH):
            self._writer.write(self._pending[start : start + MAX_METRICS_PER_BATCH])
        self._pending = []
        self._last_flush = time.monotonic()

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Log a file (in strict mode a checkpoint's or manifest's rewritten copy: see :meth:`Scrubber.artifact`)."""
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(self.scrub.artifact(Path(path), Path(tmp))), artifact_path=folder)

    def log_preview(self, name: str, path: Path) -> None:
        """Log a training preview under ``previews/``, unless the privacy mode withholds previews called ``name``."""
        if self.scrub.keep_preview(name):
            mlflow.log_artifact(str(path), artifact_path="previews")
        else:
            warn_once(f"preview:{name}", "privacy %s: preview %r (of real scans) not logged; it is in the run folder", self.scrub.mode, name)

    def log_model(self, model_folder: Path, as_mlflow_model: bool = True) -> None:
        """Log the model folder as the run's ``model``: an MLflow pyfunc model (:mod:`udl_med.engine.mlflow_model`).

        The pyfunc model is saved from code (no pickle) with the udl-med model folder as
        its artifact, so ``mlflow.pyfunc.load_model("runs:/<id>/model")`` predicts what
        the method's command does and ``runs:/<id>/model`` works as MODEL in every udl-med
        command. With ``as_mlflow_model`` false (``tracking.log_model: false``), or an
        MLflow older than 3, the folder is logged as plain artifacts under ``model/``
        (every command still reads it); the MLflow version is then named in one warning
        per process. In strict privacy mode the model file's config has its paths hashed.
        No input example is logged.
        """
        if self.scrub.strict:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / "model"
                folder.mkdir()
                for path in sorted(p for p in Path(model_folder).iterdir() if p.is_file()):
                    if self.scrub.artifact(path, folder) == path:  # not rewritten: copied as it is
                        shutil.copy2(path, folder)
                self._log_model(folder, as_mlflow_model)
            return
        self._log_model(Path(model_folder), as_mlflow_model)

    def _log_model(self, model_folder: Path, as_mlflow_model: bool) -> None:
        if as_mlflow_model and mlflow_major() < PYFUNC_MLFLOW_MAJOR:
            warn_once(
                "mlflow<3",
                "MLflow %s cannot log the pyfunc model from code (needs MLflow >= %d); "
                "logging the udl-med model folder as the run's `model` instead (every udl-med command reads it)",
                mlflow.__version__,
                PYFUNC_MLFLOW_MAJOR,
            )
            as_mlflow_model = False
        if not as_mlflow_model:
            mlflow.log_artifacts(str(model_folder), artifact_path="model")
            return

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example.*", category=UserWarning)  # none, on purpose (privacy)
            mlflow.pyfunc.log_model(
                name="model",
                python_model=str(CODE_FILE),
                artifacts={ARTIFACT: str(model_folder)},
                signature=signature(),
                pip_requirements=["torch", "monai", "udl-med"],
            )

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self._writer.close()  # every metric is stored before the run is marked ended
        mlflow.end_run(status=status)


def source_tags(scrub: Scrubber) -> dict[str, str] | None:
    """In strict mode, MLflow's ``mlflow.source.name`` (the program's path) hashed like every path."""
    return {"mlflow.source.name": scrub.text(sys.argv[0] or "python")} if scrub.strict else None


def log_step(kind: str, outputs: dict[str, Any], params: dict[str, Any], scrub: Scrubber | None = None) -> None:
    """Log a pipeline step into the active (nested) run: its params, numeric outputs as metrics, its ``artifacts``.

    Through ``scrub`` (the pipeline's privacy mode): in strict mode paths are hashed and
    images are logged only for steps that draw from the prior (:data:`~udl_med.engine.privacy.PRIOR_STEPS`).
    """
    scrub = scrub or Scrubber()
    mlflow.log_params({k: _param_value(scrub.value(v)) for k, v in params.items()})
    metrics = {k: float(v) for k, v in outputs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if metrics:
        mlflow.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        for path in outputs.get("artifacts", []) or []:
            if not Path(path).is_file():
                continue
            if scrub.keep_step_artifact(kind, Path(path)):
                mlflow.log_artifact(str(scrub.artifact(Path(path), Path(tmp))))
            else:
                warn_once(f"step:{kind}:{Path(path).name}", "privacy %s: %s of step kind %r (of real scans) not logged", scrub.mode, Path(path).name, kind)


class NullTracker:
    """What processes other than rank 0 use: logs nothing."""

    run_id: str | None = None
    uri: str | None = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None
