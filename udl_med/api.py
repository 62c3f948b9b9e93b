"""The Python API: what ``import udl_med`` offers (``udl_med.load_model``, ``udl_med.train``, ``udl_med.fid`` ...).

The commands and this API are two faces of the same functions: ``udl_med.fid``,
``udl_med.sample``, ``udl_med.translate`` ... are the actions of
:data:`udl_med.actions.ACTIONS` (the ``udl-med`` commands' library functions, with the
same arguments and defaults, files in and out); :func:`load_model` gives a :class:`Model`
that works on images in memory::

    import udl_med
    from udl_med.data.io import read_image

    model = udl_med.load_model("runs:/<run_id>/model")      # or a local model folder
    model.operations                                        # e.g. ('sample', 'encode')
    volumes = model.sample(4, seed=0)                       # MetaTensors in HU / MR units
    features = model.encode(read_image("scan.nii.gz"))      # (F,), one vector per scan
    mr = cyclegan.translate(read_image("ct.nii.gz"))        # MetaTensor, the input's affine

Images are ``(1, X, Y, Z)`` (or ``(1, X, Y)``) tensors in physical units (CT in HU), as
:func:`udl_med.data.io.read_image` and MONAI's ``LoadImage(ensure_channel_first=True)``
give them, or a path to one. A MONAI ``MetaTensor`` carries its geometry: it is
resampled to the model's training spacing and orientation first, and a translated image
comes back on the input's exact grid with its affine and meta
(:mod:`udl_med.inference.model_grid`). A plain tensor has no geometry and is taken to
be on the model's training grid already.
"""

from __future__ import annotations

import inspect
import tempfile
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from torch import Tensor

from udl_med.actions import ACTIONS, train_config
from udl_med.data.io import read_image
from udl_med.data.manifest import write_manifest
from udl_med.data.writers import write_image
from udl_med.engine.mlflow_model import operations
from udl_med.engine.model_io import load_model as load
from udl_med.engine.privacy import forced
from udl_med.engine.train import train as train_run
from udl_med.errors import UserError
from udl_med.inference.classify import classify_items
from udl_med.inference.encode import image_items, item_config, on_model_grid
from udl_med.inference.sample import as_volume, draw, sample_space, to_physical
from udl_med.inference.translate import resolve_direction, translate_image, translate_volume
from udl_med.inference.translator import Translator
from udl_med.nets.exported import encode_items

__all__ = ["Model", "load_model", "train", "fid", "ACTION_FUNCTIONS"]

ImageLike = Tensor | str | Path


