"""``udl-med latent MODEL DATA --out DIR [--compare RUN...]``: the picture of a model's latent space.

Encodes a labeled manifest with any model that has an encoder (VAE, the autoencoder
family, DBN) and draws the codes coloured by class: the codes themselves for a
2-dimensional latent, else their first two principal axes. Next to the picture, the
numbers that say what it shows (:mod:`udl_med.metrics.latent`):

- ``kl_to_prior``: KL of a Gaussian fit of the aggregate posterior to ``N(0, I)`` (for
  a VAE the fit adds the mean posterior variance; other encoders give points), in nats;
- ``silhouette``: class separation of the codes (scikit-learn), in [-1, 1];
- ``recon_mse``: mean squared error of the reconstructions on the [-1, 1] scale, and
  ``mean_image_mse`` the error of predicting every item by the items' mean image;
- ``fid_prior``: FID of ``n_prior`` samples of the prior (models that sample) against
  the encoded items, with the seeded random extractor (:mod:`udl_med.metrics.extractors.random_net`).

The items are those of the probe (:func:`udl_med.evaluation.probe_items.probe_items`):
liver-centred crops of the model's item size where label maps lie beside the images
(``roi: auto``), so every item shows its class; images of another modality than the
model's training data are left out. Writes ``DIR/latent.png`` (one panel per model,
``--compare`` adds panels), ``DIR/latent.json`` and ``DIR/codes_<i>.npz`` (``codes``,
``labels``, ``subjects``, and ``variances`` for a VAE).

The lecture's three VAE pictures (after J. Jordan): reconstruction only gives separated
clusters far from the prior; KL only puts every code on the prior and describes nothing;
both give codes near the prior with smooth transitions between classes
(``configs/vae2d-latent-{recon,kl,both}.yaml``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from udl_med.errors import InputError, UserError
from udl_med.data.manifest import list_images, write_manifest
from udl_med.engine.model_io import load_model
from udl_med.engine.sample_eval import draw_samples
from udl_med.evaluation.latent_figure import Panel, save_panels
from udl_med.evaluation.probe_items import probe_items
from udl_med.inference.encode import save_npz
from udl_med.methods.base import Capability
from udl_med.metrics.compare import compare_stats, tensor_statistics
from udl_med.metrics.extractors import build_extractor
from udl_med.metrics.latent import aggregate_kl, project_2d, silhouette
from udl_med.io_utils import atomic_write_text

log = logging.getLogger(__name__)

ENCODE_BATCH = 64
DEFAULT_PRIOR_SAMPLES = 256
PRIOR_SEED = 20_231


@runtime_checkable
class PosteriorEncoder(Protocol):
    """A method whose encoder gives a Gaussian posterior (the VAE)."""
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]: ...


def _items(loaded: Any, data: str | Path, roi: str) -> Any:
    """The model's probe items of ``data``, of the run's modality when it has one."""
    spec = loaded.run_config.data.model_dump(mode="json")
    modality = spec.get("modality")
    records = list_images(data)
    if not records:
        raise InputError(data, "no images found")
    if modality and any(r.modality not in (None, modality) for r in records):
        kept = [r for r in records if r.modality in (None, modality)]
        if not kept:
            raise InputError(data, f"no {modality} images (the model was trained on {modality})")
        with tempfile.TemporaryDirectory() as tmp:
            manifest = write_manifest(Path(tmp) / "manifest.csv", [{"image": str(r.path.resolve()), "label": r.label, "modality": r.modality, "subject": r.subject, "split": r.split} for r in kept])
            return probe_items(manifest, spec, roi=roi)
    return probe_items(data, spec, roi=roi)


@torch.no_grad()
def encode_codes(method: Any, items: Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes ``(N, D)`` of ``items`` and, for a Gaussian posterior, its variances ``(N, D)`` (else None)."""
    codes, variances = [], []
    for batch in items.split(ENCODE_BATCH):
        if isinstance(method, PosteriorEncoder):
            mu, logvar = method.posterior(batch)
            codes.append(mu.float().cpu())
            variances.append(logvar.float().exp().cpu())
        else:
            codes.append(method.encode(batch).float().flatten(1).cpu())
    return torch.cat(codes).numpy(), (torch.cat(variances).numpy() if variances else None)


@torch.no_grad()
def reconstruction_errors(method: Any, items: Tensor) -> tuple[float | None, float]:
    """Mean squared reconstruction error (None for a model that does not reconstruct) and the mean image's."""
    mean_image = ((items - items.mean(0, keepdim=True)) ** 2).mean()
    reconstruct = getattr(method, "reconstruct", None)
    if reconstruct is None:
        return None, float(mean_image)
    total = sum(float(((reconstruct(b).float().cpu() - b) ** 2).sum()) for b in items.split(ENCODE_BATCH))
    return total / items.numel(), float(mean_image)


