"""``udl-med translate``: CT -> MR or MR -> CT with a trained CycleGAN or pix2pix.

A volume is read (:func:`udl_med.data.readers.read_image`), normalised the way the model
was trained (CT: the run's HU window; MR: the volume's own robust percentiles;
:mod:`udl_med.inference.translation_setup`), run slice by slice for 2D / 2.5D models or
with MONAI's sliding-window inference and Gaussian blending for 3D models
(:mod:`udl_med.inference.window_engines`), mapped back to physical units, and written
with the input's exact geometry (and, for a DICOM input, its patient and study) by
:func:`udl_med.data.writers.write_image`: NIfTI for a ``.nii.gz`` name, a derived DICOM
series for a folder name. A folder or manifest is translated volume by volume into a
folder that mirrors it, with a ``manifest.csv``.

Output units: a translated CT is in Hounsfield units (the run's CT window mapped back,
so values lie inside it); a translated MR maps [-1, 1] onto ``MR_OUTPUT_RANGE`` = (0,
1000) arbitrary units.

Speed: on the CPU, convolutions with few output channels (a generator's last layer) are
computed tap by tap (:mod:`udl_med.nets.cpu_inference`), 3-4x faster in oneDNN.

This module is the command; the names of the modules it is built from are re-exported
here for existing callers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from udl_med.data.formats import VOLUME_SUFFIXES, image_kind
from udl_med.data.manifest import list_images, write_manifest
from udl_med.data.readers import read_image
from udl_med.data.writers import write_image
from udl_med.errors import InputError, UserError
from udl_med.inference.model_grid import back_to, to_model_grid
from udl_med.inference.translation_setup import (
    DIRECTIONS,
    MR_OUTPUT_RANGE,
    PERCENTILE_SAMPLE,
    SOURCE,
    TARGET,
    TranslationSetup,
    direction_for,
    input_params,
    output_params,
    resolve_direction,
    to_unit,
)
from udl_med.inference.translator import Translator, load_translator
from udl_med.inference.window_engines import SLICE_PIXELS, SW_OVERLAP, WINDOW_VOXELS, translate_image, windows_per_batch
from udl_med.io_utils import progress_disabled

log = logging.getLogger(__name__)

__all__ = [
    "translate_path", "translate_image", "translate_volume", "Translator", "load_translator", "TranslationSetup", "resolve_direction",
    "direction_for", "input_params", "output_params", "to_unit", "windows_per_batch",
    "DIRECTIONS", "SOURCE", "TARGET", "MR_OUTPUT_RANGE", "PERCENTILE_SAMPLE", "SLICE_PIXELS", "SW_OVERLAP", "WINDOW_VOXELS",
]


def _translate_one(
    translator: Translator,
    src: Path,
    dst: Path | Callable[[str], Path],
    direction: str | None,
    modality: str | None,
    progress: bool,
    skip_other: bool = False,
    resample: bool = True,
) -> dict[str, Any] | None:
    """Translate ``src`` into ``dst`` (a path, or a function of the direction).

    With ``skip_other``, return None for a volume of the other modality. The volume is
    resampled to the model's training grid and the result back to the input's
    (:func:`translate_volume`).
    """
    if isinstance(dst, Path):
        image_kind(dst)  # an unknown output suffix fails before any work
    image = read_image(src)
    modality = modality or image.meta.get("modality")
    available = translator.directions
    if skip_other and modality in ("CT", "MR") and direction_for(modality, direction, available) is None:
        return None
    direction = resolve_direction(direction, modality, available, src)
    start = time.perf_counter()
    out = translate_volume(translator, image, direction, progress=progress, resample=resample, source=src)
    del image
    dst = dst if isinstance(dst, Path) else dst(direction)
    write_image(out, dst)
    return {"input": str(src), "output": str(dst), "direction": direction, "shape": list(out.shape[1:]), "seconds": round(time.perf_counter() - start, 3)}


def translate_volume(translator: Translator, image: Any, direction: str, progress: bool = False, resample: bool = True, source: Any = "<image>") -> Any:
    """Translate one image ``(1, X, Y[, Z])`` (physical units, geometry in its meta) with the input's exact geometry.

    The image is resampled to the model's training spacing and orientation
    (:func:`udl_med.inference.model_grid.to_model_grid`) when it differs, translated
    (:func:`translate_image`), and the result resampled back onto the input's grid
    (:func:`~udl_med.inference.model_grid.back_to`). ``resample=False`` translates the
    image as it is and refuses a large mismatch.

    Raises:
        UserError: a refused mismatch; InputError: a 2D image given to a 3D model.
    """
    grid, moved = to_model_grid(image, translator.geometry, resample, source)
    out = translate_image(translator, grid, direction, translator.setup, progress=progress)
    return back_to(out, image) if moved else out


def _output_for(record_path: Path, base: Path, out_dir: Path, direction_tag: str) -> Path:
    """Where a volume of a collection goes: its path relative to ``base`` under ``out_dir``."""
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


def translate_path(
    model: str | Path,
    input: str | Path,  # noqa: A002 - the CLI's name
    output: str | Path,
    direction: str | None = None,
    progress: bool = True,
    device: str | None = None,
    resample: bool = True,
) -> dict[str, Any]:
    """``udl-med translate MODEL INPUT OUTPUT [--direction ct2mr|mr2ct] [--device D] [--no-resample]``.

    Args:
        model: ``runs:/<id>/model``, ``models:/<name>/<version>`` or a local model folder.
        input: a volume file, a DICOM series folder, a folder of volumes or a manifest CSV.
        output: for one volume, a ``.nii.gz`` (``.nii``, ``.mha``, ``.nrrd``) name or a
            folder name (DICOM series); for a folder or manifest, the output folder, which
            mirrors the input's layout (``<name>_<direction>`` per volume).
        direction: ``ct2mr`` or ``mr2ct``; by default from each input's modality.
        progress: show progress bars.
        device: where the network runs (default: CUDA when there is one, else the CPU).
        resample: resample each volume to the model's training spacing and orientation
            and the result back (default); False translates it as it is and refuses a
            large mismatch (:mod:`udl_med.inference.model_grid`).

    Returns:
        One volume: input, output, direction, shape, seconds. A collection: counts of
        volumes, translated, skipped (the other modality) and failed, with one line per
        failure; a failing volume does not stop the others.

    Raises:
        InputError / UserError: a bad model, input or output (and a collection in which
            every volume failed).
    """
    input_path, out_path = Path(input), Path(output)
    if direction is not None and direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    records = list_images(input_path)
    single = len(records) == 1 and records[0].path == input_path and input_path.suffix.lower() != ".csv"
    if single:
        image_kind(out_path)
        translator = load_translator(model, device)
        result = _translate_one(translator, input_path, out_path, direction, records[0].modality, progress, resample=resample)
        return {**(result or {}), "method": translator.name}

    if image_kind(out_path) != "dicom" or out_path.is_file():
        raise InputError(out_path, "a folder or manifest input needs an output folder name (no file suffix)")
    translator = load_translator(model, device)
    base = input_path.parent if input_path.is_file() else input_path
    available = translator.directions
    translated, skipped, failures, outputs = 0, 0, [], []
    rows: list[dict[str, Any]] = []
    for record in tqdm(records, desc="volumes", unit="vol", disable=progress_disabled(not progress)):
        # a volume of the other modality (per the manifest, or else its file) is skipped, not a failure
        if record.modality is not None and direction_for(record.modality, direction, available) is None:
            skipped += 1
            continue
        try:

            def dst(d: str, record_path: Path = record.path) -> Path:
                return _output_for(record_path, base, out_path, d)

            result = _translate_one(translator, record.path, dst, direction, record.modality, progress=False, skip_other=True, resample=resample)
            if result is None:
                skipped += 1
                continue
            outputs.append(result["output"])
            rows.append({"image": Path(result["output"]).resolve(), "modality": TARGET[result["direction"]], "subject": record.subject})
            translated += 1
        except (UserError, ValueError, RuntimeError, OSError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            line = message if message.startswith(str(record.path)) else f"{record.path}: {message}"
            log.error("translate: %s", line)
            failures.append(line)
    if translated == 0 and failures:
        raise InputError(input_path, f"all {len(failures)} volume(s) failed; first: {failures[0]}")
    write_manifest(out_path / "manifest.csv", rows)  # the folder is an input to fid, train, info
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
