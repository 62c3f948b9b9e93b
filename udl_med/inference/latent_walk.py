"""``udl-med interpolate`` and ``udl-med arithmetic``: walking and computing in a generator's latent space.

Models: the VAE (decoder of its prior codes), the GAN and the conditional GAN (G's z).
Codes come from

- **saved codes**: an ``.npz`` file, its array named like the set (arithmetic) or one of
  ``codes``, ``z``, ``features`` (what ``udl-med encode`` and :func:`draw_to_dir` write);
  ``FILE.npz:3,7,12`` keeps those rows;
- **scans** (a volume, folder or manifest): each image is cut as in training
  (:func:`udl_med.inference.encode.image_items`) and its middle item stands for it; a
  model with an encoder (the VAE) encodes it (the posterior mean), a GAN finds it by
  **projection** (:func:`udl_med.nets.latent_ops.project`: Adam on ``||G(z) - x||^2``
  from several random starts). A generator need not be able to make a real scan: the
  projection's remaining mean squared error (on the [-1, 1] scale) is reported as
  ``projection_mse``, beside the per-voxel variance of the targets, so a large error is
  seen, not hidden;
- **the prior**, from a seed, when nothing else is given.

Interpolation (:func:`interpolate_to_dir`) writes, for each of ``linear`` and ``slerp``,
one NIfTI per step (``DIR/<kind>/step_000.nii.gz``...) and a PNG strip (``DIR/<kind>.png``),
plus ``DIR/interpolation.png`` (linear above slerp), ``DIR/codes.npz`` and the norm of
every code along each path. A conditional GAN interpolates between classes too: its
label moves from one class's one-hot vector to the other's while z moves.

Arithmetic (:func:`arithmetic_to_dir`) evaluates an expression like ``"hyper - none +
none_other"`` over named sets of codes (each averaged first; at least three codes per
set, DCGAN's recipe) and decodes the result and ``variants - 1`` noisy copies (Gaussian,
std ``noise``, as DCGAN adds noise to the result): ``DIR/result_00.nii.gz``...,
``DIR/result.npz`` and ``DIR/arithmetic.png``, one row per set (its first members and
the decoded mean) and a last row of results.

NIfTI files are in physical units (:func:`udl_med.inference.sample.to_physical`) on the
grid of the first scan's item (:func:`item_geometry`: its spacing, direction and the
item's origin, resized spacing for ``crop: resize`` runs), else with the training data's
spacing; 2D results are one-slice volumes across the run's ``slice_axis``, as ``udl-med
sample`` writes them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from monai.data import MetaTensor
from torch import Tensor

from udl_med.errors import InputError, UserError
from udl_med.data.geometry import Geometry
from udl_med.data.manifest import list_images
from udl_med.data.preview import save_grid
from udl_med.data.readers import read_image
from udl_med.data.writers import write_image
from udl_med.engine.model_io import load_model
from udl_med.inference.encode import image_items, item_config, save_npz
from udl_med.inference.sample import as_volume, sample_space, to_physical
from udl_med.methods.base import Capability
from udl_med.nets.latent_ops import INTERPOLATIONS, MIN_SET_SIZE, evaluate_expression, interpolate, parse_expression, project

log = logging.getLogger(__name__)

CODE_ARRAYS = ("codes", "z", "features")  # array names read from a codes file, in this order
PROJECTION_STEPS = 300
PROJECTION_RESTARTS = 4


@runtime_checkable
class LatentGenerator(Protocol):
    """A method that decodes codes of a prior (the VAE, the GAN)."""
    latent_dim: int

    def draw_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...

    def decode_latent(self, z: Tensor, labels: Tensor | None = None) -> Tensor: ...


def latent_generator(method: Any) -> LatentGenerator:
    """``method`` as a :class:`LatentGenerator`.

    Raises:
        UserError: a method without a decodable latent space.
    """
    if isinstance(method, LatentGenerator):
        return method
    raise UserError(f"method {method.name!r} has no latent space to decode; interpolation and arithmetic work on vae and gan models")


def _has_encoder(method: Any) -> bool:
    return Capability.ENCODE in method.capabilities


@dataclass(frozen=True)
class Codes:
    """Codes ``(N, D)`` of one source, the items they came from (scans) and the projection errors (GAN)."""
    z: Tensor
    items: Tensor | None = None
    projection_mse: Tensor | None = None
    target_variance: Tensor | None = None
    reference: str | None = None  # the first scan, for the written geometry


def _npz_codes(spec: str, name: str | None = None) -> Tensor:
    path_s, _, rows = spec.partition(":") if spec.count(":") == 1 and not Path(spec).exists() else (spec, "", "")
    path = Path(path_s)
    try:
        with np.load(path) as data:
            names = [name] if name and name in data.files else [n for n in CODE_ARRAYS if n in data.files]
            if not names:
                raise InputError(path, f"no array named {(name + ', ') if name else ''}{', '.join(CODE_ARRAYS)} (has {', '.join(data.files)})")
            array = np.asarray(data[names[0]], np.float32)
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable codes file ({err})") from None
    array = array.reshape(1, -1) if array.ndim == 1 else array.reshape(array.shape[0], -1)
    if rows:
        try:
            picked = [int(r) for r in rows.split(",") if r.strip()]
            array = array[picked]
        except (ValueError, IndexError):
            raise InputError(path, f"rows {rows!r} are not row numbers of its {len(array)} codes") from None
    return torch.from_numpy(array)


def scan_items(loaded: Any, source: str | Path) -> tuple[Tensor, list[str]]:
    """The middle item ``(C, *size)`` of every image of ``source``, cut as in training; and the image paths."""
    records = list_images(source)
    if not records:
        raise InputError(source, "no images found")
    items = []
    for record in records:
        cut = image_items(item_config(loaded.run_config.data, record.path), record.path, record.modality)
        items.append(cut.items[len(cut.items) // 2])
    return torch.stack(items).float(), [str(r.path) for r in records]


def codes_of_items(loaded: Any, items: Tensor, seed: int = 0, steps: int = PROJECTION_STEPS, restarts: int = PROJECTION_RESTARTS, labels: Tensor | None = None) -> Codes:
    """Codes of model inputs ``items``: the encoder's (posterior mean), or a GAN's projection."""
    method = loaded.method
    if _has_encoder(method):
        with torch.no_grad():
            return Codes(z=method.encode(items).float().cpu(), items=items)
    model = latent_generator(method)
    for p in method.parameters():
        p.requires_grad_(False)
    found = project(
        lambda z: model.decode_latent(z, labels),
        items,
        model.latent_dim,
        steps=steps,
        restarts=restarts,
        generator=torch.Generator().manual_seed(seed),
    )
    variance = items.flatten(1).var(1)
    log.info("projected %d scans: mean squared error %.4g (their voxel variance %.4g)", len(items), float(found.error.mean()), float(variance.mean()))
    return Codes(z=found.z.cpu(), items=items, projection_mse=found.error.cpu(), target_variance=variance)


def load_codes(loaded: Any, spec: str | Path, name: str | None = None, seed: int = 0, labels: Tensor | None = None) -> Codes:
    """Codes from a saved ``.npz`` (see the module docstring) or from scans (encoder or projection)."""
    text = str(spec)
    if text.split(":")[0].endswith(".npz"):
        z = _npz_codes(text, name)
        dim = latent_generator(loaded.method).latent_dim
        if z.shape[1] != dim:
            raise InputError(text, f"codes of size {z.shape[1]}, the model's latent space has {dim}")
        return Codes(z=z)
    items, paths = scan_items(loaded, spec)
    if labels is not None:
        labels = labels[:1].expand(len(items)) if labels.ndim == 1 else labels[:1].expand(len(items), -1)
    codes = codes_of_items(loaded, items, seed=seed, labels=labels)
    return Codes(z=codes.z, items=items, projection_mse=codes.projection_mse, target_variance=codes.target_variance, reference=paths[0])


# -- writing --------------------------------------------------------------------------------


def item_geometry(loaded: Any, reference: str | Path) -> Geometry:
    """The physical grid of the middle item :func:`scan_items` cuts from ``reference``.

    Spacing and direction are the scan's; a ``crop: resize`` run scales the spacing of the
    resized axes by scan size / item size (and moves the origin half a new voxel in, as
    ``align_corners=False`` does); a centre crop, a 3-D patch or a 2-D slice moves the
    origin to the item's first voxel. Padding of scans smaller than the item is symmetric.
    """
    cfg = item_config(loaded.run_config.data, reference)
    image = read_image(reference)
    scan = Geometry.from_meta(image.meta) or Geometry.identity(3)
    if scan.ndim != 3:
        return Geometry.create(tuple(scan.spacing) + (1.0,), (0.0, 0.0, 0.0), np.eye(3))
    shape = np.asarray(image.shape[-3:], np.float64)
    cut = image_items(cfg, reference, None)
    position = cut.positions[len(cut.positions) // 2]
    spacing = np.asarray(scan.spacing, np.float64)
    start = np.zeros(3)  # the item's first voxel centre, in the scan's (padded) voxel indices
    size = np.asarray(cfg.size, np.float64)
    if cfg.layout == "3d":
        prepared = np.asarray(cut.volume_shape[1:], np.float64)
        axes = [0, 1, 2]
        if cfg.crop == "resize":
            scale = prepared / size
            start = 0.5 * scale - 0.5
            spacing = spacing * scale
        else:
            grids = [_patch_starts(int(n), int(s)) for n, s in zip(prepared, size)]
            counts = [len(g) for g in grids]
            index = np.unravel_index(position, counts)
            start = np.asarray([grids[a][index[a]] for a in axes], np.float64)
    else:
        axes = [a for a in range(3) if a != cfg.slice_axis]
        prepared = np.asarray(cut.volume_shape[1:], np.float64)  # (P, Q) after padding
        start[cfg.slice_axis] = position
        if cfg.crop == "resize":
            scale = prepared / size
            start[axes] = 0.5 * scale - 0.5
            spacing[axes] = spacing[axes] * scale
        else:
            start[axes] = (prepared - size) // 2
        shape = shape[axes]
    padded_by = (np.asarray(cut.volume_shape[1:], np.float64) - shape) // 2  # SpatialPad's symmetric padding, before
    start[axes] = start[axes] - padded_by
    origin = np.asarray(scan.origin, np.float64) + scan.direction_matrix @ (np.asarray(scan.spacing, np.float64) * start)
    return Geometry.create(spacing, origin, scan.direction_matrix)


def _patch_starts(n: int, size: int) -> list[int]:
    """Patch starts along one axis, as :func:`udl_med.inference.encode.image_items` cuts 3-D patches."""
    if n <= size:
        return [0]
    count = math.ceil(n / size)
    return sorted({round(i * (n - size) / (count - 1)) for i in range(count)})


def _writer(loaded: Any, reference: str | None):
    """A function writing one image ``(C, *spatial)`` in [-1, 1] as NIfTI: the reference scan's item grid, else the training geometry."""
    space = sample_space(loaded)
    geometry = space.geometry if reference is None else item_geometry(loaded, reference)

    def write(x: Tensor, path: Path) -> Path:
        volume = to_physical(as_volume(x.float().cpu(), loaded.data_spec.spatial_dims, space.slice_axis), space.modality, space.ct_window)
        return write_image(MetaTensor(volume, meta={**geometry.as_meta(), "modality": space.modality}), path)

    return write