def prior_fid(method: Any, items: Tensor, spatial_dims: int, n: int, extractor: str = "random") -> float | None:
    """FID of ``n`` prior samples against ``items`` (None for a model that does not sample)."""
    if Capability.SAMPLE not in method.capabilities or n < 2:
        return None
    net = build_extractor(extractor, spatial_dims)
    layout = f"{spatial_dims}d"
    real = tensor_statistics(items.clamp(-1, 1), net, layout=layout)
    fake = tensor_statistics(draw_samples(method, n, seed=PRIOR_SEED).clamp(-1, 1), net, layout=layout)
    return float(compare_stats(real, fake, bootstrap=0)["fid"])


def describe(model: str | Path, data: str | Path, roi: str = "auto", n_prior: int = DEFAULT_PRIOR_SAMPLES, extractor: str = "random") -> dict[str, Any]:
    """Codes and figures of one model on ``data`` (see the module docstring); the arrays under ``"arrays"``.

    Raises:
        UserError: a model without an encoder.
        InputError: data without labels or images.
    """

    loaded = load_model(model)
    method = loaded.method
    if Capability.ENCODE not in method.capabilities:
        raise UserError(f"{loaded.source}: method {method.name!r} has no encoder; the latent picture needs one (VAE, autoencoders, DBN)")
    items = _items(loaded, data, roi)
    x = items.items.float()
    codes, variances = encode_codes(method, x)
    xy, view = project_2d(codes)
    recon, mean_image = reconstruction_errors(method, x)
    run_name = (loaded.config.get("tracking") or {}).get("run_name")
    figures = {
        "model": str(model),
        "name": run_name or _folder_name(model),
        "method": method.name,
        "latent_dim": int(codes.shape[1]),
        "view": view,
        "n_items": int(len(codes)),
        "classes": sorted(int(c) for c in np.unique(items.labels)),
        "kl_to_prior": aggregate_kl(codes, variances),
        "silhouette": silhouette(codes, items.labels),
        "recon_mse": recon,
        "mean_image_mse": mean_image,
        "fid_prior": prior_fid(method, x, loaded.data_spec.spatial_dims, n_prior, extractor),
    }
    arrays = {"codes": codes, "labels": items.labels, "subjects": items.subjects.astype(str), "xy": xy}
    if variances is not None:
        arrays["variances"] = variances
    return {**figures, "arrays": arrays}


def _folder_name(model: str | Path) -> str:
    """A run's name from its model folder: ``runs/NAME/model`` -> NAME."""
    path = Path(str(model))
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def latent_picture(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    compare: Sequence[str | Path] = (),
    roi: str = "auto",
    n_prior: int = DEFAULT_PRIOR_SAMPLES,
    extractor: str = "random",
    class_names: Sequence[str] | str | None = None,
) -> dict[str, Any]:
    """Draw the latent space of ``model`` (and of every ``compare`` run beside it) on ``data``.

    ``class_names`` name the labels in the legend (e.g. the phantoms' ``none, hypo, hyper``,
    a list or one comma-separated string); without them the legend shows the numbers.

    Returns:
        ``{"out", "figure", "runs": [{model, name, method, latent_dim, view, n_items,
        classes, kl_to_prior, silhouette, recon_mse, mean_image_mse, fid_prior, codes}]}``.

    Raises:
        UserError: a model without an encoder.
        InputError: data without labels or images.
    """

    if isinstance(class_names, str):
        class_names = [n.strip() for n in class_names.split(",")]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, panels = [], []
    for i, source in enumerate([model, *compare]):
        described = describe(source, data, roi=roi, n_prior=n_prior, extractor=extractor)
        arrays = described.pop("arrays")
        codes_file = out / f"codes_{i}.npz"
        save_npz(codes_file, arrays)
        described["codes"] = str(codes_file)
        runs.append(described)
        panels.append(
            Panel(
                xy=arrays["xy"],
                labels=arrays["labels"],
                lines=(
                    f"{described['name']} ({described['method']}, {described['latent_dim']}-D, {described['view']})",
                    f"KL to prior {_fmt(described['kl_to_prior'])}  silhouette {_fmt(described['silhouette'])}",
                    f"recon MSE {_fmt(described['recon_mse'])} (mean image {_fmt(described['mean_image_mse'])})  FID prior {_fmt(described['fid_prior'])}",
                ),
            )
        )
    figure = save_panels(panels, out / "latent.png", class_names=class_names)
    report = {"out": str(out), "figure": str(figure), "runs": runs}
    atomic_write_text(out / "latent.json", json.dumps(report, indent=2))
    log.info("latent picture of %d model(s) on %s: %s", len(runs), data, figure)
    return report


__all__ = ["PosteriorEncoder", "describe", "encode_codes", "latent_picture", "prior_fid", "reconstruction_errors"]
