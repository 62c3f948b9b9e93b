"""The one training loop, shared by every method.

The loop is a few hooks around ``method.train_step(batch, opt)``: it owns seeding and
determinism, the device and mixed precision, the data order, learning-rate schedules,
EMA, evaluation with PNG previews, atomic checkpoints and exact resume, a stop on a
non-finite loss, a checkpoint on Ctrl-C / SIGTERM (then :class:`~udl_med.errors.Interrupted`:
exit 130), a progress bar (hidden by ``TQDM_DISABLE=1``; log lines print above it), distributed data
parallel training under torchrun, and MLflow tracking. A method never edits it.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import warnings
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from udl_med import keys
from udl_med.data.preview import save_grid, save_scatter
from udl_med.engine import checkpoint as ckpt
from udl_med.engine.config import RunConfig, apply_overrides, blame_overrides, load_config, validate_config
from udl_med.engine.data_order import fixed_batches, reference_batch, step_loader
from udl_med.engine.distributed import ProcessInfo, all_mean, any_rank, broadcast_parameters, choose_device, init_distributed, leave_distributed
from udl_med.engine.model_io import apply_init_from, save_model
from udl_med.engine.optimization import EMA, EngineOptimization, build_schedulers, resolve_amp
from udl_med.engine.sample_eval import SampleEvaluator
from udl_med.engine.store import store_errors
from udl_med.engine.tracking import NullTracker, Tracker
from udl_med.errors import ConfigError, Interrupted, RunError
from udl_med.io_utils import atomic_write_text, check_writable, progress_disabled
from udl_med.methods.base import Capability, Method, get_method

log = logging.getLogger(__name__)
EMA_START_SHARE = 0.05  # train.ema_decay: warn when the starting weights are more than this share of the saved average (the demo's K+1, 0.99 over 400 steps, keeps 1.8%)
# A method that steps only some of its optimizers in a step (greedy layer-wise training,
# n_critic) leaves the others' schedulers "stepped before optimizer.step()": expected.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
CHECKPOINT_NAME = "last.pt"
BEST_CHECKPOINT_NAME = "best.pt"  # train.sample_eval.keep_best: the weights with the lowest FID
RUN_INFO_NAME = "run.json"


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def scalars(losses: dict[str, Any]) -> dict[str, float]:
    """Detached scalar losses as floats, with one host synchronisation for all tensor values."""
    names = [k for k, v in losses.items() if isinstance(v, torch.Tensor)]
    values = torch.stack([losses[k].detach().float().reshape(()) for k in names]).tolist() if names else []
    out = {k: float(v) for k, v in losses.items() if not isinstance(v, torch.Tensor)}
    out.update(zip(names, values))
    return {k: out[k] for k in losses}


class RunningMeans:
    """Means of the scalar losses since the last report."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] += v
            self.counts[k] += 1

    def pop(self) -> dict[str, float]:
        means = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums.clear()
        self.counts.clear()
        return means


