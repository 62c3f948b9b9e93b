"""The method interface: what one training step does.

A method is the recipe, the engine is the loop. A method builds its networks and
optimizers from its config section (``model:`` in the run config) and says what one
training step does, top to bottom; the engine owns devices, the data loader, epochs,
evaluation, checkpoints, resume, progress, distributed training and MLflow.

A new method is one module under ``udl_med/methods/`` that subclasses
:class:`Method`, declares a pydantic ``Config`` for its ``model:`` section and
registers itself with :func:`register`::

    @register("autoencoder")
    class AutoencoderMethod(Method):
        Config = AutoencoderConfig
        batch_keys = (keys.IMAGE,)
        capabilities = frozenset({Capability.ENCODE})

        def configure_optimizers(self): return {"ae": Adam(self.net.parameters(), lr=...)}

        def train_step(self, batch, opt):
            x = batch[keys.IMAGE]
            with opt.autocast():
                loss = F.mse_loss(self.net(x), x)
            opt.step("ae", loss)
            return {"loss": loss.detach()}
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from enum import Enum
from typing import Any, ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

import udl_med.methods as pkg
from udl_med.data.spec import DataSpec

__all__ = ["Capability", "DataSpec", "InitFrom", "Method", "MethodConfig", "Optimization", "get_method", "register"]


class Capability(str, Enum):
    """What a trained method can do beyond training, used by the CLI commands."""

    SAMPLE = "sample"  # udl-med sample
    ENCODE = "encode"  # udl-med encode, export --format encoder
    TRANSLATE = "translate"  # udl-med translate, export --format bundle|torchscript
    CLASSIFY = "classify"  # semi-supervised / fine-tuned classifiers


class MethodConfig(BaseModel):
    """Base of every method's ``model:`` section: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    def check_run(self, train: Any) -> None:
        """Refuse keys that do not fit the run's ``train:`` section, called when the run config loads.

        Raise ``ConfigError("<config>", "model.KEY", problem)`` naming the ``train`` key too;
        the engine puts the config file in its place. The default accepts everything.
        """

    def check_data(self, data: Any) -> None:
        """Refuse keys of the run's ``data:`` section this method cannot train with (``ConfigError`` naming ``data.KEY``), called when the run config loads.

        The default accepts everything; the adversarial methods refuse ``data.augment``
        (:meth:`udl_med.methods.adversarial.DiscriminatorSideConfig.check_data`).
        """