class Model:
    """A trained udl-med model in memory: the operations its method supports, on images.

    Attributes:
        name: the method's name (``gan``, ``vae``, ``cyclegan`` ...).
        operations: what it does, of ``sample``, ``encode``, ``translate``, ``classify``.
        method: the trained :class:`~udl_med.methods.base.Method` (an ``nn.Module``, eval mode).
        config: the validated run config (:class:`~udl_med.engine.config.RunConfig`).
        geometry: the training scans' spacing and orientation
            (:class:`~udl_med.data.spec.TrainingGeometry`), None for in-memory data.
        source: what was loaded (a folder or an MLflow URI).
        device: where the network runs.

    An operation the method lacks raises :class:`~udl_med.errors.UserError` naming the
    method and what it can do.
    """

    def __init__(self, loaded: Any) -> None:
        self.loaded = loaded
        self.method = loaded.method
        self.name: str = loaded.method.name
        self.config = loaded.run_config
        self.geometry = loaded.data_spec.geometry
        self.source: str = loaded.source
        self.operations: tuple[str, ...] = operations(loaded.method)
        self._translator: Any = None

    @property
    def device(self) -> torch.device:
        """The torch device the network is on (``load_model(..., device=)``)."""
        return next(self.method.parameters()).device

    def __repr__(self) -> str:
        return f"Model({self.source!r}, method={self.name!r}, operations={self.operations})"

    def _require(self, operation: str) -> None:
        if operation not in self.operations:
            raise UserError(f"{self.source}: method {self.name!r} cannot {operation}; it can: {', '.join(self.operations) or 'nothing'}")

    def _scans(self) -> bool:
        return self.config.data.kind == "scans"

    def _modality(self, image: Tensor) -> str | None:
        found = getattr(image, "meta", {}).get("modality") if isinstance(image, MetaTensor) else None
        if found:
            return str(found)
        return self.geometry.modality if self.geometry is not None else self.config.data.modality

    # --- sample -----------------------------------------------------------------------

    def sample(self, n: int, label: int | None = None, seed: int | None = None) -> list[MetaTensor] | Tensor:
        """Draw ``n`` new images, as ``udl-med sample`` writes them.

        Args:
            n: how many (>= 1).
            label: the class to draw (conditional models).
            seed: the seed of the latent draws (the same seed, the same images); None
                draws a fresh seed.

        Returns:
            A model trained on scans: ``n`` MetaTensors ``(1, X, Y, Z)`` in physical units
            (CT in HU, MR in udl-med's MR output units) with the training spacing and
            direction (zero origin) in their affine and meta (2D models: one-slice
            volumes). A model trained on in-memory data or points: the tensor
            ``(n, C, *size)`` in [-1, 1] or ``(n, D)``.

        Raises:
            UserError: ``n < 1``, a label the model does not know, a model that cannot sample.
        """
        self._require("sample")
        if n < 1:
            raise UserError(f"n must be at least 1, got {n}")
        try:
            self.method.check_sample_label(label)
        except ValueError as err:
            raise UserError(f"{self.source}: {err}") from None
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
        with torch.no_grad():
            batch = torch.cat(list(draw(self.method, n, generator, label, self.source)))  # as `udl-med sample` draws
        if not self._scans():
            return batch
        space = sample_space(self.loaded)
        affine = torch.as_tensor(space.geometry.ras_affine(), dtype=torch.float64)
        meta = {**space.geometry.as_meta(), "modality": space.modality, "space": "RAS"}
        return [
            MetaTensor(to_physical(as_volume(x, self.loaded.data_spec.spatial_dims, space.slice_axis), space.modality, space.ct_window), affine=affine.clone(), meta=dict(meta))
            for x in batch
        ]

    # --- encode and classify: one scan -> one vector ----------------------------------

    def _items(self, x: ImageLike, resample: bool) -> Tensor:
        """The model inputs of one scan ``x``, cut as ``udl-med encode`` cuts them (after resampling)."""
        image = _as_image(x)
        kept = self.geometry if isinstance(image, MetaTensor) and _has_geometry(image) else None
        source = str(x) if isinstance(x, str | Path) else "<image>"
        prepared = on_model_grid(image, kept, resample)
        return image_items(item_config(self.config.data, source), prepared, self._modality(image)).items

    def encode(self, x: ImageLike | Tensor, resample: bool = True) -> Tensor:
        """One feature vector per scan, as ``udl-med encode`` computes it (the mean over its slices or patches).

        Args:
            x: one scan ``(1, X, Y[, Z])`` in physical units (MetaTensor, tensor or path);
                for a model trained on in-memory data, a batch of items ``(B, C, *size)``.
            resample: resample a MetaTensor to the training grid first (False: use it as
                it is; a large mismatch is refused).

        Returns:
            ``(F,)`` float32 on the CPU (in-memory models: ``(B, F)``).
        """
        self._require("encode")
        with torch.no_grad():
            if not self._scans():
                return encode_items(self.method.encode, torch.as_tensor(x).float(), device=self.device)
            return encode_items(self.method.encode, self._items(x, resample), device=self.device).mean(0)

    def classify(self, x: ImageLike | Tensor, resample: bool = True) -> Tensor:
        """Class probabilities of one scan, as ``udl-med classify`` computes them (the mean over its slices or patches).

        Args: as :meth:`encode`.

        Returns:
            ``(K,)`` probabilities on the CPU (in-memory models: ``(B, K)``).
        """
        self._require("classify")
        if not self._scans():
            return classify_items(self.method.classify, torch.as_tensor(x).float(), device=self.device)
        return classify_items(self.method.classify, self._items(x, resample), device=self.device).mean(0)

    # --- translate ----------------------------------------------------------------------

    def translate(self, x: ImageLike, direction: str | None = None, resample: bool = True, progress: bool = False) -> MetaTensor:
        """Translate one scan CT -> MR or MR -> CT, as ``udl-med translate`` does.

        Args:
            x: ``(1, X, Y[, Z])`` in physical units (CT in HU): a MetaTensor, a tensor
                (taken to be on the training grid), or a path.
            direction: ``ct2mr`` or ``mr2ct``; by default from the image's ``modality``
                meta, or the model's only direction.
            resample: resample a MetaTensor to the training grid and the result back
                (False: use it as it is; a large mismatch is refused).
            progress: show a progress bar.

        Returns:
            A MetaTensor ``(1, X, Y[, Z])`` in the target's units (CT in HU) with the
            input's affine, shape and meta, and the target ``modality``.
        """
        self._require("translate")
        translator = self._translator_module()
        image = _as_image(x)
        source = str(x) if isinstance(x, str | Path) else "<image>"
        modality = getattr(image, "meta", {}).get("modality") if isinstance(image, MetaTensor) else None
        chosen = resolve_direction(direction, modality, translator.directions, source)
        with torch.no_grad():
            if isinstance(image, MetaTensor) and _has_geometry(image):
                return translate_volume(translator, image, chosen, progress=progress, resample=resample, source=source)
            return translate_image(translator, MetaTensor(image), chosen, translator.setup, progress=progress)

    def _translator_module(self) -> Any:
        if self._translator is None:
            self._translator = Translator(self.method, self.config, self.geometry).eval()
        return self._translator


