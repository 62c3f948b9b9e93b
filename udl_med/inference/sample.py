"""``udl-med sample MODEL --n N --out DIR``: new images from a generative model, as NIfTI plus PNG grids.

Generic through ``method.sample(n, generator, label)``, which returns ``(n, C, *spatial)``
in [-1, 1]. Each sample is written as ``DIR/sample_0000.nii.gz`` ... in physical units:

- a model trained on CT alone: Hounsfield units (the inverse of the run's CT window,
  :func:`udl_med.data.normalize.denormalize`);
- MR, or a mix of modalities: the MR output scale of udl-med,
  :data:`udl_med.inference.translate.MR_OUTPUT_RANGE` arbitrary units (MR has no
  absolute scale).

Geometry: the spacing and direction of the first training image, which the model file
keeps (:class:`udl_med.data.spec.TrainingGeometry`), with zero origin; the training
scans are not read again. A model file without it (written by an older udl-med) is
refused with a message; a model trained on in-memory data gets 1 mm isotropic spacing,
with a warning. 2D samples are one-slice volumes whose slice lies across the run's
``slice_axis``; 2.5D samples keep their centre channel. ``DIR/manifest.csv`` lists the files (``image,label,
modality,subject``) so they can feed a training run, ``DIR/samples.png`` shows them, and
methods that offer more write more: the denoising autoencoder its Markov chains from
noise (``chain.png``, one row per chain), the VAE its latent traversal
(``traversal.png``, one row per latent direction).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from udl_med.data.geometry import Geometry
from udl_med.data.normalize import denormalize
from udl_med.errors import UserError
from udl_med.inference.translation_setup import MR_OUTPUT_RANGE

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


@dataclass(frozen=True)
class SampleSpace:
    """Where samples of a model are written: grid, modality and the CT window to invert.

    Attributes:
        geometry: spacing and direction of the training images, zero origin.
        modality: ``CT``, ``MR`` or None (mixed or unknown: MR output units).
        ct_window: the run's CT window (HU), inverted for CT samples.
        slice_axis: the axis a 2D sample lies across in its one-slice volume.
    """

    geometry: Geometry
    modality: str | None
    ct_window: tuple[float, float]
    slice_axis: int


def sample_space(loaded: Any) -> SampleSpace:
    """The :class:`SampleSpace` of a loaded model, from the training geometry its model file keeps.

    Raises:
        UserError: a model trained on scans whose file keeps no training geometry (written
            by an older udl-med): retrain it. Models trained on in-memory or point data
            never had scans: their samples get 1 mm isotropic spacing and the identity
            direction, with a warning.
    """
    kept = loaded.data_spec.geometry
    if kept is not None:
        geometry = Geometry.create(kept.spacing, (0.0, 0.0, 0.0), np.reshape(kept.direction, (3, 3)))
        slice_axis = 2 if kept.slice_axis is None else kept.slice_axis
        return SampleSpace(geometry, kept.modality, tuple(kept.ct_window), slice_axis)
    data = loaded.run_config.data
    if data.kind == "scans":
        raise UserError(
            f"{loaded.source}: the model file keeps no training geometry (it predates udl-med storing it); "
            "retrain the model to write samples with the training scans' spacing"
        )
    log.warning("%s was trained on %s data, not scans: samples get %s mm spacing", loaded.source, data.kind, DEFAULT_SPACING)
    return SampleSpace(Geometry.create(DEFAULT_SPACING, (0.0, 0.0, 0.0), np.eye(3)), data.modality, tuple(data.ct_window), data.slice_axis)


def to_physical(x: Tensor, modality: str | None, ct_window: tuple[float, float]) -> Tensor:
    """Map samples in [-1, 1] to physical units (see the module docstring)."""
    if modality == "CT":
        low, high = ct_window
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


def draw(method: Any, n: int, generator: torch.Generator, label: int | None = None, source: str = "") -> Iterator[Tensor]:
    """``n`` samples of ``method`` in batches of :data:`SAMPLE_BATCH`, ``(b, C, *spatial)`` in [-1, 1] on the CPU.

    ``udl-med sample`` and :meth:`udl_med.api.Model.sample` both draw through this, so
    the same seed gives them the same images.

    Raises:
        UserError: the method refuses the label (e.g. out of range).
    """
    drawn = 0
    while drawn < n:
        count = min(SAMPLE_BATCH, n - drawn)
        try:
            batch = method.sample(count, generator=generator, label=label)
        except ValueError as err:  # e.g. a label out of range
            raise UserError(f"{source}: {err}" if source else str(err)) from None
        yield batch.detach().float().cpu()
        drawn += count


def sample_to_dir(model: str, n: int, out: str | Path, label: int | None = None, seed: int = 0, device: str | None = None) -> dict[str, Any]:
    """Draw ``n`` samples from ``model`` and write them into ``out`` (see the module docstring).

    Args:
        model: runs:/<id>/model, models:/<name>/<version>, or a local model folder.
        n: number of samples (>= 1).
        out: output folder (created).
        label: class to generate, for conditional models.
        seed: seed of the sampling generator: the same seed gives the same samples.
        device: where the network runs (default: the CPU); the latents are drawn on the
            CPU, so the samples do not depend on it beyond floating-point rounding.

    Returns:
        ``{"out", "n", "manifest", "grid", "modality", "spacing", "artifacts"}``.

    Raises:
        UserError: ``n < 1``, or a model that cannot sample.
    """
    from monai.data import MetaTensor

    from udl_med.data.manifest import write_manifest
    from udl_med.data.writers import write_image
    from udl_med.data.preview import save_grid
    from udl_med.engine.model_io import load_model
    from udl_med.methods.base import Capability

    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    loaded = load_model(model, device=device)
    method = loaded.method
    if Capability.SAMPLE not in method.capabilities:
        raise UserError(f"{loaded.source}: method {method.name!r} cannot sample")
    try:
        method.check_sample_label(label)
    except ValueError as err:
        raise UserError(f"{loaded.source}: {err}") from None
    space = sample_space(loaded)
    geometry, modality = space.geometry, space.modality
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    width = max(4, len(str(n - 1)))
    rows, previews = [], []
    written = 0
    for batch in draw(method, n, generator, label, loaded.source):
        if len(previews) < 64:
            previews.extend(batch[: 64 - len(previews)])
        for x in batch:
            name = f"sample_{written:0{width}d}.nii.gz"
            volume = to_physical(as_volume(x, loaded.data_spec.spatial_dims, space.slice_axis), modality, space.ct_window)
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
        "spacing": list(geometry.spacing),
        "artifacts": artifacts,
    }