class InitFrom(BaseModel):
    """Weights of a trained model copied into submodules of a new run before its first step.

    A run asks for it in ``train.init_from`` (``[{model: runs/<run>/model, modules: [encoder]}]``),
    a method for itself through :meth:`Method.init_from` (the two-stage GAN's stage I);
    the engine loads it (:func:`udl_med.engine.model_io.apply_init_from`) on a fresh
    start, and a resumed run has it in its checkpoint.

    Attributes:
        model: a model folder written by ``train`` (or a run folder holding one), or an
            MLflow model URI.
        modules: names of the submodules copied; each exists under the same name in both
            methods and is kept in the model file.
        method: the method that must have written ``model`` (None: any).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    modules: tuple[str, ...] = Field(min_length=1)
    method: str | None = None


class Optimization(Protocol):
    """The engine's side of an optimizer step, handed to :meth:`Method.train_step`.

    ``step(name, loss)`` zeroes the named optimizer's gradients, back-propagates
    ``loss`` (scaled under mixed precision), averages gradients across processes when
    distributed, clips them if configured and steps the optimizer. ``autocast()`` is
    the mixed-precision context to run forward passes in.
    """

    #: completed training steps before this one (0 at the first step): the method's clock
    global_step: int

    def step(self, name: str, loss: Tensor, retain_graph: bool = False) -> None: ...

    def autocast(self) -> AbstractContextManager: ...

    def next_batch(self) -> dict[str, Any]:
        """A fresh training batch on the method's device (at most ``batches_per_step() - 1`` per step)."""
        ...

    def optimizer(self, name: str) -> torch.optim.Optimizer:
        """The optimizer ``name`` (read its learning rate, step it by hand in unrolling)."""
        ...

    def snapshot(self, *names: str) -> dict[str, Any]:
        """Deep copies of the named optimizers' states (all when no name is given)."""
        ...

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Load the optimizer states a :meth:`snapshot` took."""
        ...


class Method(nn.Module, ABC):
    """Base class of every training method.

    Subclasses set the class attributes, build their networks as submodules in
    ``__init__`` (so ``state_dict`` holds all of them) and implement
    :meth:`configure_optimizers` and :meth:`train_step`. Everything else is optional
    and declared through ``capabilities``.

    Args:
        config: the validated ``model:`` section (an instance of ``Config``).
        data: spatial dims, channels, item size and class count of the training data.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    batch_keys: ClassVar[tuple[str, ...]] = ("image",)  # keys train_step reads
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    ema_modules: ClassVar[tuple[str, ...]] = ()  # submodule names averaged when train.ema_decay is set
    # Submodules inference needs (a GAN's generator, a CycleGAN's two generators): model
    # files keep only their state. Empty: everything.
    inference_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: MethodConfig, data: DataSpec) -> None:
        super().__init__()
        self.config = config
        self.data = data

    @abstractmethod
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Return the method's optimizers by name; called once after ``.to(device)``."""

    @abstractmethod
    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor | float]:
        """Do one training step on ``batch``; return detached scalar losses by name."""

    def batches_per_step(self) -> int:
        """Training batches one step uses: ``batch`` plus ``opt.next_batch()`` calls (k D steps, feature matching)."""
        return 1

    def reference_batch_size(self) -> int:
        """Training items :meth:`on_train_start` receives as a fixed reference batch (0: none)."""
        return 0

    def on_train_start(self, reference: dict[str, Any] | None, generator: torch.Generator) -> None:
        """Called once per process before the first step, fresh or resumed (virtual batch norm's reference).

        ``reference`` holds :meth:`reference_batch_size` training items, the same on every
        rank and on resume (None when the size is 0); ``generator`` is a CPU generator
        seeded from the run seed, for any draw the hook makes. It runs after a resumed
        checkpoint is loaded and before the RNG states are restored, so it must not use
        the global RNG. What inference needs must be stored as buffers.
        """

    def init_from(self) -> tuple[tuple[str, InitFrom], ...]:
        """Weights this method loads from trained models before a fresh run, as ``(config key, what)`` pairs.

        The engine copies them in (with ``train.init_from``) right after building the
        method; errors name the config key. Default: none.
        """
        return ()

    def num_sample_classes(self) -> int:
        """Classes :meth:`sample` accepts as ``label`` (0: an unconditional model)."""
        return 0

    def check_sample_label(self, label: int | None) -> None:
        """Refuse a label for an unconditional model, or a class the model does not know (``ValueError``)."""
        if label is None:
            return
        classes = self.num_sample_classes()
        if classes == 0:
            raise ValueError(f"method {self.name!r} is unconditional; a label needs a conditional model")
        if not 0 <= label < classes:
            raise ValueError(f"label {label} is not a class of this model (0 to {classes - 1})")

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        """Return evaluation metrics on a held-out batch (the model is in eval mode)."""
        return {}

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Return images to look at, by name, each ``(B, C, *spatial)`` in [-1, 1]."""
        return {}

    def sample(self, n: int, generator: torch.Generator | None = None, label: int | None = None) -> Tensor:
        """Draw ``n`` new images ``(n, C, *spatial)`` in [-1, 1]."""
        raise NotImplementedError(f"method {self.name!r} cannot sample")

    def encode(self, x: Tensor) -> Tensor:
        """Map images ``(B, C, *spatial)`` to feature vectors ``(B, F)``."""
        raise NotImplementedError(f"method {self.name!r} cannot encode")

    def translate(self, x: Tensor, direction: str) -> Tensor:
        """Translate normalised images ``(B, C, *spatial)``; direction ``ct2mr`` or ``mr2ct``."""
        raise NotImplementedError(f"method {self.name!r} cannot translate")

    def export_encoder(self) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
        """Return ``(monai class path, constructor kwargs, state dict)`` of the encoder."""
        raise NotImplementedError(f"method {self.name!r} has no exportable encoder")


_REGISTRY: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _import_all() -> None:
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base":
            importlib.import_module(f"udl_med.methods.{info.name}")


def get_method(name: str) -> type[Method]:
    """Return the method class registered as ``name``; ``KeyError`` lists the valid names."""
    _import_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
