"""``udl-med synthesize MODEL --out DIR (--n N | --n-per-class N) [--like REF]``: a synthetic data set.

What :mod:`udl_med.inference.sample` does for one batch of samples, made into a data set
a training run can read:

- **labels**: ``--n-per-class N`` draws ``N`` images of every class of a conditional
  model (``method.num_sample_classes()``); ``--n N`` draws ``N`` images, classes in turn
  for a conditional model;
- **physical units**: :func:`udl_med.inference.sample.to_physical` (HU for a CT model,
  the inverse of its CT window; MR output units otherwise);
- **geometry**: by default the training data's, kept in the model file (the spacing and
  direction of its first image, zero origin, the model's item size, 2D samples as
  one-slice volumes across the run's slice axis: :func:`udl_med.inference.sample.sample_space`
  and :func:`~udl_med.inference.sample.as_volume`); with
  ``--like REF`` the reference scan's spacing, origin, direction and size (samples are
  resampled to its in-plane size for 2D models, its full size for 3D models) and its
  modality;
- **manifest**: ``DIR/manifest.csv`` with ``image, label, modality, subject, split,
  synthetic, model, seed`` (``synthetic`` is 1; readers of manifests accept the extra
  columns), written by :func:`write_synthetic_manifest`; ``DIR/samples.png`` shows up
  to 8 samples per class, one row per class;
- **reproducible**: one generator seeded with ``--seed`` draws everything in a fixed order;
- **atomic**: everything is written into a hidden sibling folder that is renamed to
  ``DIR`` at the end (:func:`udl_med.io_utils.atomic_folder`); a failure leaves no
  ``DIR``. An existing non-empty ``DIR`` is refused.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from udl_med import keys
from udl_med.data.geometry import Geometry
from udl_med.data.io import read_image, write_image
from udl_med.data.manifest import write_manifest
from udl_med.data.preview import save_grid
from udl_med.engine.model_io import load_model
from udl_med.errors import InputError, UserError
from udl_med.inference.sample import SAMPLE_BATCH, as_volume, sample_space, to_physical
from udl_med.io_utils import atomic_folder
from udl_med.methods.base import Capability

log = logging.getLogger(__name__)

GRID_PER_CLASS = 8
MANIFEST_FIELDS = (*keys.MANIFEST_COLUMNS, *keys.SYNTHETIC_COLUMNS)


def write_synthetic_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write the synthetic data set's manifest (:data:`MANIFEST_FIELDS`) through the one manifest writer."""
    return write_manifest(path, rows, extra_columns=keys.SYNTHETIC_COLUMNS)


def _is_synthetic_folder(folder: Path) -> bool:
    manifest = folder / keys.SYNTHETIC_MANIFEST
    if not manifest.is_file():
        return False
    with manifest.open(newline="") as handle:
        return "synthetic" in (next(csv.reader(handle), None) or [])


def label_plan(num_classes: int, n: int | None, n_per_class: int | None) -> list[int | None]:
    """The label of every image to draw, in drawing order.

    Raises:
        UserError: neither or both of ``n`` / ``n_per_class``, a count below 1, or
            ``n_per_class`` for an unconditional model.
    """
    if (n is None) == (n_per_class is None):
        raise UserError("give exactly one of --n and --n-per-class")
    count = n if n is not None else n_per_class
    if count < 1:
        raise UserError(f"{'--n' if n is not None else '--n-per-class'} must be at least 1, got {count}")
    if n_per_class is not None:
        if num_classes == 0:
            raise UserError("--n-per-class needs a conditional model (this one has no classes); use --n")
        return [c for c in range(num_classes) for _ in range(n_per_class)]
    if num_classes == 0:
        return [None] * n
    return sorted((i % num_classes for i in range(n)))


def _reference(like: str | Path) -> tuple[Any, tuple[int, ...], str | None]:
    """(Geometry, spatial size, modality) of a reference scan."""
    image = read_image(like)
    geometry = Geometry.from_meta(image.meta)
    if geometry is None or geometry.ndim != 3:
        raise InputError(like, "the reference must be a 3D volume with a geometry")
    return geometry, tuple(int(s) for s in image.shape[1:]), image.meta.get("modality")


def _fit_size(volume: Tensor, size: tuple[int, ...], spatial_dims: int, slice_axis: int) -> Tensor:
    """Resample ``(1, X, Y, Z)`` to the reference size (2D samples: in-plane only, keeping one slice)."""
    target = list(size)
    if spatial_dims == 2:
        target[slice_axis] = 1
    if tuple(volume.shape[1:]) == tuple(target):
        return volume
    return F.interpolate(volume[None].float(), size=tuple(target), mode="trilinear", align_corners=False)[0]


