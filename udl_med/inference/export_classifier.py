"""``udl-med export MODEL OUT --format classifier``: a trained classifier as a stock MONAI network.

Writes two files into the folder ``OUT`` (like ``--format encoder``):

- ``classifier.json``: ``{"class": "monai.networks.nets.<Name>", "kwargs": {...}}``
  (``Classifier`` for convolutional discriminators, ``FullyConnectedNet`` for MLPs),
  ``num_classes``, ``output: "logits"`` (apply a softmax over dim 1 for the class
  probabilities), ``input`` (spatial dims, channels, item size, the normalisation of the
  run, and how scans are cut into items and pooled: see :mod:`udl_med.inference.classify`),
  and ``method``, ``source``;
- ``classifier.pt``: its state dict, which loads with ``strict=True`` and
  ``torch.load(..., weights_only=True)``.

The softmax of the exported network's output equals ``udl-med classify``'s item
probabilities (the K+1 discriminator's noise layers are training-only, see
:mod:`udl_med.nets.kplus1`). A MONAI pipeline loads it without udl-med::

    import json, torch, monai.networks.nets as nets
    spec = json.load(open("OUT/classifier.json"))
    net = getattr(nets, spec["class"].rsplit(".", 1)[1])(**spec["kwargs"])
    net.load_state_dict(torch.load("OUT/classifier.pt", weights_only=True), strict=True)
    probabilities = torch.softmax(net.eval()(x), dim=1)   # x: (B, C, *image_size) in [-1, 1]

A K+1 ensemble (``model.ensemble: M``) exports ``members: M`` and its M networks' weights
under ``members.<i>.``: the keys of :class:`udl_med.nets.ensemble.SoftmaxAverage` over M
such networks (``load_classifier`` builds it), whose output's softmax is the mean of the
members' softmaxes (``output: "log_probabilities"``). Without udl-med::

    nets = [getattr(monai.networks.nets, name)(**spec["kwargs"]) for _ in range(spec["members"])]
    for i, n in enumerate(nets):
        n.load_state_dict({k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"members.{i}.")}, strict=True)
    probabilities = torch.stack([torch.softmax(n.eval()(x), dim=1) for n in nets]).mean(0)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from udl_med import keys
from udl_med.errors import InputError, UserError
from udl_med.inference.export_encoder import INPUT_KEYS, build_encoder, write_network_export
from udl_med.nets.ensemble import SoftmaxAverage

log = logging.getLogger(__name__)

POOLING = "mean of the item probabilities (foreground slices or patches) per scan"


def export_classifier(loaded: Any, out: Path) -> dict[str, Any]:
    """Write ``classifier.json`` and ``classifier.pt`` for a loaded model that can classify.

    Returns:
        ``{"out", "classifier_json", "classifier_weights", "class", "num_classes", "n_parameters"}``.

    Raises:
        UserError: the method has no exportable classifier.
    """
    method = loaded.method
    if not hasattr(method, "export_classifier"):
        raise UserError(f"{loaded.source}: method {method.name!r} has no exportable classifier")
    class_path, kwargs, state = method.export_classifier()
    members = int(getattr(method, "classifier_members", 1))
    net = _build(class_path, kwargs, members)
    net.load_state_dict(state, strict=True)  # what a downstream user will do
    net.eval()
    spec = loaded.data_spec
    with torch.no_grad():
        shape = (spec.in_channels, *spec.image_size)
        num_classes = int(net(torch.zeros(1, *shape)).shape[1])
    data = loaded.config.get("data", {})
    document = {
        "class": class_path,
        "kwargs": kwargs,
        "num_classes": num_classes,
        "output": "logits" if members == 1 else "log_probabilities",
        "probabilities": "softmax over dim 1" if members == 1 else "the mean over members of softmax(member(x), dim 1)",
        **({"members": members} if members > 1 else {}),
        "input": {
            "spatial_dims": spec.spatial_dims,
            "in_channels": spec.in_channels,
            "image_size": list(spec.image_size),
            "intensity_range": [-1.0, 1.0],
            **{k: data[k] for k in INPUT_KEYS if k in data and data[k] is not None},
            "pooling": POOLING,
        },
        "method": method.name,
        "source": str(loaded.source),
    }
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    json_path, weights_path = write_network_export(out, keys.CLASSIFIER_JSON, keys.CLASSIFIER_WEIGHTS, state, document)
    log.info("exported the %s classifier of %s to %s", class_path, loaded.source, out)
    return {
        "out": str(out),
        "classifier_json": str(json_path),
        "classifier_weights": str(weights_path),
        "class": class_path,
        "num_classes": num_classes,
        "n_parameters": sum(p.numel() for p in net.parameters()),
    }


def load_classifier(folder: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The exported MONAI classifier (eval mode, weights loaded strictly; an ensemble's :class:`SoftmaxAverage`) and its ``classifier.json``."""
    folder = Path(folder)
    json_path = folder / keys.CLASSIFIER_JSON
    if not json_path.is_file():
        raise InputError(folder, f"no {keys.CLASSIFIER_JSON}; is this a folder written by `udl-med export --format classifier`?")
    try:
        spec = json.loads(json_path.read_text())
        state = torch.load(folder / keys.CLASSIFIER_WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(folder, f"unreadable classifier export ({type(err).__name__})") from None
    net = _build(spec["class"], spec["kwargs"], int(spec.get("members", 1)))
    net.load_state_dict(state, strict=True)
    return net.eval(), spec


def _build(class_path: str, kwargs: dict[str, Any], members: int) -> torch.nn.Module:
    """The MONAI network, or a :class:`SoftmaxAverage` of ``members`` of them."""
    if members == 1:
        return build_encoder(class_path, kwargs)
    return SoftmaxAverage([build_encoder(class_path, kwargs) for _ in range(members)])