def _labels_for(method: Any, n: int, label_from: int | None, label_to: int | None) -> Tensor | None:
    """Soft class labels ``(n, K)`` moving from ``label_from`` to ``label_to`` (None for unconditional models)."""
    classes = method.num_sample_classes()
    if not classes:
        if label_from is not None or label_to is not None:
            raise UserError(f"method {method.name!r} is unconditional: --from-class / --to-class need a conditional model")
        return None
    a = 0 if label_from is None else int(label_from)
    b = a if label_to is None else int(label_to)
    for value in (a, b):
        if not 0 <= value < classes:
            raise UserError(f"class {value} is not a class of this model (0 to {classes - 1})")
    t = torch.linspace(0, 1, n).reshape(-1, 1)
    eye = torch.eye(classes)
    return (1 - t) * eye[a] + t * eye[b]


def interpolate_to_dir(
    model: str | Path,
    out: str | Path,
    steps: int,
    source_from: str | Path | None = None,
    source_to: str | Path | None = None,
    label_from: int | None = None,
    label_to: int | None = None,
    kind: str = "both",
    seed: int = 0,
) -> dict[str, Any]:
    """Interpolate between two codes of ``model`` (see the module docstring).

    Args:
        model: a model folder or MLflow URI (vae or gan).
        out: output folder.
        steps: codes along each path, both ends included (>= 2).
        source_from, source_to: saved codes or scans for the two ends (None: prior codes from ``seed``).
        label_from, label_to: classes at the two ends (conditional GANs).
        kind: ``linear``, ``slerp`` or ``both``.
        seed: the prior codes and the projection's starts.

    Returns:
        ``{"out", "steps", "kinds", "files", "strips", "figure", "norms", "projection_mse", ...}``.

    Raises:
        UserError: fewer than 2 steps, an unknown kind, a model without a latent space,
            classes for an unconditional model.
        InputError: unreadable codes or scans.
    """

    if steps < 2:
        raise UserError(f"--steps must be at least 2, got {steps}")
    if kind != "both" and kind not in INTERPOLATIONS:
        raise UserError(f"unknown interpolation {kind!r}; valid: both, {', '.join(INTERPOLATIONS)}")
    kinds = tuple(INTERPOLATIONS) if kind == "both" else (kind,)
    loaded = load_model(model)
    gen = latent_generator(loaded.method)
    labels = _labels_for(loaded.method, steps, label_from, label_to)
    prior = gen.draw_latent(2, torch.Generator().manual_seed(seed)).float()
    ends, errors, reference = [], {}, None
    for i, (which, source) in enumerate((("from", source_from), ("to", source_to))):
        if source is None:
            ends.append(prior[i])
            continue
        end_labels = None if labels is None else labels[0 if which == "from" else -1 : (1 if which == "from" else None)]
        codes = load_codes(loaded, source, seed=seed, labels=end_labels)
        ends.append(codes.z[0])
        reference = reference or codes.reference
        if codes.projection_mse is not None:
            errors[which] = {"projection_mse": float(codes.projection_mse[0]), "target_variance": float(codes.target_variance[0])}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write = _writer(loaded, reference)
    files, strips, rows, norms, paths = {}, {}, [], {}, {}
    for path_kind in kinds:
        z = interpolate(ends[0].double(), ends[1].double(), steps, path_kind).float()  # (steps, D)
        with torch.no_grad():
            images = gen.decode_latent(z, labels).float().cpu()
        folder = out / path_kind
        folder.mkdir(exist_ok=True)
        files[path_kind] = [str(write(x, folder / f"step_{i:03d}.nii.gz")) for i, x in enumerate(images)]
        strips[path_kind] = str(save_grid(images, out / f"{path_kind}.png", nrow=steps))
        rows.append(images)
        norms[path_kind] = [float(v) for v in z.norm(dim=1)]
        paths[path_kind] = z.numpy()
    figure = save_grid(torch.cat(rows), out / "interpolation.png", nrow=steps)
    save_npz(out / "codes.npz", paths)
    log.info("interpolated %d steps (%s) into %s", steps, ", ".join(kinds), out)
    return {
        "out": str(out),
        "steps": steps,
        "kinds": list(kinds),
        "files": files,
        "strips": strips,
        "figure": str(figure),
        "norms": norms,
        "latent_dim": gen.latent_dim,
        "projection": errors,
        "classes": None if labels is None else [int(labels[0].argmax()), int(labels[-1].argmax())],
    }


