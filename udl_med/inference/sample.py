"""``udl-med sample MODEL --n N --out DIR``: new images from a generative model, as NIfTI plus PNG grids.

Generic through ``method.sample(n, generator, label)``, which returns ``(n, C, *spatial)``
in [-1, 1]. Each sample is written as ``DIR/sample_0000.nii.gz`` ... in physical units:

- a model trained on CT alone: Hounsfield units (the inverse of the run's CT window,
  :func:`udl_med.data.normalize.denormalize`);
- MR, or a mix of modalities: the MR output scale of udl-med,
  :data:`udl_med.inference.translate.MR_OUTPUT_RANGE` arbitrary units (MR has no
  absolute scale).

Geometry: the spacing of the first training image (identity direction, zero origin);
2D samples are one-slice volumes whose slice lies across the run's ``slice_axis``; 2.5D
samples keep their centre channel. ``DIR/manifest.csv`` lists the files (``image,label,
modality,subject``) so they can feed a training run, ``DIR/samples.png`` shows them, and
methods that offer more write more: the denoising autoencoder its Markov chains from
noise (``chain.png``, one row per chain), the VAE its latent traversal
(``traversal.png``, one row per latent direction).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from udl_med.errors import UserError

log = logging.getLogger(__name__)

SAMPLE_BATCH = 64  # samples drawn per call of method.sample
DEFAULT_SPACING = (1.0, 1.0, 1.0)
PREVIEW_CHAINS = 8  # chains shown in chain.png


@runtime_checkable
class ChainSampler(Protocol):
    """A method that samples by a Markov chain and can show it (the denoising autoencoder)."""

    def chain_strip(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...


@runtime_checkable
class TraversalSampler(Protocol):
    """A method with a latent traversal grid (the VAE)."""

    def traversal(self, x: Tensor | None = None) -> Tensor: ...


def data_section(data: Any) -> Any:
    """A run's validated :class:`~udl_med.data.config.DataConfig` (from itself or a ``data`` mapping)."""
    from udl_med.data.config import DataConfig

    return data if isinstance(data, DataConfig) else DataConfig(**data)


def _training_geometry(data: Any) -> tuple[tuple[float, ...], str | None]:
    """Spacing of the first training image and the training data's modality (None if mixed/unknown).

    ``data``: the run's DataConfig (or its ``data`` mapping).
    """
    from udl_med.data.manifest import list_images
    from udl_med.data.readers import read_image

    data = data_section(data)
    modality = data.modality
    try:
        records = list_images(data.source)
        split = data.split
        chosen = [r for r in records if split is None or r.split in (None, split)] or records
        if modality is None:
            found = {r.modality for r in chosen}
            modality = found.pop() if len(found) == 1 else None
        meta = read_image(chosen[0].path).meta
        spacing = tuple(float(s) for s in meta["spacing"])
    except Exception as err:  # the training data may be gone: samples are still useful
        log.warning("cannot read the training data (%s); writing samples with %s mm spacing", err, DEFAULT_SPACING)
        spacing = DEFAULT_SPACING
    return (spacing + DEFAULT_SPACING)[:3], modality


def to_physical(x: Tensor, modality: str | None, data: Any) -> Tensor:
    """Map samples in [-1, 1] to physical units (see the module docstring); ``data``: the run's DataConfig (or mapping)."""
    from udl_med.data.normalize import denormalize
    from udl_med.inference.translation_setup import MR_OUTPUT_RANGE

    if modality == "CT":
        low, high = data_section(data).ct_window
        params = {"modality": "CT", "kind": "window", "low": float(low), "high": float(high)}
    else:
        params = {"modality": modality, "kind": "percentile", "low": MR_OUTPUT_RANGE[0], "high": MR_OUTPUT_RANGE[1]}
    return denormalize(x.clamp(-1, 1), params)