class StopRequest:
    """Turns SIGINT / SIGTERM into a flag the loop checks between steps (a second Ctrl-C kills)."""

    def __init__(self) -> None:
        self.requested: str | None = None

    @contextmanager
    def installed(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = signal.Signals(signum).name

        try:
            previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: no signal handling
            yield
            return
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


class Trainer:
    """Trains ``config.method`` as ``config`` says; ``run()`` returns the final report."""

    def __init__(
        self,
        config: RunConfig,
        resume: bool = False,
        source: str = "<config>",
        datasets: tuple[Any, Any | None] | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.config = config
        self.resume = resume
        self.source = source
        self.datasets = datasets  # (train, eval) for data.kind: memory
        self.on_step = on_step  # called with (step, losses) after every step: in-process fits read their curves
        self.process: ProcessInfo = init_distributed("cuda" if config.train.device != "cpu" and torch.cuda.is_available() else "cpu")
        self.device = choose_device(config.train.device, self.process)
        self.run_dir = config.run_dir
        self.checkpoint_path = self.run_dir / "checkpoints" / CHECKPOINT_NAME

    # -- set-up ---------------------------------------------------------------------

    def _build(self) -> None:
        from udl_med.data.builder import build_datasets  # lazy: monai and the readers load only to train

        cfg = self.config
        if cfg.train.threads is not None:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.seed + self.process.rank, cfg.train.deterministic)
        self.train_set, self.eval_set, self.spec = build_datasets(cfg.data, cfg.seed, self.datasets, self.source)
        n_train = len(self.train_set)
        if n_train < cfg.train.batch_size * self.process.world_size:
            raise ConfigError(self.source, "train.batch_size", f"{cfg.train.batch_size} is more than the {n_train} training items")
        method_cls = get_method(cfg.method)
        missing = [k for k in method_cls.batch_keys if k not in self._batch_keys()]
        if missing:
            raise ConfigError(self.source, "data.pairing", f"method {cfg.method!r} needs batch keys {missing}; check data.pairing / data.labeled")
        self.method: Method = method_cls(cfg.model, self.spec).to(self.device)
        if not self.resume:  # a resumed run has these weights in its checkpoint
            for key, what in (*(("train.init_from", w) for w in cfg.train.init_from), *self.method.init_from()):
                apply_init_from(self.method, what, key)
        broadcast_parameters(self.method)
        self.optimizers = self.method.configure_optimizers()
        self.schedulers = build_schedulers(self.optimizers, cfg.train)
        amp = resolve_amp(cfg.train.amp, self.device)
        self.opt = EngineOptimization(self.optimizers, self.device, amp, cfg.train.grad_clip)
        self.ema = EMA(self.method, self.method.ema_modules, cfg.train.ema_decay) if cfg.train.ema_decay and self.method.ema_modules else None
        start_share = EMA.start_share(cfg.train.ema_decay, cfg.train.steps) if self.ema is not None else 0.0
        if start_share > EMA_START_SHARE:
            log.warning(
                "train.ema_decay %g over %d steps: the starting weights are still %.0f%% of the averaged model that is evaluated and saved; %.4f or less keeps them under %g%%",
                cfg.train.ema_decay, cfg.train.steps, 100 * start_share, EMA_START_SHARE ** (1 / max(cfg.train.steps - 1, 1)), 100 * EMA_START_SHARE,
            )
        self.batches_per_step = int(self.method.batches_per_step())
        if self.batches_per_step < 1:
            raise ValueError(f"method {cfg.method!r}: batches_per_step() must be at least 1, got {self.batches_per_step}")
        self.sample_evaluator = None
        if cfg.train.sample_eval is not None:
            if Capability.SAMPLE not in self.method.capabilities:
                raise ConfigError(self.source, "train.sample_eval", f"method {cfg.method!r} cannot sample")
            if self.eval_set is None:
                raise ConfigError(self.source, "train.sample_eval", "needs evaluation data (data.eval_split)")
            if len(self.eval_set) < 2:  # FID needs two real items; a tiny evaluation split (one 3D patch) has one
                raise ConfigError(
                    self.source,
                    "train.sample_eval",
                    f"needs at least 2 evaluation items; data.eval_split {cfg.data.eval_split!r} gives {len(self.eval_set)}: "
                    "give that split more subjects, or set train.sample_eval to null",
                )
            if self.process.is_main:
                self.sample_evaluator = SampleEvaluator(cfg.train.sample_eval, self.eval_set, self.spec.spatial_dims)

    def _batch_keys(self) -> set[str]:
        return set(self.train_set[0].keys()) if len(self.train_set) else set()

    def _restore(self) -> tuple[int, str | None]:
        """Load the run folder's checkpoint when resuming; return (start step, MLflow run id)."""
        self.best_fid = math.inf
        if not self.resume:
            if self.checkpoint_path.exists():
                raise ConfigError(
                    self.source, "output_dir", f"{self.run_dir} already holds a run; pass --resume to continue it or set output_dir"
                )
            return 0, None
        if not self.checkpoint_path.exists():
            raise ConfigError(self.source, "output_dir", f"nothing to resume: no checkpoint in {self.checkpoint_path.parent}")
        state = ckpt.load_checkpoint(self.checkpoint_path)
        if state["method"] != self.config.method:
            raise ConfigError(self.source, "method", f"the checkpoint was written by method {state['method']!r}")
        self.method.load_state_dict(state["model"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        self.opt.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self._rng_to_restore = state["rng"]
        self.best_fid = float(state.get("best_fid", math.inf))
        log.info("resuming %s from step %d", self.run_dir, state["step"])
        return int(state["step"]), state.get("mlflow_run_id")

    # -- the loop -------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.config
        self._rng_to_restore = None
        if self.process.is_main:
            check_writable(self.run_dir, "folder")  # before the data is read and the networks built
        self._build()
        start, mlflow_run_id = self._restore()
        main = self.process.is_main
        tracked = main and cfg.tracking.enabled
        with store_errors(cfg.tracking.uri or "the default MLflow store"):  # one line, exit 2
            tracker = (
                Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.run_name, run_id=mlflow_run_id, privacy=cfg.tracking.privacy)  # strict mode hashes paths and withholds previews
                if tracked
                else NullTracker()
            )
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / RUN_INFO_NAME, json.dumps({"mlflow_run_id": tracker.run_id, "tracking_uri": tracker.uri}))
            tracker.log_config(cfg.to_dict())
        eval_batches = fixed_batches(self.eval_set, cfg.train.eval_items, cfg.train.batch_size) if self.eval_set else []
        loader = step_loader(
            self.train_set,
            cfg.train.batch_size,
            cfg.seed,
            start * self.batches_per_step,
            cfg.train.num_workers,
            self.process.rank,
            self.process.world_size,
        )
        batches_per_epoch = loader.step_sampler.batches_per_epoch
        n_reference = int(self.method.reference_batch_size())
        reference = to_device(reference_batch(self.train_set, n_reference, cfg.seed), self.device) if n_reference else None
        self.method.on_train_start(reference, torch.Generator().manual_seed(cfg.seed))
        if self._rng_to_restore is not None:
            ckpt.set_rng_state(self._rng_to_restore)
        status, ranks_in_step = "FAILED", False
        try:
            report = self._loop(tracker, loader, eval_batches, start, batches_per_epoch)
            status, ranks_in_step = "FINISHED", True
            return report
        except Interrupted:
            status, ranks_in_step = "KILLED", True  # MLflow's status of a run stopped by the user; every rank stopped at the same step
            raise
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            tracker.end(status)
            leave_distributed(ranks_in_step)

    def _loop(self, tracker, loader, eval_batches, start: int, batches_per_epoch: int) -> dict[str, Any]:
        cfg, train = self.config, self.config.train
        running, epoch_means = RunningMeans(), RunningMeans()
        last_train: dict[str, float] = {}
        last_eval: dict[str, float] = {}
        stop = StopRequest()
        progress = tqdm(
            total=train.steps, initial=start, desc=cfg.run_name, disable=progress_disabled(not self.process.is_main), mininterval=0.5, dynamic_ncols=True
        )
        batches = iter(loader)
        step = start
        drawn = start * self.batches_per_step  # loader batches consumed: the data position

        def draw() -> dict[str, Any]:
            nonlocal drawn
            drawn += 1
            return to_device(next(batches), self.device)

        self.method.train()
        with stop.installed(), progress, logging_redirect_tqdm():  # log lines above the bar, not glued to it
            while step < train.steps:
                batch = draw()
                self.opt.begin_step(step, draw, self.batches_per_step - 1)
                if not self.method.training:  # set once, and again after an evaluation (train() walks every submodule)
                    self.method.train()
                losses = scalars(self.method.train_step(batch, self.opt))
                for _ in range(self.opt.unused_batches()):  # keep the data order a function of the step
                    next(batches)
                    drawn += 1
                bad = [k for k, v in losses.items() if not math.isfinite(v)]
                if bad:
                    kept = f"last good checkpoint {self.checkpoint_path}" if self.checkpoint_path.exists() else "no checkpoint was written yet"
                    raise RunError(f"loss {bad[0]} is {losses[bad[0]]} at step {step + 1}; training stopped, {kept}")
                for scheduler in self.schedulers.values():
                    scheduler.step()
                if self.ema is not None:
                    self.ema.update(self.method)
                step += 1
                running.add(losses)
                epoch_means.add(losses)
                if self.on_step is not None:
                    self.on_step(step, losses)
                progress.update(1)
                if step % train.log_every == 0 or step == train.steps:
                    last_train = all_mean(running.pop(), self.device)
                    learning_rates = {f"lr/{k}": s.get_last_lr()[0] for k, s in self.schedulers.items()}
                    tracker.log_metrics({**{f"train/{k}": v for k, v in last_train.items()}, **learning_rates}, step)
                    progress.set_postfix({k: f"{v:.4g}" for k, v in list(last_train.items())[:4]})
                epoch = drawn // batches_per_epoch
                if epoch > (drawn - self.batches_per_step) // batches_per_epoch:
                    tracker.log_metrics({f"epoch/{k}": v for k, v in all_mean(epoch_means.pop(), self.device).items()}, epoch)
                if eval_batches and (step % train.eval_every == 0 or step == train.steps):
                    last_eval = self._evaluate(tracker, eval_batches, step)
                if train.sample_eval and (step % train.sample_eval.every == 0 or step == train.steps):
                    last_eval.update(self._evaluate_samples(tracker, step))
                stopping = any_rank(stop.requested is not None, self.device)  # every rank stops at the same step
                if step % train.checkpoint_every == 0 or step == train.steps or stopping:
                    self._save_checkpoint(step, tracker.run_id)
                if stopping:
                    by = stop.requested or "a signal to another rank"
                    raise Interrupted(f"stopped by {by} at step {step}; checkpoint written to {self.checkpoint_path}, continue with --resume")
        model_dir = self._finish(tracker, eval_batches)
        report = {"run_id": tracker.run_id, "run_dir": str(self.run_dir), "model_dir": str(model_dir), "steps": step}
        if train.sample_eval and train.sample_eval.keep_best and math.isfinite(self.best_fid):
            report["best_fid"] = self.best_fid
        report.update({f"train/{k}": v for k, v in last_train.items()})
        report.update({f"eval/{k}": v for k, v in last_eval.items()})
        return report

    def _evaluate(self, tracker, eval_batches: list[dict[str, Any]], step: int) -> dict[str, float]:
        """Average ``method.evaluate`` over the held-out batches; save and log the previews."""
        self.method.eval()
        sums: dict[str, float] = defaultdict(float)
        with torch.no_grad(), (self.ema.swapped_in(self.method) if self.ema else nullcontext()):
            for batch in eval_batches:
                for k, v in self.method.evaluate(to_device(batch, self.device)).items():
                    sums[k] += float(v) / len(eval_batches)
            previews = self.method.preview(to_device(eval_batches[0], self.device)) if self.process.is_main else {}
        metrics = all_mean(dict(sums), self.device)
        tracker.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step)
        for name, images in previews.items():
            path = self.run_dir / "previews" / f"{name}_step{step:06d}.png"
            images = images.detach().float().cpu()
            if images.ndim == 2:  # point data (B, 2): a scatter plot with the mixture's modes

                save_scatter(images, path, centres=getattr(self.train_set, "centres", None))
            else:
                save_grid(images, path)
            tracker.log_preview(name, path)  # strict privacy withholds previews of real scans
        return metrics

    def _evaluate_samples(self, tracker, step: int) -> dict[str, float]:
        """FID/KID of the method's samples (EMA weights where used); keeps the best weights if asked."""
        metrics: dict[str, float] = {}
        if self.sample_evaluator is not None:
            self.method.eval()
            with self.ema.swapped_in(self.method) if self.ema else nullcontext():
                metrics = self.sample_evaluator(self.method)
            tracker.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step)
            if self.config.train.sample_eval.keep_best and metrics[keys.FID] < self.best_fid:
                self.best_fid = metrics[keys.FID]
                state = self.ema.averaged_state(self.method) if self.ema else self.method.state_dict()
                ckpt.atomic_torch_save({"step": step, "fid": self.best_fid, "model": state}, self.checkpoint_path.parent / BEST_CHECKPOINT_NAME)
        return metrics

    def _save_checkpoint(self, step: int, mlflow_run_id: str | None) -> None:
        if not self.process.is_main:
            return
        ckpt.save_checkpoint(
            self.checkpoint_path,
            method=self.config.method,
            config=self.config.to_dict(),
            step=step,
            model=self.method.state_dict(),
            optimizers={k: o.state_dict() for k, o in self.optimizers.items()},
            schedulers={k: s.state_dict() for k, s in self.schedulers.items()},
            scaler=self.opt.scaler.state_dict(),
            ema=self.ema.state_dict() if self.ema else {},
            mlflow_run_id=mlflow_run_id,
            best_fid=self.best_fid,
        )

    def _finish(self, tracker, eval_batches: list[dict[str, Any]]) -> Path:
        """Write the model folder (EMA weights where used) and log it, with the checkpoint."""
        model_dir = self.run_dir / "model"
        if not self.process.is_main:
            return model_dir
        state = self.ema.averaged_state(self.method) if self.ema else self.method.state_dict()
        best = self.checkpoint_path.parent / BEST_CHECKPOINT_NAME
        if self.config.train.sample_eval and self.config.train.sample_eval.keep_best and best.exists():
            state = torch.load(best, map_location="cpu", weights_only=True)["model"]
        save_model(model_dir, self.method, self.config.to_dict(), state, self.config.train.steps)
        tracker.log_artifact(self.checkpoint_path, "checkpoints")
        tracker.log_model(model_dir, as_mlflow_model=self.config.tracking.log_model)
        return model_dir


def train(
    config: RunConfig | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    datasets: tuple[Any, Any | None] | None = None,
) -> dict[str, Any]:
    """Train from a validated config or a config dictionary (``overrides`` as ``key.path=value``).

    ``datasets=(train, eval)`` hands in-memory data to a ``data.kind: memory`` run: torch
    datasets of dict items (see :mod:`udl_med.data.memory`).
    """
    if overrides or not isinstance(config, RunConfig):
        raw = config.to_dict() if isinstance(config, RunConfig) else config
        try:
            config = validate_config(apply_overrides(raw, overrides, "<config>"), "<config>")
        except ConfigError as err:
            raise blame_overrides(err, overrides, raw) from None
    return Trainer(config, resume=resume, datasets=datasets).run()


def train_from_file(path: str | Path, overrides: list[str] | tuple[str, ...] = (), resume: bool = False) -> dict[str, Any]:
    """``udl-med train CONFIG [--set ...] [--resume]``."""
    return Trainer(load_config(path, overrides), resume=resume, source=str(path)).run()
