"""``udl-med export MODEL OUT --format bundle|torchscript`` for translation models.

**bundle**: a MONAI bundle folder that runs with MONAI::

    OUT/configs/metadata.json     what goes in and out (MONAI's network_data_format)
    OUT/configs/inference.json    read, normalise, slice-by-slice or sliding-window
                                  inference, map back to HU / MR units, save NIfTI
    OUT/models/<direction>.pt     generator state dicts (loaded with weights_only=True)
    OUT/docs/README.md

    python -m monai.bundle run --config_file OUT/configs/inference.json \\
        --meta_file OUT/configs/metadata.json --bundle_root OUT \\
        --input scan.nii.gz --direction mr2ct --output_dir out/

The preprocessing repeats udl-med's normalisation with MONAI transforms: CT clipped to
the run's HU window and scaled to [-1, 1] (``ScaleIntensityRanged``), MR scaled by its
own percentiles (``ScaleIntensityRangePercentilesd``); the output is mapped back to HU
(CT) or to ``MR_OUTPUT_RANGE`` (MR), exactly as ``udl-med translate`` does, and saved
with the input's affine. 2D models run through ``SliceInferer``, 3D ones through
``SlidingWindowInferer`` with Gaussian blending.

Which network the bundle names: pix2pix's generator is MONAI's ``UNet`` followed by a tanh,
so its bundle builds ``torch.nn.Sequential(monai.networks.nets.UNet(...), torch.nn.Tanh())``
and ``models/<direction>.pt`` is the plain ``UNet`` state dict: it runs where only MONAI
is installed. (udl-med's wrapper only pads odd sizes to the U-Net's stride; the inferers
feed windows of the training size, which needs no padding when it is a multiple of the
stride, the check made here.) CycleGAN's ResNet generator has no MONAI class: its bundle
names ``udl_med.nets.resnet_generator.ResNetGenerator``, needs udl-med installed, and
says so in ``metadata.json`` (``required_packages_version``, ``description``) and its
``docs/README.md``.

**torchscript**: ``OUT/<direction>.ts`` per direction (``torch.jit.script`` of the
generator, checked against the eager network) and ``OUT/translator.json`` with the
normalisation the scripted networks expect. A TorchScript file is code: load it only
from a source you trust.
"""

from __future__ import annotations

import json
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from udl_med.errors import UserError
from udl_med.inference.translation_setup import DIRECTIONS, MR_OUTPUT_RANGE, SOURCE, TARGET, TranslationSetup
from udl_med.inference.window_engines import SW_OVERLAP, windows_per_batch
from udl_med.io_utils import atomic_write, atomic_write_text
from udl_med.methods.base import Capability
from udl_med.nets.resnet_generator import UNetGenerator

log = logging.getLogger(__name__)

BUNDLE_VERSION = "0.1.0"


def _check_translator(loaded: Any) -> tuple[str, ...]:
    method = loaded.method
    if Capability.TRANSLATE not in method.capabilities or not hasattr(method, "generator_spec"):
        raise UserError(f"{loaded.source}: method {method.name!r} cannot translate; bundle and torchscript export translators")
    return tuple(d for d in DIRECTIONS if d in getattr(method, "directions", DIRECTIONS))


def _normalisation(setup: TranslationSetup) -> dict[str, Any]:
    return {
        "CT": {"kind": "window", "low": setup.ct_window[0], "high": setup.ct_window[1], "unit": "HU"},
        "MR": {"kind": "percentile", "lower": setup.mr_percentiles[0], "upper": setup.mr_percentiles[1]},
        "output": {
            "CT": {"from": [-1.0, 1.0], "to": list(setup.ct_window), "unit": "HU"},
            "MR": {"from": [-1.0, 1.0], "to": list(MR_OUTPUT_RANGE), "unit": "arbitrary"},
        },
        "layout": setup.layout,
        "slice_axis": setup.slice_axis,
        "context": setup.context,
        "roi_size": list(setup.roi_size),
    }


def _preprocessing(modality: str, setup: TranslationSetup) -> dict[str, Any]:
    if modality == "CT":  # the fixed HU window, as udl_med.data.normalize
        window = {"_target_": "ScaleIntensityRanged", "a_min": setup.ct_window[0], "a_max": setup.ct_window[1]}
    else:  # per-volume robust percentiles
        window = {"_target_": "ScaleIntensityRangePercentilesd", "lower": setup.mr_percentiles[0], "upper": setup.mr_percentiles[1]}
    scale = {**window, "keys": "image", "b_min": -1.0, "b_max": 1.0, "clip": True}
    return {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            scale,
        ],
    }


def _postprocessing(modality: str, direction: str, setup: TranslationSetup) -> dict[str, Any]:
    low, high = setup.ct_window if modality == "CT" else MR_OUTPUT_RANGE
    return {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "ScaleIntensityRanged", "keys": "pred", "a_min": -1.0, "a_max": 1.0, "b_min": low, "b_max": high, "clip": False},
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@output_dir",
                "output_postfix": direction,
                "output_ext": ".nii.gz",
                "resample": False,
                "separate_folder": False,
                "output_dtype": "$np.float32",
                "print_log": False,
            },
        ],
    }