def _as_image(x: ImageLike) -> Tensor:
    """A path read (:func:`udl_med.data.io.read_image`), a tensor made channel-first float32 ``(1, *spatial)``."""
    if isinstance(x, str | Path):
        return read_image(x)
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.ndim in (3, 4) and x.shape[0] == 1:
        pass
    elif not isinstance(x, MetaTensor) and x.ndim in (2, 3):
        x = x[None]  # (X, Y[, Z]) without a channel axis
    else:
        raise UserError(f"an image must be (1, X, Y[, Z]) (channel first), got shape {tuple(x.shape)}")
    return x.float() if not isinstance(x, MetaTensor) else x.to(torch.float32)


def _has_geometry(image: MetaTensor) -> bool:
    """Whether a MetaTensor says where it lies (an affine that is not MONAI's default identity, or ITK geometry keys)."""
    meta = image.meta
    if any(k in meta for k in ("spacing", "origin", "direction", "original_affine")):
        return True
    return not torch.equal(torch.as_tensor(image.affine, dtype=torch.float64), torch.eye(image.affine.shape[-1], dtype=torch.float64))


def load_model(uri_or_path: str | Path, device: str | None = None) -> Model:
    """The trained model a folder or MLflow URI (``runs:/<id>/model``, ``models:/<name>/<version>``) names.

    Args:
        uri_or_path: a model folder written by ``udl-med train`` (``runs/<name>/model``),
            or an MLflow model URI.
        device: where the network runs (``cpu``, ``cuda``, ``cuda:1``; default: the CPU).

    Raises:
        InputError: no model there. UserError: a device this machine lacks.
    """
    return Model(load(uri_or_path, device=device))


def train(
    config: str | Path | dict[str, Any] | Any,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    privacy: str | None = None,
    datasets: tuple[Any, Any | None] | None = None,
) -> dict[str, Any]:
    """Train as ``udl-med train`` does; return its report (``run_id``, ``model_dir``, final metrics).

    Args:
        config: a config file, a shipped config's name (``udl-med configs``), a config
            dictionary or a validated :class:`~udl_med.engine.config.RunConfig`.
        overrides: ``key.path=value`` strings, as ``--set`` takes them.
        resume: continue from the run folder's last checkpoint.
        privacy: ``strict`` or ``standard`` (see the README's privacy section).
        datasets: ``(train, eval)`` torch datasets for a ``data.kind: memory`` run.
    """
    if isinstance(config, str | Path):
        if datasets is not None:
            raise UserError("datasets= needs a config dictionary or RunConfig (data.kind: memory), not a file")
        return train_config(str(config), set=list(overrides), resume=resume, privacy=privacy)

    with forced(privacy):
        return train_run(config, overrides=list(overrides), resume=resume, datasets=datasets)


def _action_function(name: str, public: str) -> Callable[..., dict[str, Any]]:
    """``udl_med.<public>``: the action ``name`` as a Python function (its required arguments positional too)."""
    action = ACTIONS[name]
    hints = _type_hints(action.function())
    required = [inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=hints.get(a.name, Any)) for a in action.args if a.required]
    optional = [p.replace(annotation=hints.get(p.name, Any)) for p in action.signature.parameters.values() if p.default is not inspect.Parameter.empty]
    signature = inspect.Signature(required + optional, return_annotation=dict[str, Any])

    def call(*args: Any, **kwargs: Any) -> dict[str, Any]:
        bound = signature.bind(*args, **kwargs)
        return action(**bound.arguments)

    call.__name__ = call.__qualname__ = public
    call.__module__ = __name__
    call.__signature__ = signature  # type: ignore[attr-defined]
    call.__annotations__ = {**{p.name: p.annotation for p in signature.parameters.values()}, "return": dict[str, Any]}
    shell = f"``udl-med {action.command}``" if action.command else f"the pipeline step ``run: {name}``"
    documented = _documented_args(action.function())
    lines = [f"{action.help[:1].upper()}{action.help[1:]}.", "", f"What {shell} runs; returns its ``--json`` report as a dictionary.", "", "Args:"]
    for a in action.args:
        text = documented.get(a.name) or (a.help + ("" if a.required or "default:" in a.help else f" (default: {a.default!r})"))
        lines.append(f"    {a.name}: {text}")
    call.__doc__ = "\n".join(lines)
    return call


