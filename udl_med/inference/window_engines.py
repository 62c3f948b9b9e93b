"""Running a translation network over a whole volume: slice by slice (2D / 2.5D) or in 3D windows.

Both engines take the volume and one :class:`WindowJob` (the network, the normalisation
in and out, the training setup, the device) and return the translated volume in the
target's physical units, with the input's shape.

Memory: a 2D model holds the input, the output and one chunk of slices (about
``SLICE_PIXELS`` pixels) at a time. A 3D model holds the normalised input, the output
and MONAI's blending buffers (about four volumes of float32) on the CPU, with only the
windows on the accelerator. Windows are batched ``WINDOW_VOXELS`` voxels at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from monai.data import MetaTensor
from torch import Tensor
from tqdm import tqdm

from udl_med.data.normalize import denormalize
from udl_med.errors import InputError
from udl_med.io_utils import progress_disabled
from udl_med.inference.translation_setup import SOURCE, TARGET, TranslationSetup, input_params, output_params, to_unit

SLICE_PIXELS = 2**20  # pixels per chunk of slices (2D models): 4 slices of 512 x 512
SW_OVERLAP = 0.25
WINDOW_VOXELS = 2**17  # voxels per forward pass: 4 windows of 32^3, 32 of 64 x 64 (larger batches gain nothing on CPU)

__all__ = ["SLICE_PIXELS", "SW_OVERLAP", "WINDOW_VOXELS", "WindowJob", "translate_slices", "translate_patches", "translate_image", "windows_per_batch"]


@dataclass(frozen=True)
class WindowJob:
    """One volume's translation: the network and how to normalise in and map back."""

    predict: Callable[[Tensor], Tensor]  # normalised (B, C, *roi) -> (B, C', *roi)
    params_in: dict[str, Any]
    params_out: dict[str, Any]
    setup: TranslationSetup
    device: torch.device
    progress: bool = False


def windows_per_batch(roi_size: tuple[int, ...]) -> int:
    """Windows per forward pass: about ``WINDOW_VOXELS`` voxels, so small windows batch well."""
    return max(1, WINDOW_VOXELS // max(1, math.prod(roi_size)))


def _windowed(x: Tensor, job: WindowJob, progress: bool = False) -> Tensor:
    """MONAI sliding-window inference of ``x`` ``(B, C, *spatial)`` in windows of the training size.

    Windows of the training size keep instance-norm statistics as in training; Gaussian
    blending hides the seams. Results are gathered on the CPU.
    """
    from monai.inferers import sliding_window_inference  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    with torch.no_grad():
        y = sliding_window_inference(
            x,
            roi_size=job.setup.roi_size,
            sw_batch_size=windows_per_batch(job.setup.roi_size),
            predictor=job.predict,
            overlap=SW_OVERLAP,
            mode="gaussian",
            padding_mode="constant",
            cval=-1.0,  # background, as training pads
            sw_device=job.device,
            device="cpu",
            progress=progress,
        )
    return y.as_tensor() if isinstance(y, MetaTensor) else y


def translate_slices(volume: Tensor, job: WindowJob) -> Tensor:
    """Run a 2D / 2.5D model over every slice of ``volume`` ``(X, Y[, Z])``; same shape, output units."""
    setup = job.setup
    flat_image = volume.ndim == 2  # a 2D image is one slice
    axis = 2 if flat_image else setup.slice_axis
    if flat_image:
        volume = volume[..., None]
    slices = volume.movedim(axis, 0)  # (S, P, Q), a view
    n, c = slices.shape[0], setup.context
    out = torch.empty(slices.shape, dtype=torch.float32)
    chunk = max(1, min(n, SLICE_PIXELS // max(1, slices.shape[1] * slices.shape[2])))
    for s0 in tqdm(range(0, n, chunk), desc="translate", unit="chunk", disable=progress_disabled(not job.progress), leave=False):
        s1 = min(n, s0 + chunk)
        idx = torch.arange(s0 - c, s1 + c).clamp_(0, n - 1)
        block = to_unit(slices.index_select(0, idx), job.params_in)  # (s1 - s0 + 2c, P, Q)
        x = block.unfold(0, 2 * c + 1, 1).permute(0, 3, 1, 2) if c else block[:, None]  # (B, 2c + 1, P, Q)
        y = _windowed(x.contiguous(), job)  # (B, C, P, Q)
        y = y[:, y.shape[1] // 2] if y.shape[1] > 1 else y[:, 0]  # the centre channel of 2.5D outputs
        out[s0:s1] = denormalize(y.float().cpu(), job.params_out)
    out = out.movedim(0, axis)
    return out[..., 0] if flat_image else out


def translate_patches(volume: Tensor, job: WindowJob) -> Tensor:
    """Run a 3D model over ``volume`` ``(X, Y, Z)`` with MONAI sliding-window inference, Gaussian blending."""
    x = torch.empty((1, 1, *volume.shape), dtype=torch.float32)
    for k in range(0, volume.shape[0], 16):  # normalise in slabs: no float64 copy of the whole volume
        x[0, 0, k : k + 16] = to_unit(volume[k : k + 16], job.params_in)
    y = _windowed(x, job, job.progress)
    del x
    out = y[0, 0]
    for k in range(0, out.shape[0], 16):
        out[k : k + 16] = denormalize(out[k : k + 16], job.params_out)
    return out


def translate_image(method: Any, image: MetaTensor, direction: str, setup: TranslationSetup, progress: bool = True) -> MetaTensor:
    """Translate one image as :func:`~udl_med.data.io.read_image` returns it.

    Args:
        method: a trained translation model (``method.translate(x, direction)``), eval mode.
        image: ``(1, X, Y[, Z])`` in physical units with its geometry in ``meta``.
        direction: ``ct2mr`` or ``mr2ct``.
        setup: how the model was trained (:meth:`TranslationSetup.from_config`).
        progress: show a progress bar.

    Returns:
        ``(1, X, Y[, Z])`` float32 in the target's units (CT in HU), with the input's
        affine and meta (geometry, DICOM patient/study) and the target ``modality``.

    Raises:
        InputError: a 2D image given to a 3D model.
    """
    volume = image.as_tensor()[0] if isinstance(image, MetaTensor) else torch.as_tensor(image)[0]
    target = TARGET[direction]
    job = WindowJob(
        predict=lambda x: method.translate(x, direction),
        params_in=input_params(volume, SOURCE[direction], setup),
        params_out=output_params(target, setup),
        setup=setup,
        device=next(method.parameters()).device,
        progress=progress,
    )
    if setup.layout == "3d":
        if volume.ndim != 3:
            raise InputError(image.meta.get("filename_or_obj", "<image>"), "a 3D model needs a volume, got a 2D image")
        out = translate_patches(volume, job)
    else:
        out = translate_slices(volume, job)
    meta = dict(getattr(image, "meta", {}) or {})
    meta["modality"] = target
    affine = meta.pop("affine", None)
    return MetaTensor(out[None], affine=affine, meta=meta)