def _inferer(setup: TranslationSetup) -> dict[str, Any]:
    common = {"sw_batch_size": windows_per_batch(setup.roi_size), "overlap": SW_OVERLAP, "mode": "gaussian", "cval": -1.0}
    if setup.layout == "3d":
        return {"_target_": "SlidingWindowInferer", "roi_size": list(setup.roi_size), **common}
    # slice by slice across the training slice axis; in-plane windows of the training size
    return {"_target_": "SliceInferer", "spatial_dim": setup.slice_axis, "roi_size": list(setup.roi_size), **common}


_MONAI_UNET = "monai.networks.nets.UNet"


def _network(method: Any, direction: str, setup: TranslationSetup) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool]:
    """``(network config, state dict, needs udl-med)`` of the bundle's generator for ``direction``.

    A pix2pix U-Net whose training windows need no padding becomes MONAI's ``UNet`` plus a
    tanh (the same function on those windows, see the module docstring); anything else
    keeps udl-med's class.
    """
    gen = method.generator(direction)
    if isinstance(gen, UNetGenerator) and all(s % gen.size_divisor == 0 for s in setup.roi_size):
        unet = gen.unet
        kwargs = {
            "spatial_dims": unet.dimensions,
            "in_channels": unet.in_channels,
            "out_channels": unet.out_channels,
            "channels": list(unet.channels),
            "strides": list(unet.strides),
            "kernel_size": unet.kernel_size,
            "up_kernel_size": unet.up_kernel_size,
            "num_res_units": unet.num_res_units,
            "act": unet.act,
            "norm": unet.norm,
            "dropout": unet.dropout,
            "bias": unet.bias,
            "adn_ordering": unet.adn_ordering,
        }
        return {"_target_": _MONAI_UNET, **kwargs}, _cpu_state(unet), False
    cls_path, kwargs = method.generator_spec(direction)
    return {"_target_": cls_path, **kwargs}, _cpu_state(gen), True


def _cpu_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


def _image_format(modality: str, spatial: Any) -> dict[str, Any]:
    """A bundle's description of one input or output image: normalised patches of ``modality``."""
    return {
        "type": "image",
        "format": "hounsfield" if modality == "CT" else "magnitude",
        "modality": modality,
        "num_channels": 1,
        "spatial_shape": spatial,
        "dtype": "float32",
        "value_range": [-1, 1],
        "is_patch_data": True,
        "channel_def": {"0": "image"},
    }


def export_bundle(loaded: Any, out: Path) -> dict[str, Any]:
    """Write a MONAI bundle that translates with ``loaded``'s generators (see the module docstring).

    Raises:
        UserError: the model cannot translate, or is a 2.5D model (MONAI's
            ``SliceInferer`` feeds single slices).
    """
    directions = _check_translator(loaded)
    setup = TranslationSetup.from_config(loaded.run_config)
    if setup.layout == "2.5d":
        raise UserError(f"{loaded.source}: a 2.5D model cannot be exported as a bundle (MONAI's SliceInferer feeds one slice); use --format torchscript")
    out = Path(out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "docs").mkdir(parents=True, exist_ok=True)
    method = loaded.method
    files: list[str] = []
    networks: dict[str, Any] = {}
    needs_udl_med = False
    for d in directions:
        networks[d], state, needs = _network(method, d, setup)
        needs_udl_med = needs_udl_med or needs
        path = out / "models" / f"{d}.pt"
        atomic_write(path, lambda tmp, state=state: torch.save(state, tmp))
        files.append(str(path))
    # MONAI's UNet ends in a convolution; the tanh udl-med's wrapper adds is appended here
    network = "@network_defs[@direction]" if needs_udl_med else "torch.nn.Sequential(@network_defs[@direction], torch.nn.Tanh())"
    load_into = "@network" if needs_udl_med else "@network[0]"
    requires = {"nibabel": _version("nibabel")}
    if needs_udl_med:
        requires["udl-med"] = _version("udl_med")
    default = "mr2ct" if "mr2ct" in directions else directions[0]
    inference = {
        "bundle_root": str(out.resolve()),
        "direction": default,
        "input": "$@bundle_root + '/input.nii.gz'",
        "output_dir": "$@bundle_root + '/output'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_defs": networks,
        "network": f"${network}.to(@device).eval()",
        "model_path": "$@bundle_root + '/models/' + @direction + '.pt'",
        "preprocessing_by_source": {d: _preprocessing(SOURCE[d], setup) for d in directions},
        "postprocessing_by_target": {d: _postprocessing(TARGET[d], d, setup) for d in directions},
        "preprocessing": "$@preprocessing_by_source[@direction]",
        "postprocessing": "$@postprocessing_by_target[@direction]",
        "inferer": _inferer(setup),
        "image": "$@preprocessing({'image': @input})['image']",
        "prediction": "$@inferer(@image.unsqueeze(0).to(@device), @network)[0].cpu()",
        "initialize": [
            "$torch.set_grad_enabled(False)",
            f"${load_into}.load_state_dict(torch.load(@model_path, map_location=@device, weights_only=True))",
        ],
        "run": ["$@postprocessing({'pred': @prediction})"],
        "finalize": [],
    }
    spatial = list(setup.roi_size)
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"exported by udl-med from {loaded.source}"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": _version("numpy"),
        "required_packages_version": requires,
        "name": f"udl-med {method.name} CT/MR translation",
        "task": "CT <-> MR image-to-image translation",
        "description": (
            f"{method.name} generator(s) for {', '.join(directions)} trained with udl-med "
            f"({setup.layout} {'x'.join(map(str, setup.roi_size))} items). Run with --direction and --input. "
            + (_NEEDS_UDL_MED.format(cls=networks[default]["_target_"]) if needs_udl_med else "Needs MONAI only (the network is monai.networks.nets.UNet).")
        ),
        "authors": "udl-med",
        "copyright": "see the training data's licence",
        "data_source": str(loaded.run_config.data.source or ""),
        "data_type": "nifti (nibabel) or a DICOM series (pydicom); with itk installed also mha and nrrd",
        "intended_use": "research only; not for diagnosis",
        "udl_med": {"directions": list(directions), "default_direction": default, **_normalisation(setup), "python": platform.python_version()},
        "network_data_format": {
            "inputs": {"image": _image_format(SOURCE[default], spatial)},
            "outputs": {"pred": _image_format(TARGET[default], spatial)},
        },
    }
    atomic_write_text(out / "configs" / "inference.json", json.dumps(inference, indent=2))
    atomic_write_text(out / "configs" / "metadata.json", json.dumps(metadata, indent=2))
    atomic_write_text(out / "docs" / "README.md", _readme(method.name, directions, default, networks[default]["_target_"] if needs_udl_med else None))
    files += [str(out / "configs" / "inference.json"), str(out / "configs" / "metadata.json")]
    log.info("wrote MONAI bundle %s (%s)", out, ", ".join(directions))
    return {
        "format": "bundle",
        "out": str(out),
        "directions": list(directions),
        "default_direction": default,
        "network": networks[default]["_target_"],
        "needs_udl_med": needs_udl_med,
        "files": files,
    }