def draw_to_dir(model: str | Path, out: str | Path, n: int, seed: int = 0, label: int | None = None) -> dict[str, Any]:
    """``n`` prior codes and their images, to pick sets from: ``DIR/codes.npz`` (``codes``), NIfTI, ``DIR/samples.png``.

    Sample ``i`` is tile ``i`` of the grid, row-major with ``ceil(sqrt(n))`` tiles per row.
    """

    if n < 1:
        raise UserError(f"--draw must be at least 1, got {n}")
    loaded = load_model(model)
    gen = latent_generator(loaded.method)
    labels = _labels_for(loaded.method, n, label, label)
    z = gen.draw_latent(n, torch.Generator().manual_seed(seed)).float()
    with torch.no_grad():
        images = torch.cat([gen.decode_latent(z[i : i + 64], None if labels is None else labels[i : i + 64]).float().cpu() for i in range(0, n, 64)])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write = _writer(loaded, None)
    files = [str(write(x, out / f"sample_{i:04d}.nii.gz")) for i, x in enumerate(images)]
    save_npz(out / "codes.npz", {"codes": z.numpy()})
    grid = save_grid(images, out / "samples.png", nrow=math.ceil(math.sqrt(n)))
    return {"out": str(out), "codes": str(out / "codes.npz"), "grid": str(grid), "files": files, "n": n}