def as_volume(x: Tensor, spatial_dims: int, slice_axis: int) -> Tensor:
    """One sample ``(C, *spatial)`` -> ``(1, X, Y, Z)``: centre channel; a 2D slice gets its slice axis back."""
    c = x.shape[0]
    x = x[c // 2 if c % 2 else 0]
    if spatial_dims == 2:
        x = x.unsqueeze(slice_axis)
    return x[None]


def sample_to_dir(model: str, n: int, out: str | Path, label: int | None = None, seed: int = 0, code: str | None = None) -> dict[str, Any]:
    """Draw ``n`` samples from ``model`` and write them into ``out`` (see the module docstring).

    Args:
        model: runs:/<id>/model, models:/<name>/<version>, or a local model folder.
        n: number of samples (>= 1).
        out: output folder (created).
        label: class to generate, for conditional models.
        seed: seed of the sampling generator: the same seed gives the same samples.
        code: InfoGAN codes to fix (``model.info_codes``; see :func:`udl_med.methods.info_codes.parse_code`).

    Returns:
        ``{"out", "n", "manifest", "grid", "modality", "spacing", "artifacts"}``.

    Raises:
        UserError: ``n < 1``, a model that cannot sample, or ``code`` for a model without InfoGAN codes.
    """
    from monai.data import MetaTensor

    from udl_med.data.geometry import Geometry
    from udl_med.data.manifest import write_manifest
    from udl_med.data.writers import write_image
    from udl_med.data.preview import save_grid
    from udl_med.engine.model_io import load_model
    from udl_med.methods.base import Capability

    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    loaded = load_model(model)
    method = loaded.method
    if Capability.SAMPLE not in method.capabilities:
        raise UserError(f"{loaded.source}: method {method.name!r} cannot sample")
    try:
        method.check_sample_label(label)
    except ValueError as err:
        raise UserError(f"{loaded.source}: {err}") from None
    if code is not None and getattr(method.config, "info_codes", None) is None:
        raise UserError(f"{loaded.source}: --code needs a model trained with InfoGAN codes (model.info_codes); method {method.name!r} has none")
    codes = {} if code is None else {"code": code}
    data = loaded.run_config.data
    spacing, modality = _training_geometry(data)
    geometry = Geometry.create(spacing, (0.0, 0.0, 0.0), np.eye(3))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    width = max(4, len(str(n - 1)))
    rows, previews = [], []
    written = 0
    while written < n:
        count = min(SAMPLE_BATCH, n - written)
        try:
            batch = method.sample(count, generator=generator, label=label, **codes).detach().float().cpu()
        except ValueError as err:  # e.g. a label out of range
            raise UserError(f"{loaded.source}: {err}") from None
        if len(previews) < 64:
            previews.extend(batch[: 64 - len(previews)])
        for x in batch:
            name = f"sample_{written:0{width}d}.nii.gz"
            volume = to_physical(as_volume(x, loaded.data_spec.spatial_dims, data.slice_axis), modality, data)
            write_image(MetaTensor(volume, meta={**geometry.as_meta(), "modality": modality}), out / name)
            rows.append({"image": name, "label": "" if label is None else label, "modality": modality or "", "subject": f"sample-{written:0{width}d}"})
            written += 1
    write_manifest(out / "manifest.csv", rows)
    grid = save_grid(torch.stack(previews), out / "samples.png", nrow=math.ceil(math.sqrt(len(previews))))
    artifacts = [str(grid)]
    if isinstance(method, ChainSampler):
        strip = method.chain_strip(min(n, PREVIEW_CHAINS), generator=generator)
        artifacts.append(str(save_grid(strip, out / "chain.png", nrow=len(strip) // min(n, PREVIEW_CHAINS))))
    if isinstance(method, TraversalSampler):
        grid_t = method.traversal()
        artifacts.append(str(save_grid(grid_t, out / "traversal.png", nrow=math.isqrt(len(grid_t)))))
    log.info("wrote %d samples of %s to %s", n, loaded.source, out)
    return {
        "out": str(out),
        "n": n,
        "manifest": str(out / "manifest.csv"),
        "grid": str(grid),
        "modality": modality,
        "spacing": list(spacing),
        "artifacts": artifacts,
    }
