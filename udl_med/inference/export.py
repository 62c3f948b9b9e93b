"""`udl-med export`: write a trained model in a format other tools load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from udl_med.engine.model_io import load_model
from udl_med.errors import UserError
from udl_med.inference.export_classifier import export_classifier
from udl_med.inference.export_encoder import export_encoder
from udl_med.inference.export_generator import export_generator
from udl_med.inference.export_translator import export_bundle, export_torchscript

EXPORT_FORMATS = ("bundle", "classifier", "encoder", "generator", "torchscript")


def export_model(model: str, out: str | Path, fmt: str = "encoder") -> dict[str, Any]:
    """Export MODEL to OUT as a MONAI bundle, encoder or classifier weights, a GAN's generator, or a TorchScript network.

    Raises:
        UserError: unknown format, or a model that cannot be exported in that format.
    """
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
    loaded = load_model(model)
    if fmt == "encoder":
        return export_encoder(loaded, Path(out))
    if fmt == "generator":
        return export_generator(loaded, Path(out))
    if fmt == "classifier":
        return export_classifier(loaded, Path(out))

    if fmt == "bundle":
        return export_bundle(loaded, Path(out))
    return export_torchscript(loaded, Path(out))
