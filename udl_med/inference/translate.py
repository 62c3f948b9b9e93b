"""``udl-med translate``: CT -> MR or MR -> CT with a trained CycleGAN or pix2pix.

A volume is read (:func:`udl_med.data.io.read_image`), normalised the way the model
was trained (CT: the run's HU window; MR: the volume's own robust percentiles), run
slice by slice for 2D / 2.5D models (batches of slices across the run's
``data.slice_axis``) or with MONAI's sliding-window inference and Gaussian blending
for 3D models, mapped back to physical units, and written with the input's exact
geometry (and, for a DICOM input, its patient and study) by
:func:`udl_med.data.io.write_image`: NIfTI for a ``.nii.gz`` name, a derived DICOM
series for a folder name.

Output units: a translated CT is in Hounsfield units (the run's CT window mapped back,
so values lie inside it). MR has no absolute scale; a translated MR maps [-1, 1] onto
``MR_OUTPUT_RANGE`` = (0, 1000) arbitrary units, which keeps DICOM's int16 storage fine.

Speed: on the CPU, convolutions with few output channels (a generator's last layer) are
computed tap by tap (:mod:`udl_med.nets.cpu_inference`), 3-4x faster in oneDNN.

Memory: a 2D model holds the input, the output and one chunk of slices (about
``SLICE_PIXELS`` pixels) at a time. A 3D model holds the normalised input, the output
and MONAI's blending buffers (about four volumes of float32) on the CPU, with only the
windows on the accelerator. Windows are batched ``WINDOW_VOXELS`` voxels at a time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from torch import Tensor
from tqdm import tqdm

from udl_med.data.normalize import CT_WINDOW, MR_PERCENTILES, denormalize, normalization_params, normalize
from udl_med.errors import InputError, UserError

log = logging.getLogger(__name__)

DIRECTIONS = ("ct2mr", "mr2ct")
SOURCE = {"ct2mr": "CT", "mr2ct": "MR"}
TARGET = {"ct2mr": "MR", "mr2ct": "CT"}
MR_OUTPUT_RANGE: tuple[float, float] = (0.0, 1000.0)
SLICE_PIXELS = 2**20  # pixels per chunk of slices (2D models): 4 slices of 512 x 512
PERCENTILE_SAMPLE = 2**24  # MR percentiles of larger volumes come from an evenly strided sample
SW_OVERLAP = 0.25
WINDOW_VOXELS = 2**17  # voxels per forward pass: 4 windows of 32^3, 32 of 64 x 64 (larger batches gain nothing on CPU)


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
    def from_config(cls, config: dict[str, Any]) -> TranslationSetup:
        data = config.get("data", {})
        return cls(
            layout=str(data.get("layout", "2d")),
            slice_axis=int(data.get("slice_axis", 2)),
            context=int(data.get("context", 1)) if data.get("layout") == "2.5d" else 0,
            roi_size=tuple(int(s) for s in data.get("size", (32, 32))),
            ct_window=tuple(float(v) for v in data.get("ct_window", CT_WINDOW)),  # type: ignore[arg-type]
            mr_percentiles=tuple(float(v) for v in data.get("mr_percentiles", MR_PERCENTILES)),  # type: ignore[arg-type]
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


def _device(method: torch.nn.Module) -> torch.device:
    return next(method.parameters()).device


def _translate_slices(
    predict: Callable[[Tensor], Tensor],
    volume: Tensor,
    params_in: dict[str, Any],
    params_out: dict[str, Any],
    setup: TranslationSetup,
    device: torch.device,
    progress: bool,
) -> Tensor:
    """Run a 2D / 2.5D model over every slice of ``volume`` ``(X, Y[, Z])``; same shape, output units."""
    flat_image = volume.ndim == 2  # a 2D image is one slice
    axis = 2 if flat_image else setup.slice_axis
    if flat_image:
        volume = volume[..., None]
    slices = volume.movedim(axis, 0)  # (S, P, Q), a view
    n, c = slices.shape[0], setup.context
    out = torch.empty(slices.shape, dtype=torch.float32)
    chunk = max(1, min(n, SLICE_PIXELS // max(1, slices.shape[1] * slices.shape[2])))
    starts = range(0, n, chunk)
    for s0 in tqdm(starts, desc="translate", unit="chunk", disable=not progress, leave=False):
        s1 = min(n, s0 + chunk)
        idx = torch.arange(s0 - c, s1 + c).clamp_(0, n - 1)
        block = to_unit(slices.index_select(0, idx), params_in)  # (s1 - s0 + 2c, P, Q)
        x = block.unfold(0, 2 * c + 1, 1).permute(0, 3, 1, 2) if c else block[:, None]  # (B, 2c + 1, P, Q)
        y = _windowed(predict, x.contiguous(), setup.roi_size, device)  # (B, C, P, Q)
        y = y[:, y.shape[1] // 2] if y.shape[1] > 1 else y[:, 0]  # the centre channel of 2.5D outputs
        out[s0:s1] = denormalize(y.float().cpu(), params_out)
    out = out.movedim(0, axis)
    return out[..., 0] if flat_image else out


def windows_per_batch(roi_size: tuple[int, ...]) -> int:
    """Windows per forward pass: about ``WINDOW_VOXELS`` voxels, so small windows batch well."""
    return max(1, WINDOW_VOXELS // max(1, math.prod(roi_size)))


def _windowed(predict: Callable[[Tensor], Tensor], x: Tensor, roi_size: tuple[int, ...], device: torch.device, progress: bool = False) -> Tensor:
    """MONAI sliding-window inference of ``x`` ``(B, C, *spatial)`` in windows of the training size.

    Windows of the training size keep instance-norm statistics as in training; Gaussian
    blending hides the seams. Results are gathered on the CPU.
    """
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        y = sliding_window_inference(
            x,
            roi_size=roi_size,
            sw_batch_size=windows_per_batch(roi_size),
            predictor=predict,
            overlap=SW_OVERLAP,
            mode="gaussian",
            padding_mode="constant",
            cval=-1.0,  # background, as training pads
            sw_device=device,
            device="cpu",
            progress=progress,
        )
    return y.as_tensor() if isinstance(y, MetaTensor) else y


def _translate_windows(
    predict: Callable[[Tensor], Tensor],
    volume: Tensor,
    params_in: dict[str, Any],
    params_out: dict[str, Any],
    setup: TranslationSetup,
    device: torch.device,
    progress: bool,
) -> Tensor:
    """Run a 3D model over ``volume`` ``(X, Y, Z)`` with MONAI sliding-window inference, Gaussian blending."""
    x = torch.empty((1, 1, *volume.shape), dtype=torch.float32)
    for k in range(0, volume.shape[0], 16):  # normalise in slabs: no float64 copy of the whole volume
        x[0, 0, k : k + 16] = to_unit(volume[k : k + 16], params_in)
    y = _windowed(predict, x, setup.roi_size, device, progress)
    del x
    out = y[0, 0]
    for k in range(0, out.shape[0], 16):
        out[k : k + 16] = denormalize(out[k : k + 16], params_out)
    return out


def translate_image(
    method: Any,
    image: MetaTensor,
    direction: str,
    setup: TranslationSetup,
    progress: bool = True,
) -> MetaTensor:
    """Translate one image as :func:`~udl_med.data.io.read_image` returns it.

    Args:
        method: a trained translation method (``method.translate(x, direction)``), eval mode.
        image: ``(1, X, Y[, Z])`` in physical units with its geometry in ``meta``.
        direction: ``ct2mr`` or ``mr2ct``.
        setup: how the model was trained (:meth:`TranslationSetup.from_config`).
        progress: show a progress bar.

    Returns:
        ``(1, X, Y[, Z])`` float32 in the target's units (CT in HU), with the input's
        affine and meta (geometry, DICOM patient/study) and the target ``modality``.

    Raises:
        InputError: a 2D image given to a 3D model.
    """
    volume = image.as_tensor()[0] if isinstance(image, MetaTensor) else torch.as_tensor(image)[0]
    source, target = SOURCE[direction], TARGET[direction]
    params_in = input_params(volume, source, setup)
    params_out = output_params(target, setup)
    device = _device(method)

    def predict(x: Tensor) -> Tensor:
        return method.translate(x, direction)

    if setup.layout == "3d":
        if volume.ndim != 3:
            raise InputError(image.meta.get("filename_or_obj", "<image>"), "a 3D model needs a volume, got a 2D image")
        out = _translate_windows(predict, volume, params_in, params_out, setup, device, progress)
    else:
        out = _translate_slices(predict, volume, params_in, params_out, setup, device, progress)
    meta = dict(getattr(image, "meta", {}) or {})
    meta["modality"] = target
    affine = meta.pop("affine", None)
    return MetaTensor(out[None], affine=affine, meta=meta)


# --- the command ---------------------------------------------------------------------


class Translator(torch.nn.Module):
    """A trained translation model ready for inference: its generators, and the run config that says how it was trained.

    Only the generators are kept; discriminators, image pools and losses are dropped as
    the model loads (a 3D CycleGAN's discriminators hold most of its weights). On the
    CPU, narrow convolutions are folded for speed (:mod:`udl_med.nets.cpu_inference`).
    """

    def __init__(self, method: Any, config: dict[str, Any]) -> None:
        super().__init__()
        self.name: str = method.name
        self.config = config
        self.directions: tuple[str, ...] = tuple(getattr(method, "directions", DIRECTIONS))
        self.generators = torch.nn.ModuleDict({d: method.generator(d) for d in self.directions})

    def translate(self, x: Tensor, direction: str) -> Tensor:
        """Translate normalised images ``(B, C, *spatial)`` in ``direction``."""
        return self.generators[direction](x)


def load_translator(model: str | Path) -> Translator:
    """The :class:`Translator` of a ``cyclegan`` or ``pix2pix`` model (folder or MLflow URI): eval mode, on CUDA when there is one.

    Raises:
        InputError: no model there.
        UserError: the method cannot translate.
    """
    from udl_med.engine.model_io import load_model
    from udl_med.methods.base import Capability

    loaded = load_model(model)
    if Capability.TRANSLATE not in loaded.method.capabilities:
        raise UserError(f"{model}: method {loaded.method.name!r} cannot translate (use a cyclegan or pix2pix model)")
    translator = Translator(loaded.method, loaded.config).eval()
    del loaded  # the discriminators go with the method
    if torch.cuda.is_available():
        translator.to("cuda")
    else:
        from udl_med.nets.cpu_inference import fold_narrow_convolutions

        folded = fold_narrow_convolutions(translator)
        log.debug("translate: %d narrow convolution(s) folded for CPU inference", folded)
    return translator


def _translate_one(
    translator: Translator,
    src: Path,
    dst: Path | Callable[[str], Path],
    direction: str | None,
    modality: str | None,
    progress: bool,
    skip_other: bool = False,
) -> dict[str, Any] | None:
    """Translate ``src`` into ``dst`` (a path, or a function of the direction).

    With ``skip_other``, return None for a volume of the other modality.
    """
    from udl_med.data.io import image_kind, read_image, write_image

    if isinstance(dst, Path):
        image_kind(dst)  # an unknown output suffix fails before any work
    image = read_image(src)
    modality = modality or image.meta.get("modality")
    available = translator.directions
    if skip_other and modality in ("CT", "MR"):
        wanted = direction or {SOURCE[d]: d for d in available}.get(modality)
        if wanted is None or SOURCE[wanted] != modality:
            return None
    direction = resolve_direction(direction, modality, available, src)
    setup = TranslationSetup.from_config(translator.config)
    start = time.perf_counter()
    out = translate_image(translator, image, direction, setup, progress=progress)
    del image
    dst = dst if isinstance(dst, Path) else dst(direction)
    write_image(out, dst)
    return {"input": str(src), "output": str(dst), "direction": direction, "shape": list(out.shape[1:]), "seconds": round(time.perf_counter() - start, 3)}


def _output_for(record_path: Path, base: Path, out_dir: Path, direction_tag: str) -> Path:
    """Where a volume of a collection goes: its path relative to ``base`` under ``out_dir``."""
    from udl_med.data.io import VOLUME_SUFFIXES

    try:
        rel = record_path.resolve().relative_to(base.resolve())
    except ValueError:
        rel = Path(record_path.name)
    name = rel.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return out_dir / rel.parent / f"{name[: -len(suffix)]}_{direction_tag}{suffix}"
    if record_path.is_dir():  # a DICOM series folder -> a DICOM series folder
        return out_dir / rel.parent / f"{name}_{direction_tag}"
    return out_dir / rel.parent / f"{Path(name).stem}_{direction_tag}.nii.gz"


def _write_manifest(folder: Path, rows: list[tuple[str, str, str]]) -> None:
    """``folder/manifest.csv`` of the translated volumes, so the folder is an input to fid, train, info."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".manifest.csv.tmp"
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "modality", "subject"])
        for output, modality, subject in rows:
            writer.writerow([Path(output).relative_to(folder).as_posix(), modality, subject])
    tmp.replace(folder / "manifest.csv")


