"""How good is a CT <-> MR translation: MAE in the body, PSNR, SSIM, and a linear baseline.

Evaluated on held-out *paired* subjects (the same anatomy in CT and MR), whole volumes:

- ``mae_hu`` (MR -> CT): mean absolute error in Hounsfield units inside the body mask.
- ``mae``: the same in the target's normalised units ([-1, 1]: the CT window, or the
  ground-truth MR's own percentiles), for both directions.
- ``psnr`` and ``ssim``: MONAI's :class:`~monai.metrics.PSNRMetric` and
  :class:`~monai.metrics.SSIMMetric` on the normalised volumes (data range 2).

The body mask is the ground-truth CT above ``BODY_THRESHOLD_HU`` with its holes filled,
the usual choice for synthetic-CT evaluation (e.g. Spadea et al. 2021, "Deep learning
based synthetic-CT generation in radiotherapy and PET: a review", Med. Phys.).

**Linear baselines** map the input's normalised intensities to the target's with one
``y = a x + b`` per direction, fitted by least squares on the evaluated volumes
themselves (an oracle fit: no global linear map does better on them), clipped to [-1, 1]:

- ``baseline``: fitted over every voxel and applied to every voxel, the plain global
  contrast change.
- ``baseline_body``: fitted over the body voxels only and applied there; outside the
  body it predicts background (-1: air in CT, no signal in MR). It borrows the
  ground-truth body mask, so it is stronger than any intensity map could be alone.

A translation model that does not beat them has learned nothing beyond a contrast change.
Evaluating a model with these measures is :mod:`udl_med.evaluation.translation`.
"""

from __future__ import annotations

import torch
from torch import Tensor

BODY_THRESHOLD_HU = -500.0
DATA_RANGE = 2.0  # normalised images live in [-1, 1]


# --- pure functions ------------------------------------------------------------------


def body_mask(ct_hu: Tensor, threshold: float = BODY_THRESHOLD_HU) -> Tensor:
    """Boolean body mask of a CT ``(*spatial)`` in HU: above ``threshold``, holes filled.

    Holes are filled slice by slice across the last axis as well as in 3D, so air
    inside the body (lungs, bowel gas) counts even where it reaches the volume's ends.
    """
    from scipy.ndimage import binary_fill_holes  # lazy: SciPy is slow to import; only this path needs it

    mask = binary_fill_holes((ct_hu > threshold).cpu().numpy())
    if mask.ndim == 3:
        for k in range(mask.shape[2]):
            mask[:, :, k] = binary_fill_holes(mask[:, :, k])
    return torch.from_numpy(mask)


def masked_mae(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """Mean ``|pred - target|`` over the voxels where ``mask`` is true (float64).

    Raises:
        ValueError: shapes differ, or the mask is empty.
    """
    if pred.shape != target.shape or pred.shape != mask.shape:
        raise ValueError(f"shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}, mask {tuple(mask.shape)}")
    n = int(mask.sum())
    if n == 0:
        raise ValueError("the mask is empty")
    diff = (pred.double() - target.double()).abs()
    return float(diff[mask.bool()].sum() / n)


def _batched(x: Tensor) -> Tensor:
    return x.reshape(1, 1, *x.shape).double()  # (*spatial) -> (1, 1, *spatial)


def psnr(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> float:
    """Peak signal-to-noise ratio of two images ``(*spatial)`` (MONAI's PSNRMetric), in dB."""
    from monai.metrics import PSNRMetric  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    return float(PSNRMetric(max_val=data_range)(_batched(pred), _batched(target)).mean())


def ssim(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> float:
    """Structural similarity of two images ``(*spatial)`` (MONAI's SSIMMetric, Gaussian window).

    The window is 11 voxels, or the smallest odd size that fits a thin axis.
    """
    from monai.metrics import SSIMMetric  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    smallest = min(pred.shape)
    win = 11 if smallest >= 11 else max(3, smallest - (1 - smallest % 2))
    metric = SSIMMetric(spatial_dims=pred.ndim, data_range=data_range, win_size=win)
    return float(metric(_batched(pred), _batched(target)).mean())


def linear_fit(inputs: list[Tensor], targets: list[Tensor], masks: list[Tensor]) -> tuple[float, float]:
    """Least-squares ``(a, b)`` of ``target ~ a * input + b`` over all masked voxels (float64)."""
    sx = sy = sxx = sxy = n = 0.0
    for x, y, m in zip(inputs, targets, masks):
        xv, yv = x[m.bool()].double(), y[m.bool()].double()
        sx, sy = sx + float(xv.sum()), sy + float(yv.sum())
        sxx, sxy = sxx + float((xv * xv).sum()), sxy + float((xv * yv).sum())
        n += xv.numel()
    if n == 0:
        raise ValueError("no voxels to fit")
    var = sxx - sx * sx / n
    a = (sxy - sx * sy / n) / var if var > 1e-12 else 0.0
    return a, (sy - a * sx) / n


def linear_baseline(x: Tensor, a: float, b: float, mask: Tensor | None = None) -> Tensor:
    """A baseline's prediction: ``a x + b`` clipped to [-1, 1]; with ``mask``, background (-1) outside it."""
    y = (a * x.double() + b).clamp(-1, 1)
    if mask is None:
        return y
    return torch.where(mask.bool(), y, torch.full_like(y, -1.0))


def translation_metrics(pred: Tensor, target: Tensor, mask: Tensor, target_modality: str, ct_window: tuple[float, float]) -> dict[str, float]:
    """Metrics of one translated volume, both ``(*spatial)`` in normalised units [-1, 1].

    Returns ``mae`` (normalised, in the body), ``psnr``, ``ssim`` and, for a CT target,
    ``mae_hu`` (the window maps back linearly: HU = (x + 1) / 2 * width + low).
    """
    out = {"mae": masked_mae(pred, target, mask), "psnr": psnr(pred, target), "ssim": ssim(pred, target)}
    if target_modality == "CT":
        out["mae_hu"] = out["mae"] * (ct_window[1] - ct_window[0]) / 2.0
    return out