def _documented_args(function: Callable[..., Any]) -> dict[str, str]:
    """``name -> text`` from the ``Args:`` section of ``function``'s docstring (continuation lines joined)."""
    found: dict[str, str] = {}
    current = None
    section = False
    for line in inspect.getdoc(function).splitlines() if function.__doc__ else []:
        stripped = line.strip()
        if stripped == "Args:":
            section = True
            continue
        if not section:
            continue
        if stripped and not line.startswith(" "):  # the next section
            break
        head, sep, rest = stripped.partition(": ")
        if line.startswith("    ") and not line.startswith("     ") and sep and head.isidentifier():
            current = head
            found[current] = rest.strip()
        elif current and stripped:
            found[current] += " " + stripped
    return found


def _type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The parameter annotations of ``function``, resolved where they can be (else as written)."""
    try:
        return typing.get_type_hints(function)
    except Exception:  # an annotation that names a type only imported for type checking
        return {k: v for k, v in getattr(function, "__annotations__", {}).items()}


# The actions offered as ``udl_med.<name>`` (name -> action), besides load_model and train.
ACTION_FUNCTIONS: dict[str, str] = {
    "fid": "fid",
    "phantoms": "phantoms",
    "sample": "sample",
    "synthesize": "synthesize",
    "encode": "encode",
    "translate": "translate",
    "classify": "classify",
    "export": "export",
    "memorization": "memorization",
    "run_pipeline": "pipeline",
}

_fid_files = _action_function("fid", "fid")
ImageSet = str | Path | Sequence[Tensor]


def fid(real: ImageSet, fake: ImageSet, **options: Any) -> dict[str, Any]:
    """FID and KID between two image sets, as ``udl-med fid`` computes them; returns its ``--json`` report.

    ``real`` and ``fake``: a folder, a manifest or saved statistics (``.npz``), or images
    in memory: a list of ``(1, X, Y[, Z])`` tensors in physical units (MetaTensors, e.g.
    from :meth:`Model.sample`, keep their geometry and ``modality`` meta), written to a
    temporary folder (NIfTI and a manifest, removed afterwards) so that they are read
    exactly as files are. The other arguments are the command's options.
    """
    with tempfile.TemporaryDirectory(prefix="udl-med-fid-") as tmp:
        return _fid_files(_as_image_set(real, Path(tmp) / "real"), _as_image_set(fake, Path(tmp) / "fake"), **options)


def _as_image_set(images: ImageSet, folder: Path) -> str | Path:
    """A folder/manifest/.npz as it is; images in memory written under ``folder`` with a manifest (its path returned)."""
    if isinstance(images, str | Path):
        return images
    if isinstance(images, Tensor) and not isinstance(images, MetaTensor) and images.ndim >= 4:
        images = list(images)  # a batch (N, 1, X, Y[, Z])
    if isinstance(images, Tensor) or not isinstance(images, Sequence) or len(images) == 0:
        raise UserError("an image set is a folder, a manifest, a .npz of statistics, or a non-empty list of (1, X, Y[, Z]) images")

    rows = []
    for i, image in enumerate(images):
        if not isinstance(image, Tensor):
            raise UserError(f"image {i} of the set is a {type(image).__name__}, not a tensor")
        image = _as_image(image)
        modality = image.meta.get("modality") if isinstance(image, MetaTensor) else None
        name = f"image_{i:05d}.nii.gz"
        write_image(image, folder / name)
        rows.append({"image": name, "modality": modality or "", "subject": f"image-{i:05d}"})
    return write_manifest(folder / "manifest.csv", rows)


fid.__signature__ = inspect.signature(_fid_files).replace(  # type: ignore[attr-defined]
    parameters=[p.replace(annotation=ImageSet) if p.name in ("real", "fake") else p for p in inspect.signature(_fid_files).parameters.values()]
)
fid.__doc__ = "\n    ".join(
    [
        (fid.__doc__ or "").rstrip(),
        "",
        *[line for line in (_fid_files.__doc__ or "").splitlines() if line.startswith(("Args:", "    "))],
        "",
        "Raises:",
        "    UserError: an empty list, or an item that is not an image tensor; bad options as the command's.",
    ]
)
for _public, _name in ACTION_FUNCTIONS.items():
    if _public != "fid":
        globals()[_public] = _action_function(_name, _public)
del _public, _name
