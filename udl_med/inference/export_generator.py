"""``udl-med export MODEL OUT --format generator``: a GAN's generator as TorchScript, with its latent spec.

Writes::

    OUT/generator.ts      torch.jit.trace of G in eval mode: forward(z) or forward(z, labels)
                          -> images (B, C, *size) in [-1, 1] (points: (B, D)); checked
                          against the eager network at two batch sizes
    OUT/generator.json    the latent spec and what the output means (below)

``generator.json``: ``inputs.z`` (shape ``[B, latent_dim]``, float32, and how to draw
it: ``N(0, I)``, or for a learned mixture latent (DeLiGAN) ``means[c] + stds[c] * eps``
with ``c`` uniform over the components, whose ``means`` and ``stds`` it lists);
``inputs.labels`` for conditional models (int64 ``[B]``, ``num_classes``); ``output``
(shape, range, and the map to physical units: the CT window in HU, or the MR output
range); the training ``geometry`` (spacing, direction, slice axis, modality). Loading
needs torch alone::

    import json, torch
    g = torch.jit.load("OUT/generator.ts")
    spec = json.load(open("OUT/generator.json"))
    images = g(torch.randn(4, spec["inputs"]["z"]["shape"][1]))   # (4, C, *size) in [-1, 1]

A TorchScript file is code: load it only from a source you trust. LAPGAN and the
two-stage GAN draw noise at every level, so they have no single latent: ``sample`` or
the run's MLflow model samples them.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from udl_med.errors import UserError
from udl_med.inference.translation_setup import MR_OUTPUT_RANGE
from udl_med.io_utils import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

GENERATOR_FILE = "generator.ts"
SPEC_FILE = "generator.json"


class _Generate(nn.Module):
    """``G(z[, labels])`` as ``sample`` runs it: eval mode, images clamped to [-1, 1]."""

    def __init__(self, generator: nn.Module, clamp: bool) -> None:
        super().__init__()
        self.generator = generator
        self.clamp = clamp

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        out = self.generator(z, labels).float()
        return out.clamp(-1.0, 1.0) if self.clamp else out


def _latent_spec(method: Any) -> dict[str, Any]:
    config = method.config
    z: dict[str, Any] = {"shape": [None, int(config.latent_dim)], "dtype": "float32"}
    if config.latent_mixture is None:
        z["distribution"] = "normal"
        z["draw"] = "torch.randn(B, latent_dim)"
    else:
        latent = method.prior
        z["distribution"] = "mixture"
        z["draw"] = "c = torch.randint(len(means), (B,)); z = means[c] + stds[c] * torch.randn(B, latent_dim)"
        z["means"] = latent.means.detach().cpu().tolist()
        z["stds"] = latent.log_std.detach().exp().cpu().tolist()
    inputs: dict[str, Any] = {"z": z}
    if method.num_classes:
        inputs["labels"] = {"shape": [None], "dtype": "int64", "num_classes": int(method.num_classes)}
    return inputs


def _output_spec(loaded: Any, shape: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"shape": shape, "range": [-1.0, 1.0]}
    kept = loaded.data_spec.geometry
    if kept is None:
        return out
    if kept.modality == "CT":
        out["to_physical"] = {"unit": "HU", "from": [-1.0, 1.0], "to": list(kept.ct_window)}
    else:
        out["to_physical"] = {"unit": "arbitrary (MR)", "from": [-1.0, 1.0], "to": list(MR_OUTPUT_RANGE)}
    return out


def export_generator(loaded: Any, out: Path) -> dict[str, Any]:
    """Write ``OUT/generator.ts`` and ``OUT/generator.json`` (see the module docstring).

    Raises:
        UserError: the model is not a ``gan`` (no single latent to export).
    """
    method = loaded.method
    if method.name != "gan" or not hasattr(method, "prior"):
        raise UserError(
            f"{loaded.source}: method {method.name!r} has no single-latent generator to export "
            "(--format generator exports gan models; sample it, or load its MLflow model)"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    method = method.cpu().eval()
    module = _Generate(method.generator, clamp=not method.points).eval()
    latent_dim = int(method.config.latent_dim)
    torch.manual_seed(0)

    def example(b: int) -> tuple[Tensor, ...]:
        z = torch.randn(b, latent_dim)
        return (z, torch.arange(b) % method.num_classes) if method.num_classes else (z,)

    with torch.no_grad(), warnings.catch_warnings():
        # G's input checks (z's shape, the labels' range) read tensors as Python values: the
        # trace keeps no check, which is all they would do; batch sizes are checked below
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(module, example(2), check_trace=False)
        for b in (2, 5):  # a batch size other than the traced one too
            args = example(b)
            if not torch.allclose(traced(*args), module(*args), atol=1e-5):
                raise RuntimeError(f"the TorchScript generator disagrees with the eager one at batch size {b}")
        shape = [None, *list(module(*example(1)).shape[1:])]
    path = out / GENERATOR_FILE
    atomic_write(path, lambda tmp: traced.save(str(tmp)))
    kept = loaded.data_spec.geometry
    spec = {
        "method": method.name,
        "source": loaded.source,
        "format": "torchscript",
        "file": GENERATOR_FILE,
        "call": "generator(z, labels)" if method.num_classes else "generator(z)",
        "inputs": _latent_spec(method),
        "output": _output_spec(loaded, shape),
        "geometry": None if kept is None else {
            "spacing": list(kept.sample_spacing), "scan_spacing": list(kept.spacing), "direction": list(kept.direction), "slice_axis": kept.slice_axis, "modality": kept.modality,
        },
    }  # fmt: skip
    atomic_write_text(out / SPEC_FILE, json.dumps(spec, indent=2))
    log.info("wrote the TorchScript generator of %s to %s", loaded.source, out)
    return {"format": "generator", "out": str(out), "files": [str(path), str(out / SPEC_FILE)], "latent_dim": latent_dim}
