"""A trained translation model loaded for inference: its generators and its validated run config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from udl_med.engine.model_io import load_model, resolve_device
from udl_med.errors import UserError
from udl_med.inference.translation_setup import DIRECTIONS, TranslationSetup
from udl_med.methods.base import Capability
from udl_med.nets.cpu_inference import fold_narrow_convolutions

log = logging.getLogger(__name__)

__all__ = ["Translator", "load_translator"]


class Translator(torch.nn.Module):
    """A trained translation model ready for inference: its generators, and the run config that says how it was trained.

    Only the generators are kept; discriminators, image pools and losses are dropped as
    the model loads (a 3D CycleGAN's discriminators hold most of its weights). On the
    CPU, narrow convolutions are folded for speed (:mod:`udl_med.nets.cpu_inference`).

    Attributes:
        name: the method's name.
        config: the validated :class:`~udl_med.engine.config.RunConfig` of the run.
        setup: what inference repeats from training (:class:`TranslationSetup`).
        directions: the directions it translates.
        geometry: the spacing and orientation of its training scans
            (:class:`~udl_med.data.spec.TrainingGeometry`), or None.
    """

    def __init__(self, method: Any, config: Any, geometry: Any = None) -> None:
        super().__init__()
        self.geometry = geometry  # the training grid (TrainingGeometry), None for models without one
        self.name: str = method.name
        self.config = config
        self.setup = TranslationSetup.from_config(config)
        self.directions: tuple[str, ...] = tuple(getattr(method, "directions", DIRECTIONS))
        self.generators = torch.nn.ModuleDict({d: method.generator(d) for d in self.directions})

    def translate(self, x: Tensor, direction: str) -> Tensor:
        """Translate normalised images ``(B, C, *spatial)`` in ``direction``."""
        return self.generators[direction](x)


def load_translator(model: str | Path, device: str | None = None) -> Translator:
    """The :class:`Translator` of a ``cyclegan`` or ``pix2pix`` model (folder or MLflow URI), eval mode.

    On ``device``; by default on CUDA when there is one, else the CPU.

    Raises:
        InputError: no model there.
        UserError: the method cannot translate, or a device this machine lacks.
    """
    where = resolve_device(device if device is not None else ("cuda" if torch.cuda.is_available() else None))
    loaded = load_model(model)
    if Capability.TRANSLATE not in loaded.method.capabilities:
        raise UserError(f"{model}: method {loaded.method.name!r} cannot translate (use a cyclegan or pix2pix model)")
    translator = Translator(loaded.method, loaded.run_config, loaded.data_spec.geometry).eval()
    del loaded  # the discriminators go with the method
    if where.type != "cpu":
        translator.to(where)
    else:
        folded = fold_narrow_convolutions(translator)
        log.debug("translate: %d narrow convolution(s) folded for CPU inference", folded)
    return translator