def synthesize(
    model: str,
    out: str | Path,
    n: int | None = None,
    n_per_class: int | None = None,
    like: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Write a synthetic data set drawn from ``model`` into ``out`` (see the module docstring).

    Args:
        model: runs:/<id>/model, models:/<name>/<version>, or a local model folder.
        out: the folder to create (must not exist, or be empty).
        n: images in all (classes in turn for a conditional model).
        n_per_class: images per class (conditional models).
        like: a reference scan whose geometry, size and modality the images take.
        seed: seed of the one sampling generator.
        overwrite: replace an existing earlier synthesize output (a folder whose manifest
            has the ``synthetic`` column), once the new one is complete (pipelines re-run).
        device: where the network runs (default: the CPU); the samples do not depend on it
            beyond floating-point rounding (the latents are drawn on the CPU).

    Returns:
        ``out, n, per_class, manifest, grid, modality, spacing, size, model, seed, artifacts``.

    Raises:
        UserError: bad counts, a model that cannot sample, an existing non-empty ``out``,
            an unreadable reference.
    """
    from monai.data import MetaTensor  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    out = Path(out)
    replacing = overwrite and _is_synthetic_folder(out)
    if out.exists() and not replacing and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty folder; choose another --out or remove it")
    loaded = load_model(model, device=device)
    method = loaded.method
    if Capability.SAMPLE not in method.capabilities:
        raise UserError(f"{loaded.source}: method {method.name!r} cannot sample")
    num_classes = int(method.num_sample_classes()) if hasattr(method, "num_sample_classes") else 0
    plan = label_plan(num_classes, n, n_per_class)
    spatial_dims = loaded.data_spec.spatial_dims
    space = sample_space(loaded)
    slice_axis, modality = space.slice_axis, space.modality
    geometry, size = space.geometry, None
    if like is not None:
        geometry, size, like_modality = _reference(like)
        modality = like_modality or modality
    generator = torch.Generator().manual_seed(seed)
    width = max(4, len(str(len(plan) - 1)))
    counts: dict[str, int] = {}

    def write(folder: Path) -> None:
        rows: list[dict[str, Any]] = []
        grid: dict[Any, list[Tensor]] = {}
        index = 0
        for label in dict.fromkeys(plan):  # classes in order, each drawn in batches
            todo = plan.count(label)
            while todo:
                count = min(SAMPLE_BATCH, todo)
                try:
                    batch = method.sample(count, generator=generator, label=label).detach().float().cpu()
                except ValueError as err:
                    raise UserError(f"{loaded.source}: {err}") from None
                grid.setdefault(label, []).extend(batch[: GRID_PER_CLASS - len(grid.get(label, []))])
                for x in batch:
                    volume = as_volume(x, spatial_dims, slice_axis)
                    if size is not None:
                        volume = _fit_size(volume, size, spatial_dims, slice_axis)
                    name = f"synthetic_{index:0{width}d}.nii.gz"
                    hu = to_physical(volume, modality, space.ct_window)
                    write_image(MetaTensor(hu, meta={**geometry.as_meta(), "modality": modality}), folder / name)
                    rows.append(
                        {
                            "image": name,
                            "label": "" if label is None else label,
                            "modality": modality or "",
                            "subject": f"synthetic-{index:0{width}d}",
                            "synthetic": 1,
                            "model": loaded.source,
                            "seed": seed,
                        }
                    )
                    counts[str(label)] = counts.get(str(label), 0) + 1
                    index += 1
                todo -= count
        write_synthetic_manifest(folder / keys.SYNTHETIC_MANIFEST, rows)
        tiles = [t for label in grid for t in grid[label]]
        save_grid(torch.stack(tiles), folder / keys.SYNTHETIC_GRID, nrow=GRID_PER_CLASS if num_classes else None)

    def refuse(existing: Path) -> None:
        if not replacing and any(existing.iterdir()):
            raise UserError(f"{existing}: appeared while synthesizing; nothing was written")

    if out.exists() and not replacing:
        out.rmdir()  # empty (checked above): the finished folder is renamed into its place
    atomic_folder(out, write, replace=refuse)
    log.info("wrote %d synthetic images of %s to %s (seed %d)", len(plan), loaded.source, out, seed)
    return {
        "out": str(out),
        "n": len(plan),
        "per_class": counts,
        "manifest": str(out / keys.SYNTHETIC_MANIFEST),
        "grid": str(out / keys.SYNTHETIC_GRID),
        "modality": modality,
        "spacing": list(geometry.spacing),
        "size": list(size) if size is not None else list(loaded.data_spec.image_size),
        "model": loaded.source,
        "seed": seed,
        "artifacts": [str(out / keys.SYNTHETIC_GRID)],
    }
