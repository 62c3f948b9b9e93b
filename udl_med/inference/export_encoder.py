"""``udl-med export MODEL OUT --format encoder``: a pretrained encoder as a stock MONAI network.

Writes two files into the folder ``OUT``:

- ``encoder.json``: ``{"class": "monai.networks.nets.<Name>", "kwargs": {...}}`` (build it
  with ``Name(**kwargs)``), plus ``input`` (what the network expects: spatial dims,
  channels, item size and the normalisation of the run that trained it), ``out_features``,
  and where it came from (``method``, ``source``);
- ``encoder.pt``: its state dict, which loads with ``strict=True`` and
  ``torch.load(..., weights_only=True)``.

A downstream MONAI model starts from it like this (no udl-med needed)::

    import json, torch, monai.networks.nets as nets
    spec = json.load(open("OUT/encoder.json"))
    encoder = getattr(nets, spec["class"].rsplit(".", 1)[1])(**spec["kwargs"])
    encoder.load_state_dict(torch.load("OUT/encoder.pt", weights_only=True), strict=True)
    classifier = torch.nn.Sequential(encoder, torch.nn.Linear(spec["out_features"], num_classes))

Inputs are normalised as in ``spec["input"]``: CT clipped to ``ct_window`` HU and mapped
to [-1, 1]; MR mapped from its ``mr_percentiles`` to [-1, 1].
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from udl_med import keys
from udl_med.errors import UserError
from udl_med.io_utils import atomic_write, atomic_write_text
from udl_med.nets.exported import MONAI_NETS, ExportedEncoder, build_encoder, load_encoder, read_encoder_spec

__all__ = [
    "INPUT_KEYS", "MONAI_NETS", "ExportedEncoder", "build_encoder", "export_encoder", "load_encoder",
    "read_encoder_spec", "write_network_export",
]

log = logging.getLogger(__name__)

INPUT_KEYS = ("layout", "slice_axis", "context", "size", "crop", "ct_window", "mr_percentiles", "foreground_fraction", "modality")


def write_network_export(
    out: Path, json_name: str, weights_name: str, state: dict[str, torch.Tensor], document: dict[str, Any]
) -> tuple[Path, Path]:
    """Write an exported network into folder ``out``: its state dict and its JSON description, each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, weights_path = out / json_name, out / weights_name
    atomic_write(weights_path, lambda p: torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, p))
    atomic_write_text(json_path, json.dumps(document, indent=2) + "\n")
    return json_path, weights_path


def export_encoder(loaded: Any, out: Path) -> dict[str, Any]:
    """Write ``encoder.json`` and ``encoder.pt`` for a loaded model that can encode.

    Args:
        loaded: a :class:`udl_med.engine.model_io.LoadedModel`.
        out: the output folder (created).

    Returns:
        ``{"out", "encoder_json", "encoder_weights", "class", "out_features", "n_parameters"}``.

    Raises:
        UserError: the method has no exportable encoder.
    """
    method = loaded.method
    try:
        class_path, kwargs, state = method.export_encoder()
    except NotImplementedError as err:
        raise UserError(f"{loaded.source}: {err}") from None
    net = build_encoder(class_path, kwargs)
    net.load_state_dict(state, strict=True)  # what a downstream user will do
    net.eval()
    spec = loaded.data_spec
    with torch.no_grad():
        probe = torch.zeros(1, spec.in_channels, *spec.image_size)
        out_features = int(net(probe).flatten(1).shape[1])
    data = loaded.run_config.data.model_dump(mode="json")
    document = {
        "class": class_path,
        "kwargs": kwargs,
        "out_features": out_features,
        "input": {
            "spatial_dims": spec.spatial_dims,
            "in_channels": spec.in_channels,
            "image_size": list(spec.image_size),
            "intensity_range": [-1.0, 1.0],
            **{k: data[k] for k in INPUT_KEYS if k in data},
        },
        "method": method.name,
        "source": str(loaded.source),
        # how training split a source without a split column (a probe on the same data holds out the same subjects)
        "training_split": {"fractions": list(data["split_fractions"]), "seed": data["split_seed"]},
    }
    json_path, weights_path = write_network_export(Path(out), keys.ENCODER_JSON, keys.ENCODER_WEIGHTS, state, document)
    log.info("exported the %s encoder of %s to %s", class_path, loaded.source, out)
    return {
        "out": str(out),
        "encoder_json": str(json_path),
        "encoder_weights": str(weights_path),
        "class": class_path,
        "out_features": out_features,
        "n_parameters": sum(p.numel() for p in net.parameters()),
    }


