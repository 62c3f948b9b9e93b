"""Exported encoders read back: a stock MONAI network rebuilt from ``encoder.json`` and ``encoder.pt``.

``udl-med export --format encoder`` (:mod:`udl_med.inference.export_encoder`) writes the
folder; this module reads it for whoever needs the network below the inference layer:
the ``finetune_classifier`` method, the ``encoder:PATH`` feature extractor, the probes.
Only classes of ``monai.networks.nets`` are built, and weights load with
``weights_only=True`` and ``strict=True``: an export folder is never a way to run code.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from udl_med import keys
from udl_med.errors import InputError, UserError

__all__ = ["MONAI_NETS", "ITEM_BATCH", "ExportedEncoder", "build_encoder", "encode_items", "load_encoder", "probabilities", "read_encoder_spec"]

MONAI_NETS = "monai.networks.nets"
ITEM_BATCH = 64  # items per forward pass


def build_encoder(class_path: str, kwargs: dict[str, Any]) -> nn.Module:
    """Instantiate ``class_path(**kwargs)``; only classes of ``monai.networks.nets`` are allowed.

    Raises:
        UserError: a class outside ``monai.networks.nets``, or one that does not exist.
    """
    module_name, _, name = class_path.rpartition(".")
    if module_name != MONAI_NETS:
        raise UserError(f"encoder class {class_path!r} is not in {MONAI_NETS}")
    cls = getattr(importlib.import_module(module_name), name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise UserError(f"{class_path!r} is not a network class of {MONAI_NETS}")
    return cls(**kwargs)


@dataclass(frozen=True)
class ExportedEncoder:
    """An encoder read back from an export folder: the network and its ``encoder.json``."""

    net: nn.Module
    spec: dict[str, Any]

    @property
    def out_features(self) -> int:
        return int(self.spec["out_features"])


def read_encoder_spec(folder: str | Path) -> dict[str, Any]:
    """The ``encoder.json`` of an export folder (or the file itself)."""
    path = Path(folder)
    json_path = path if path.is_file() else path / keys.ENCODER_JSON
    if not json_path.is_file():
        raise InputError(folder, f"no {keys.ENCODER_JSON}; is this a folder written by `udl-med export --format encoder`?")
    try:
        spec = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(json_path, f"not readable JSON ({err})") from None
    for key in ("class", "kwargs", "out_features", "input"):
        if key not in spec:
            raise InputError(json_path, f"missing key {key!r}")
    return spec


def load_encoder(folder: str | Path, pretrained: bool = True, seed: int | None = None) -> ExportedEncoder:
    """Build the exported MONAI encoder; load its weights strictly, or leave it randomly initialised.

    Args:
        folder: the export folder.
        pretrained: load ``encoder.pt``; False gives the same architecture from random
            initialisation (the baseline of a pretraining comparison).
        seed: seed of the random initialisation (``pretrained=False``).
    """
    spec = read_encoder_spec(folder)
    if seed is not None:
        torch.manual_seed(seed)
    net = build_encoder(spec["class"], spec["kwargs"])
    if pretrained:
        weights = Path(folder) / keys.ENCODER_WEIGHTS
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:
            raise InputError(weights, f"unreadable encoder weights ({type(err).__name__})") from None
        net.load_state_dict(state, strict=True)
    return ExportedEncoder(net=net.eval(), spec=spec)


@torch.no_grad()
def encode_items(encode: Callable[[Tensor], Tensor], items: Tensor, batch: int = ITEM_BATCH, device: torch.device | str | None = None) -> Tensor:
    """``encode`` over ``items`` ``(N, C, *size)`` in batches (moved to ``device`` where given): ``(N, F)`` on the CPU."""
    out = [encode(items[i : i + batch].to(device) if device is not None else items[i : i + batch]).detach().float().flatten(1).cpu() for i in range(0, len(items), batch)]
    return torch.cat(out)


def probabilities(scores: Tensor) -> Tensor:
    """Class probabilities ``(B, K)`` from a classifier's output: softmax of logits (rows of probabilities stay as they are)."""
    if bool(((scores >= 0) & (scores <= 1)).all()) and torch.allclose(scores.sum(1), torch.ones_like(scores[:, 0]), atol=1e-4):
        return scores
    return torch.softmax(scores, dim=1)
