"""``data.augment``: MONAI dictionary transforms applied to training items, reproducibly.

A run config lists MONAI dictionary transforms by name, each with its arguments::

    data:
      augment:
        - RandFlipd: {prob: 0.5, spatial_axis: 0}
        - RandAffined: {prob: 0.3, rotate_range: 0.2, scale_range: 0.1, padding_mode: zeros}
        - RandGaussianNoised: {prob: 0.2, std: 0.05}
        - RandAdjustContrastd: {prob: 0.3, gamma: [0.8, 1.25]}

``keys`` is filled in by udl-med: the item's images (``image``, or ``ct`` and ``mr`` for
paired / unpaired items, which then share each random draw). Every entry is checked
when the config loads: an unknown transform (with the closest names) or an argument
the transform does not take is refused naming ``data.augment.<i>``; the transform is
built once there, so a bad value fails at load too.

Augmentation applies to training items only (the dataset built for ``data.split``; the
evaluation split is never augmented) and after the crop, so items keep ``data.size``.
Its random draws come from the item's seed, which the engine's data order hands every
item (:class:`udl_med.engine.data_order.SeededItems` calls ``set_random_state``): item
``i`` of a run with seed ``s`` is augmented the same way in any process, any loader
worker, and after a resume, so resume stays bit-exact.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["check_step", "normalise_step", "build_augment", "augment_item"]

_AUGMENT_STREAM = 0x61756720  # separates augmentation draws from the crop's, which use (seed, index)


def _transforms() -> Any:
    import monai.transforms  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    return monai.transforms


def _dictionary_transforms() -> list[str]:
    from monai.transforms import MapTransform  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    mt = _transforms()
    return sorted(n for n in dir(mt) if isinstance(getattr(mt, n), type) and issubclass(getattr(mt, n), MapTransform))


def normalise_step(value: Any) -> dict[str, dict[str, Any]]:
    """``RandFlipd`` or ``{RandFlipd: {prob: 0.5}}`` -> ``{"RandFlipd": {"prob": 0.5}}``."""
    if isinstance(value, str):
        return {value: {}}
    if isinstance(value, Mapping) and len(value) == 1:
        (name, args), = value.items()
        if args is None:
            args = {}
        if not isinstance(name, str) or not isinstance(args, Mapping):
            raise ValueError("an augment entry is a transform name or {TransformName: {argument: value}}")
        return {name: dict(args)}
    raise ValueError("an augment entry is a transform name or {TransformName: {argument: value}} (one transform per entry)")


def _parameters(cls: type) -> tuple[list[str], bool]:
    params = inspect.signature(cls.__init__).parameters
    names = [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return names, any(p.kind == p.VAR_KEYWORD for p in params.values())


def check_step(step: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate one normalised entry: a MONAI dictionary transform that accepts these arguments.

    Raises:
        ValueError: naming the transform (and the closest valid names) or the argument (and the valid ones).
    """
    from monai.transforms import MapTransform  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    (name, args), = step.items()
    cls = getattr(_transforms(), name, None)
    if not (isinstance(cls, type) and issubclass(cls, MapTransform)):
        close = difflib.get_close_matches(name, _dictionary_transforms(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (use the dictionary version, e.g. RandFlipd)"
        raise ValueError(f"unknown MONAI dictionary transform {name!r}{hint}")
    names, var_kw = _parameters(cls)
    if "keys" in args:
        raise ValueError(f"{name}: keys is set by udl-med (the item's images); leave it out")
    if not var_kw:
        unknown = [a for a in args if a not in names]
        if unknown:
            valid = ", ".join(n for n in names if n != "keys")
            raise ValueError(f"{name}: unknown argument {unknown[0]!r}; valid: {valid}")
    try:
        cls(keys=["image"], **args)
    except Exception as err:  # MONAI checks values in __init__ (TypeError, ValueError, AssertionError ...)
        raise ValueError(f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'bad arguments'}") from None
    return step


def build_augment(steps: Sequence[Mapping[str, Mapping[str, Any]]], image_keys: Sequence[str]) -> Any:
    """The MONAI ``Compose`` of ``steps`` on ``image_keys``, or None for no steps."""
    if not steps:
        return None
    from monai.transforms import Compose  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    mt = _transforms()
    chain = [getattr(mt, name)(keys=list(image_keys), **dict(args)) for step in steps for name, args in step.items()]
    return Compose(chain)


def augment_item(chain: Any, item: dict[str, Any], image_keys: Sequence[str], seed: int, index: int) -> dict[str, Any]:
    """Apply ``chain`` to ``item`` with draws seeded from ``(seed, index)``; images come back as plain float32 tensors."""
    draw = int(np.random.default_rng([seed, index, _AUGMENT_STREAM]).integers(0, 2**31 - 1))
    chain.set_random_state(seed=draw)
    out = chain(dict(item))
    for key in image_keys:
        x = out[key]
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        out[key] = x.float().contiguous() if hasattr(x, "float") else x
    return out