def translate_path(
    model: str | Path,
    input: str | Path,  # noqa: A002 - the CLI's name
    output: str | Path,
    direction: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``udl-med translate MODEL INPUT OUTPUT [--direction ct2mr|mr2ct]``.

    Args:
        model: ``runs:/<id>/model``, ``models:/<name>/<version>`` or a local model folder.
        input: a volume file, a DICOM series folder, a folder of volumes or a manifest CSV.
        output: for one volume, a ``.nii.gz`` (``.nii``, ``.mha``, ``.nrrd``) name or a
            folder name (DICOM series); for a folder or manifest, the output folder, which
            mirrors the input's layout (``<name>_<direction>`` per volume).
        direction: ``ct2mr`` or ``mr2ct``; by default from each input's modality.
        progress: show progress bars.

    Returns:
        One volume: input, output, direction, shape, seconds. A collection: counts of
        volumes, translated, skipped (the other modality) and failed, with one line per
        failure; a failing volume does not stop the others.

    Raises:
        InputError / UserError: a bad model, input or output (and a collection in which
            every volume failed).
    """
    from udl_med.data.io import image_kind, list_images

    input_path, out_path = Path(input), Path(output)
    if direction is not None and direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    records = list_images(input_path)
    single = len(records) == 1 and records[0].path == input_path and input_path.suffix.lower() != ".csv"
    if single:
        image_kind(out_path)
        translator = load_translator(model)
        result = _translate_one(translator, input_path, out_path, direction, records[0].modality, progress)
        return {**(result or {}), "method": translator.name}

    if image_kind(out_path) != "dicom" or out_path.is_file():
        raise InputError(out_path, "a folder or manifest input needs an output folder name (no file suffix)")
    translator = load_translator(model)
    base = input_path.parent if input_path.is_file() else input_path
    available = translator.directions
    translated, skipped, failures, outputs = 0, 0, [], []
    rows: list[tuple[str, str, str]] = []
    by_modality = {SOURCE[d]: d for d in available}
    for record in tqdm(records, desc="volumes", unit="vol", disable=not progress):
        # a volume of the other modality (per the manifest) is skipped, not a failure
        wanted = direction or by_modality.get(record.modality or "")
        if record.modality is not None and (wanted is None or SOURCE[wanted] != record.modality):
            skipped += 1
            continue
        try:

            def dst(d: str, record_path: Path = record.path) -> Path:
                return _output_for(record_path, base, out_path, d)

            result = _translate_one(translator, record.path, dst, direction, record.modality, progress=False, skip_other=True)
            if result is None:
                skipped += 1
                continue
            outputs.append(result["output"])
            rows.append((result["output"], TARGET[result["direction"]], record.subject or ""))
            translated += 1
        except (UserError, ValueError, RuntimeError, OSError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            line = message if message.startswith(str(record.path)) else f"{record.path}: {message}"
            log.error("translate: %s", line)
            failures.append(line)
    if translated == 0 and failures:
        raise InputError(input_path, f"all {len(failures)} volume(s) failed; first: {failures[0]}")
    _write_manifest(out_path, rows)
    return {
        "input": str(input_path),
        "output": str(out_path),
        "method": translator.name,
        "volumes": len(records),
        "translated": translated,
        "skipped": skipped,
        "failed": len(failures),
        "failures": failures,
        "outputs": outputs,
    }