_NEEDS_UDL_MED = "Needs udl-med installed (pip install udl-med): the network {cls} is not a MONAI class."


def _readme(name: str, directions: tuple[str, ...], default: str, udl_med_class: str | None) -> str:
    needs = (
        "Needs MONAI, nibabel and fire (for `python -m monai.bundle`); the network is `monai.networks.nets.UNet` plus a tanh, "
        "so udl-med need not be installed. "
        if udl_med_class is None
        else f"Needs MONAI, nibabel, fire (for `python -m monai.bundle`) and udl-med: the network `{udl_med_class}` is not a MONAI class. "
    )
    return (
        f"# udl-med {name} translation bundle\n\n"
        f"Directions: {', '.join(directions)} (default {default}).\n\n"
        "```\npython -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\\n"
        "    --bundle_root . --input scan.nii.gz --direction " + default + " --output_dir out\n```\n\n"
        + needs
        + "Output: NIfTI with the input's affine; "
        "CT in Hounsfield units, MR on a 0..1000 scale.\n"
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "unknown"


def export_torchscript(loaded: Any, out: Path) -> dict[str, Any]:
    """Write ``OUT/<direction>.ts`` (scripted generators) and ``OUT/translator.json``.

    The scripted networks map normalised images ``(B, C, *spatial)`` in [-1, 1] to [-1, 1];
    ``translator.json`` says how to normalise and map back.

    Raises:
        UserError: the model cannot translate.
    """
    directions = _check_translator(loaded)
    setup = TranslationSetup.from_config(loaded.run_config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    method = loaded.method
    files = []
    example = torch.rand(1, loaded.data_spec.in_channels, *loaded.data_spec.image_size) * 2 - 1
    for d in directions:
        net = method.generator(d).cpu().eval()
        try:
            scripted = torch.jit.script(net)
        except Exception as err:  # scripting failed: fall back to tracing at the training size
            log.warning("torch.jit.script failed for %s (%s); tracing instead", d, err)
            scripted = torch.jit.trace(net, example)
        with torch.no_grad():
            if not torch.allclose(scripted(example), net(example), atol=1e-5):
                raise RuntimeError(f"the TorchScript {d} generator disagrees with the eager one")
        path = out / f"{d}.ts"
        atomic_write(path, lambda tmp, scripted=scripted: scripted.save(str(tmp)))
        files.append(str(path))
    info = {"method": method.name, "source": loaded.source, "directions": list(directions), **_normalisation(setup)}
    atomic_write_text(out / "translator.json", json.dumps(info, indent=2))
    files.append(str(out / "translator.json"))
    log.info("wrote TorchScript generators to %s", out)
    return {"format": "torchscript", "out": str(out), "directions": list(directions), "files": files}
