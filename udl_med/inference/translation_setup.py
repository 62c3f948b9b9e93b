"""What translation inference must repeat from training: directions, the normalisation in and out.

:class:`TranslationSetup` is read from a model's validated run config (its ``data``
section, so every default is the one :class:`udl_med.data.config.DataConfig` declares).
CT goes through the run's HU window both ways; MR in through the volume's own robust
percentiles, MR out onto ``MR_OUTPUT_RANGE`` = (0, 1000) arbitrary units (MR has no
absolute scale; the range keeps DICOM's int16 storage fine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from udl_med.data.config import DataConfig
from udl_med.data.normalize import normalization_params, normalize
from udl_med.engine.config import validate_config
from udl_med.errors import InputError, UserError

DIRECTIONS = ("ct2mr", "mr2ct")
SOURCE = {"ct2mr": "CT", "mr2ct": "MR"}
TARGET = {"ct2mr": "MR", "mr2ct": "CT"}
MR_OUTPUT_RANGE: tuple[float, float] = (0.0, 1000.0)
PERCENTILE_SAMPLE = 2**24  # MR percentiles of larger volumes come from an evenly strided sample

__all__ = [
    "DIRECTIONS", "SOURCE", "TARGET", "MR_OUTPUT_RANGE", "PERCENTILE_SAMPLE", "TranslationSetup",
    "input_params", "output_params", "to_unit", "resolve_direction", "direction_for",
]


def _data_config(config: Any) -> Any:
    """The validated ``data`` section of a run config (a RunConfig, a DataConfig or a config dict)."""
    if isinstance(config, DataConfig):
        return config
    data = getattr(config, "data", None)
    if isinstance(data, DataConfig):
        return data
    if isinstance(config, dict):
        return validate_config(config, "<model config>").data
    raise TypeError(f"expected a RunConfig, DataConfig or config dict, got {type(config).__name__}")


@dataclass(frozen=True)
class TranslationSetup:
    """How a model was trained, read from its run config: what inference must repeat."""

    layout: str  # "2d", "2.5d" or "3d"
    slice_axis: int
    context: int
    roi_size: tuple[int, ...]  # the training item size: sliding-window size of 3D models
    ct_window: tuple[float, float]
    mr_percentiles: tuple[float, float]

    @classmethod
    def from_config(cls, config: Any) -> TranslationSetup:
        """From a validated run config (``LoadedModel.run_config``), its ``data`` section, or a config dict."""
        data = _data_config(config)
        return cls(
            layout=data.layout,
            slice_axis=data.slice_axis,
            context=data.context if data.layout == "2.5d" else 0,
            roi_size=tuple(int(s) for s in data.size),
            ct_window=(float(data.ct_window[0]), float(data.ct_window[1])),
            mr_percentiles=(float(data.mr_percentiles[0]), float(data.mr_percentiles[1])),
        )


def input_params(image: Tensor, modality: str, setup: TranslationSetup) -> dict[str, Any]:
    """Normalisation parameters of an input volume, as training computed them.

    MR percentiles of volumes above ``PERCENTILE_SAMPLE`` voxels come from an evenly
    strided sample, so a 512 x 512 x 300 volume is not copied in float64.
    """
    flat = image.reshape(-1)
    if modality == "MR" and flat.numel() > PERCENTILE_SAMPLE:
        flat = flat[:: -(-flat.numel() // PERCENTILE_SAMPLE)]
    return normalization_params(flat, modality, setup.ct_window, setup.mr_percentiles)


def output_params(modality: str, setup: TranslationSetup) -> dict[str, Any]:
    """Parameters that map a network output in [-1, 1] to ``modality``'s output units."""
    if modality == "CT":
        return {"modality": "CT", "kind": "window", "low": setup.ct_window[0], "high": setup.ct_window[1]}
    return {"modality": "MR", "kind": "percentile", "low": MR_OUTPUT_RANGE[0], "high": MR_OUTPUT_RANGE[1]}


def to_unit(x: Tensor, params: dict[str, Any]) -> Tensor:
    """Apply ``params``' clip-and-scale to ``x``: a window ``(low, high)`` is the same map for CT and MR."""
    return normalize(x, "CT", ct_window=(params["low"], params["high"]))[0]


def direction_for(modality: str | None, direction: str | None, available: tuple[str, ...]) -> str | None:
    """The direction an input of ``modality`` is translated in, or None when it is the other modality.

    ``direction`` (if given) must start from ``modality``; otherwise the model's direction
    that starts from it. An unknown modality gives ``direction`` (possibly None: decided later).
    """
    if modality not in ("CT", "MR"):
        return direction
    wanted = direction or {SOURCE[d]: d for d in available}.get(modality)
    return wanted if wanted is not None and SOURCE[wanted] == modality else None


def resolve_direction(direction: str | None, modality: str | None, available: tuple[str, ...], where: str | Path) -> str:
    """The direction to translate ``where``: given, or from the input's modality.

    Raises:
        InputError: the modality is unknown and the model translates both ways, or it
            contradicts ``direction``.
        UserError: the model cannot translate in ``direction``.
    """
    if direction is None:
        if modality in ("CT", "MR"):
            direction = "ct2mr" if modality == "CT" else "mr2ct"
        elif len(available) == 1:
            direction = available[0]
        else:
            raise InputError(where, "the modality is unknown (neither the file nor the manifest says); pass --direction ct2mr or mr2ct")
    if direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    if direction not in available:
        raise UserError(f"the model translates only {', '.join(available)}, not {direction}")
    if modality in ("CT", "MR") and modality != SOURCE[direction]:
        raise InputError(where, f"is {modality}, but {direction} needs a {SOURCE[direction]} input")
    return direction
