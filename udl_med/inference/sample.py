"""``udl-med sample MODEL --n N --out DIR``: new images from a generative model, as NIfTI plus PNG grids.

Generic through ``method.sample(n, generator, label)``, which returns ``(n, C, *spatial)``
in [-1, 1]. Each sample is written as ``DIR/sample_0000.nii.gz`` ... in physical units:

- a model trained on CT alone: Hounsfield units (the inverse of the run's CT window,
  :func:`udl_med.data.normalize.denormalize`);
- MR, or a mix of modalities: the MR output scale of udl-med,
  :data:`udl_med.inference.translate.MR_OUTPUT_RANGE` arbitrary units (MR has no
  absolute scale).

Geometry: the spacing and direction of the first training image, which the model file
keeps (:class:`udl_med.data.spec.TrainingGeometry`; for a ``crop: resize`` run the
spacing of the resized item, ``item_spacing``), with zero origin; the training
scans are not read again. A model file without it (written by an older udl-med) is
refused with a message; a model trained on in-memory data gets 1 mm isotropic spacing,
with a warning. 2D samples are one-slice volumes whose slice lies across the run's
``slice_axis``; 2.5D samples keep their centre channel. ``DIR/manifest.csv`` lists the files (``image,label,
modality,subject``) so they can feed a training run, ``DIR/samples.png`` shows them, and
methods that offer more write more: the denoising autoencoder its Markov chains from
noise (``chain.png``, one row per chain), the VAE its latent traversal
(``traversal.png``, one row per latent direction).

A model trained on 2D points (``data.kind: points``, the toy mixtures of the
mode-collapse benchmark) writes ``DIR/points.csv`` (``x,y`` and, when the mixture is
known, ``nearest_mode``) and ``DIR/samples.png`` (the scatter with the mixture's modes
marked as red circles), and reports the mode coverage
(:func:`udl_med.metrics.modes.mode_coverage`: modes covered, high-quality fraction).

``DIR/sample.json`` records what was written: ``kind`` (``images`` or ``points``), the
``files``, the model, ``n``, the ``seed`` and the mode coverage. The folder is written as
a whole (:func:`udl_med.io_utils.atomic_folder`): a failure leaves no ``DIR``; an existing
non-empty ``DIR`` is refused, and ``--overwrite`` replaces only an earlier sample output
whose ``sample.json`` lists every file in it. Without ``--seed`` a fresh seed is drawn,
logged and returned, so that samples do not repeat the training previews (seed 0).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from udl_med.data.geometry import Geometry
from udl_med.data.manifest import write_manifest
from udl_med.data.normalize import denormalize
from udl_med.data.points import PointsConfig
from udl_med.data.preview import save_grid, save_scatter
from udl_med.data.writers import write_image
from udl_med.engine.model_io import load_model
from udl_med.errors import UserError
from udl_med.inference.translation_setup import MR_OUTPUT_RANGE
from udl_med.io_utils import atomic_folder, atomic_write_text
from udl_med.methods.base import Capability
from udl_med.metrics.modes import mode_coverage

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
        geometry = Geometry.create(kept.sample_spacing, (0.0, 0.0, 0.0), np.reshape(kept.direction, (3, 3)))
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


def draw(method: Any, n: int, generator: torch.Generator, label: int | None = None, source: str = "", code: str | None = None) -> Iterator[Tensor]:
    """``n`` samples of ``method`` in batches of :data:`SAMPLE_BATCH`, ``(b, C, *spatial)`` in [-1, 1] on the CPU.

    ``udl-med sample`` and :meth:`udl_med.api.Model.sample` both draw through this, so
    the same seed gives them the same images. ``code``: InfoGAN codes to fix (None: all drawn).

    Raises:
        UserError: the method refuses the label (e.g. out of range).
    """
    codes = {} if code is None else {"code": code}
    drawn = 0
    while drawn < n:
        count = min(SAMPLE_BATCH, n - drawn)
        try:
            batch = method.sample(count, generator=generator, label=label, **codes)
        except ValueError as err:  # e.g. a label out of range
            raise UserError(f"{source}: {err}" if source else str(err)) from None
        yield batch.detach().float().cpu()
        drawn += count


SAMPLE_RECORD = "sample.json"  # what a sample run wrote: kind, files, model, seed (the folder's own manifest)
POINTS_FILE = "points.csv"


def _record(folder: Path) -> dict[str, Any] | None:
    """The :data:`SAMPLE_RECORD` of an earlier ``sample`` output in ``folder``, or None."""
    try:
        record = json.loads((folder / SAMPLE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), list) else None


def check_out(out: Path, overwrite: bool) -> bool:
    """Refuse an ``out`` that is not an empty folder, unless ``overwrite`` and it holds only an earlier sample's files.

    Returns:
        True when ``out`` is an earlier sample output to replace.

    Raises:
        UserError: ``out`` holds other files (a folder-based ``fid`` would count them with
            the new samples); the message names one of them.
    """
    if not out.is_dir() or not any(out.iterdir()):
        return False
    record = _record(out)
    if not overwrite:
        hint = "; pass --overwrite to replace the earlier samples" if record is not None else ""
        raise UserError(f"{out}: exists and is not an empty folder; choose another --out or remove it{hint}")
    if record is None:
        raise UserError(f"{out}: --overwrite replaces only an earlier `udl-med sample` output (with its {SAMPLE_RECORD}); this folder has none")
    own = {*record["files"], SAMPLE_RECORD}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in own)
    if foreign:
        raise UserError(f"{out}: holds {foreign[0]}, which an earlier sample did not write; --overwrite removes only its own files")
    return True


def _points_config(loaded: Any) -> Any | None:
    """The Gaussian mixture of a model trained on ``data.kind: points`` (None otherwise)."""
    data = loaded.run_config.data
    if data.kind != "points":
        return None

    return data.points or PointsConfig()


def _write_points(folder: Path, points: Tensor, mixture: Any | None) -> tuple[list[str], dict[str, Any]]:
    """``points.csv`` (x, y[, mode]) and ``samples.png`` (the scatter, modes marked); return (files, coverage)."""
    xy = points.double().numpy()
    coverage: dict[str, Any] = {}
    columns = ["x", "y"]
    nearest = None
    centres = None
    if mixture is not None:
        centres = mixture.centres()
        found = mode_coverage(xy, centres, mixture.scale())
        coverage = {
            "modes_covered": found.modes_covered,
            "n_modes": found.n_modes,
            "high_quality_fraction": round(found.high_quality_fraction, 6),
            "spread": None if math.isnan(found.spread) else round(found.spread, 6),
            "mixture": mixture.mixture,
        }
        nearest = ((xy[:, None, :] - centres.double().numpy()[None]) ** 2).sum(-1).argmin(1)
        columns.append("nearest_mode")
    lines = [",".join(columns)]
    for i, (x, y) in enumerate(xy):
        lines.append(f"{x:.6g},{y:.6g}" + (f",{int(nearest[i])}" if nearest is not None else ""))
    atomic_write_text(folder / POINTS_FILE, "\n".join(lines) + "\n")
    save_scatter(points, folder / "samples.png", centres=centres)
    return [POINTS_FILE, "samples.png"], coverage


def sample_to_dir(
    model: str, n: int, out: str | Path, label: int | None = None, seed: int | None = None, overwrite: bool = False, code: str | None = None, device: str | None = None
) -> dict[str, Any]:
    """Draw ``n`` samples from ``model`` and write them into the new folder ``out`` (see the module docstring).

    Args:
        model: runs:/<id>/model, models:/<name>/<version>, or a local model folder.
        n: number of samples (>= 1).
        out: output folder: it must not exist or be empty (or, with ``overwrite``, hold
            an earlier sample output and nothing else).
        label: class to generate, for conditional models.
        seed: seed of the sampling generator: the same seed gives the same samples.
            None: a fresh seed, logged and returned (so that samples do not repeat the
            training previews, which use seed 0).
        overwrite: replace an earlier ``udl-med sample`` output in ``out``: only the
            files its ``sample.json`` lists, once the new samples are complete.
        code: InfoGAN codes to fix (``model.info_codes``; see :func:`udl_med.methods.info_codes.parse_code`).
        device: where the network runs (default: the CPU); the latents are drawn on the
            CPU, so the samples do not depend on it beyond floating-point rounding.

    Returns:
        ``{"out", "n", "kind", "seed", "grid", "modality", "spacing", "manifest", "artifacts"}``
        for images; for a points model (``kind: points``) ``points`` (the CSV) instead of
        the manifest and spacing, and ``mode_coverage`` when the model's mixture is known.

    Raises:
        UserError: ``n < 1``, an ``out`` that is not empty, a model that cannot sample, or ``code`` for a model without InfoGAN codes.
    """
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    out = Path(out)
    replacing = check_out(out, overwrite)
    loaded = load_model(model, device=device)
    method = loaded.method
    if Capability.SAMPLE not in method.capabilities:
        raise UserError(f"{loaded.source}: method {method.name!r} cannot sample")
    try:
        method.check_sample_label(label)
    except ValueError as err:
        raise UserError(f"{loaded.source}: {err}") from None
    if code is not None and getattr(method.config, "info_codes", None) is None:
        raise UserError(f"{loaded.source}: --code needs a model trained with InfoGAN codes (model.info_codes); method {method.name!r} has none")
    if seed is None:
        seed = secrets.randbelow(2**31)
        log.info("sampling with seed %d (pass --seed %d to draw the same samples again)", seed, seed)
    mixture = _points_config(loaded)
    points = loaded.run_config.data.kind == "points"
    space = None if points else sample_space(loaded)
    generator = torch.Generator().manual_seed(seed)
    result: dict[str, Any] = {}

    def write(folder: Path) -> None:
        if points:
            files, coverage = _write_points(folder, torch.cat(list(draw(method, n, generator, label, loaded.source, code))), mixture)
            result.update(kind="points", points=str(out / POINTS_FILE), grid=str(out / "samples.png"))
            if coverage:
                result["mode_coverage"] = coverage
        else:
            files = _write_images(folder, loaded, method, space, draw(method, n, generator, label, loaded.source, code), n, label, generator)
            result.update(kind="images", manifest=str(out / "manifest.csv"), grid=str(out / "samples.png"))
            result.update(modality=space.modality, spacing=list(space.geometry.spacing))
        result["artifacts"] = [str(out / f) for f in files if f.endswith(".png")]
        record = {"kind": result["kind"], "files": files, "model": loaded.source, "n": n, "seed": seed, "label": label}
        if "mode_coverage" in result:
            record["mode_coverage"] = result["mode_coverage"]
        (folder / SAMPLE_RECORD).write_text(json.dumps(record, indent=1) + "\n")

    if out.is_dir() and not replacing:
        out.rmdir()  # empty (checked above): the finished folder is renamed into its place
    atomic_folder(out, write, replace=None if replacing else _appeared)
    log.info("wrote %d samples of %s to %s (seed %d)", n, loaded.source, out, seed)
    return {"out": str(out), "n": n, "seed": seed, **result}


def _appeared(existing: Path) -> None:
    if any(existing.iterdir()):
        raise UserError(f"{existing}: appeared while sampling; nothing was written")


def _write_images(folder: Path, loaded: Any, method: Any, space: SampleSpace, batches: Any, n: int, label: int | None, generator: torch.Generator) -> list[str]:
    """NIfTI volumes in physical units, ``manifest.csv``, ``samples.png`` (and chain/traversal grids); return the names."""
    from monai.data import MetaTensor  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    geometry, modality = space.geometry, space.modality
    width = max(4, len(str(n - 1)))
    rows, previews, files = [], [], []
    written = 0
    for batch in batches:
        if batch.ndim < 3:
            raise UserError(f"{loaded.source}: samples of shape {tuple(batch.shape[1:])} are not images")
        if len(previews) < 64:
            previews.extend(batch[: 64 - len(previews)])
        for x in batch:
            name = f"sample_{written:0{width}d}.nii.gz"
            volume = to_physical(as_volume(x, loaded.data_spec.spatial_dims, space.slice_axis), modality, space.ct_window)
            write_image(MetaTensor(volume, meta={**geometry.as_meta(), "modality": modality}), folder / name)
            rows.append({"image": name, "label": "" if label is None else label, "modality": modality or "", "subject": f"sample-{written:0{width}d}"})
            files.append(name)
            written += 1
    write_manifest(folder / "manifest.csv", rows)
    save_grid(torch.stack(previews), folder / "samples.png", nrow=math.ceil(math.sqrt(len(previews))))
    files += ["manifest.csv", "samples.png"]
    if isinstance(method, ChainSampler):
        strip = method.chain_strip(min(n, PREVIEW_CHAINS), generator=generator)
        save_grid(strip, folder / "chain.png", nrow=len(strip) // min(n, PREVIEW_CHAINS))
        files.append("chain.png")
    if isinstance(method, TraversalSampler):
        grid_t = method.traversal()
        save_grid(grid_t, folder / "traversal.png", nrow=math.isqrt(len(grid_t)))
        files.append("traversal.png")
    return files
