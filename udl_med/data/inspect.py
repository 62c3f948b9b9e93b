"""``udl-med info`` and ``udl-med convert``: describe and validate inputs, convert between formats."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from monai.data import MetaTensor

from udl_med.data.formats import image_kind
from udl_med.data.manifest import list_images
from udl_med.data.readers import read_image
from udl_med.data.writers import write_image
from udl_med.errors import InputError

__all__ = ["describe", "convert"]


def _summary(image: MetaTensor) -> dict[str, Any]:
    arr = image.as_tensor()
    return {
        "path": str(image.meta["filename_or_obj"]),
        "format": image.meta.get("format"),
        "shape": list(arr.shape[1:]),
        "spacing": [round(v, 6) for v in image.meta["spacing"]],
        "origin": [round(v, 6) for v in image.meta["origin"]],
        "direction": [round(v, 6) for v in image.meta["direction"]],
        "modality": image.meta.get("modality"),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "mean": float(arr.double().mean()),
    }


def describe(path: str | Path) -> dict[str, Any]:
    """Validate an input and describe it (``udl-med info``).

    One image: shape, spacing, origin, direction, modality and intensity range. A
    folder or manifest: every image is read (and so validated), and the counts by
    modality, split and label are reported with one summary per image.

    Raises:
        InputError: the first problem found, naming the file.
    """
    path = Path(path)
    records = list_images(path)
    single = len(records) == 1 and records[0].path == path
    if single:
        return _summary(read_image(path))
    images = []
    for rec in records:
        summary = _summary(read_image(rec.path))
        if rec.modality and summary["modality"] and rec.modality != summary["modality"]:
            raise InputError(rec.path, f"manifest says modality {rec.modality} but the file says {summary['modality']}")
        summary.update({k: v for k, v in asdict(rec).items() if k != "path" and v is not None})
        if rec.modality:
            summary["modality"] = rec.modality
        images.append(summary)

    def count(key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in images:
            if s.get(key) is not None:
                out[str(s[key])] = out.get(str(s[key]), 0) + 1
        return dict(sorted(out.items()))

    return {
        "path": str(path),
        "n_images": len(images),
        "modalities": count("modality"),
        "splits": count("split"),
        "labels": count("label"),
        "subjects": len({s["subject"] for s in images if s.get("subject")}),
        "min": min(s["min"] for s in images),
        "max": max(s["max"] for s in images),
        "images": images,
    }


def convert(input: str | Path, output: str | Path) -> dict[str, Any]:
    """Convert one image to NIfTI, MHA, NRRD or a DICOM series, geometry kept (``udl-med convert``).

    The input is fully read and validated before anything is written.

    Raises:
        InputError: a bad input, a collection instead of one image, or an unknown output format.
    """
    input, output = Path(input), Path(output)
    kind = image_kind(output)
    if input.is_file() and input.suffix.lower() == ".csv":
        raise InputError(input, "convert takes one image, not a manifest")
    image = read_image(input)
    written = write_image(image, output, reference=image)
    return {
        "input": str(input),
        "output": str(written),
        "format": kind,
        "shape": list(image.shape[1:]),
        "spacing": [round(v, 6) for v in image.meta["spacing"]],
        "modality": image.meta.get("modality"),
    }