def named_sets(sets: Mapping[str, str | Path] | Sequence[str]) -> dict[str, str | Path]:
    """``{name: source}`` from a mapping, or from ``NAME=SOURCE`` strings (the command line's ``--codes``).

    Raises:
        UserError: a string that is not ``NAME=SOURCE``.
    """
    if isinstance(sets, Mapping):
        return {str(k): v for k, v in sets.items()}
    out: dict[str, str | Path] = {}
    for pair in sets:
        name, sep, source = str(pair).partition("=")
        if not sep or not name.strip() or not source.strip():
            raise UserError(f"--codes {pair!r}: write NAME=CODES.npz[:ROWS] or NAME=SCANS")
        out[name.strip()] = source.strip()
    return out


def arithmetic_to_dir(
    model: str | Path,
    out: str | Path,
    expression: str | None = None,
    sets: Mapping[str, str | Path] | Sequence[str] = (),
    draw: int | None = None,
    variants: int = 4,
    noise: float = 0.25,
    label: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate ``expression`` over the named ``sets`` of codes and decode the result (see the module docstring).

    With ``draw`` instead, write ``draw`` prior codes and their images to pick sets from
    (:func:`draw_to_dir`).

    Args:
        model: a model folder or MLflow URI (vae or gan).
        out: output folder.
        expression: e.g. ``"hyper - none + none_other"``.
        sets: set name -> saved codes (``.npz``, optionally ``:rows``) or scans; or
            ``NAME=SOURCE`` strings.
        draw: instead of an expression, the number of prior codes to draw.
        variants: results written: the result itself and ``variants - 1`` noisy copies.
        noise: std of the Gaussian noise of the copies.
        label: the class of a conditional GAN's results (and of its projections).
        seed: the noise and the projection's starts (the drawn codes with ``draw``).

    Returns:
        ``{"out", "expression", "terms", "set_sizes", "result_norm", "files", "grid", "projection"}``
        (with ``draw``: :func:`draw_to_dir`'s result).

    Raises:
        UserError: neither or both of ``expression`` and ``draw``, a bad expression, a
            name without a set, a set of fewer than 3 codes, a model without a latent space.
        InputError: unreadable codes or scans.
    """

    if draw is not None:
        if expression is not None:
            raise UserError("give either --expr (with --codes) or --draw N, not both")
        return draw_to_dir(model, out, draw, seed=seed, label=label)
    if expression is None:
        raise UserError('give --expr "A - B + C" with --codes for its sets, or --draw N to draw codes to pick from')
    sets = named_sets(sets)
    if variants < 1:
        raise UserError(f"--variants must be at least 1, got {variants}")
    try:
        parsed = parse_expression(expression)
    except ValueError as err:
        raise UserError(f"--expr: {err}") from None
    missing = [n for n in parsed.names if n not in sets]
    if missing:
        raise UserError(f"--expr names {', '.join(missing)} but no --codes {missing[0]}=... gives its codes (have: {', '.join(sorted(sets)) or 'none'})")
    loaded = load_model(model)
    gen = latent_generator(loaded.method)
    one = _labels_for(loaded.method, 1, label, label)
    loaded_sets, projection, reference = {}, {}, None
    for name in parsed.names:
        codes = load_codes(loaded, sets[name], name=name, seed=seed, labels=one)
        loaded_sets[name] = codes.z
        reference = reference or codes.reference
        if codes.projection_mse is not None:
            projection[name] = {"projection_mse": float(codes.projection_mse.mean()), "target_variance": float(codes.target_variance.mean())}
    try:
        result = evaluate_expression(parsed, loaded_sets, MIN_SET_SIZE).float()
    except ValueError as err:
        raise UserError(f"--expr {expression!r}: {err}") from None
    noise_gen = torch.Generator().manual_seed(seed)
    results = torch.cat([result[None], result + noise * torch.randn(variants - 1, result.shape[0], generator=noise_gen)])
    labels = None if one is None else one.expand(variants, -1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        decoded = gen.decode_latent(results, labels).float().cpu()
        width = max(variants, MIN_SET_SIZE + 1)
        rows = []
        for name in parsed.names:
            z = loaded_sets[name]
            members = torch.cat([z[:MIN_SET_SIZE], z.mean(0, keepdim=True)])
            images = gen.decode_latent(members, None if one is None else one.expand(len(members), -1)).float().cpu()
            rows.append(_pad_row(images, width))
        rows.append(_pad_row(decoded, width))
    write = _writer(loaded, reference)
    files = [str(write(x, out / f"result_{i:02d}.nii.gz")) for i, x in enumerate(decoded)]
    save_npz(out / "result.npz", {"codes": results.numpy(), **{f"set_{k}": v.numpy() for k, v in loaded_sets.items()}})
    grid = save_grid(torch.cat(rows), out / "arithmetic.png", nrow=width)
    log.info("%s over sets %s: wrote %d results into %s", expression, {k: len(v) for k, v in loaded_sets.items()}, variants, out)
    return {
        "out": str(out),
        "expression": expression,
        "terms": [[sign, name] for sign, name in parsed.terms],
        "set_sizes": {k: int(len(v)) for k, v in loaded_sets.items()},
        "result_norm": float(result.norm()),
        "files": files,
        "grid": str(grid),
        "rows": [*parsed.names, "result"],
        "projection": projection,
    }


def _pad_row(images: Tensor, width: int) -> Tensor:
    """``images`` followed by black tiles up to ``width``."""
    if len(images) >= width:
        return images[:width]
    return torch.cat([images, -torch.ones(width - len(images), *images.shape[1:])])


__all__ = [
    "Codes",
    "LatentGenerator",
    "arithmetic_to_dir",
    "codes_of_items",
    "draw_to_dir",
    "interpolate_to_dir",
    "latent_generator",
    "load_codes",
    "named_sets",
    "scan_items",
]
