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
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from udl_med.errors import InputError, UserError

log = logging.getLogger(__name__)

BODY_THRESHOLD_HU = -500.0
DATA_RANGE = 2.0  # normalised images live in [-1, 1]


# --- pure functions ------------------------------------------------------------------


def body_mask(ct_hu: Tensor, threshold: float = BODY_THRESHOLD_HU) -> Tensor:
    """Boolean body mask of a CT ``(*spatial)`` in HU: above ``threshold``, holes filled.

    Holes are filled slice by slice across the last axis as well as in 3D, so air
    inside the body (lungs, bowel gas) counts even where it reaches the volume's ends.
    """
    from scipy.ndimage import binary_fill_holes

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
    from monai.metrics import PSNRMetric

    return float(PSNRMetric(max_val=data_range)(_batched(pred), _batched(target)).mean())


def ssim(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> float:
    """Structural similarity of two images ``(*spatial)`` (MONAI's SSIMMetric, Gaussian window).

    The window is 11 voxels, or the smallest odd size that fits a thin axis.
    """
    from monai.metrics import SSIMMetric

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


# --- evaluating a model on paired volumes --------------------------------------------


def paired_subjects(source: str | Path, split: str | None = "test") -> list[tuple[str, Path, Path]]:
    """``(subject, ct path, mr path)`` of every subject of ``split`` with both a CT and an MR.

    Raises:
        InputError: the source has no such pairs (a manifest needs ``subject`` and ``modality``).
    """
    from udl_med.data.io import list_images

    by_subject: dict[str, dict[str, Path]] = defaultdict(dict)
    for record in list_images(source):
        if split is not None and record.split != split:
            continue
        if record.subject and record.modality in ("CT", "MR"):
            by_subject[record.subject][record.modality] = record.path
    pairs = [(s, d["CT"], d["MR"]) for s, d in sorted(by_subject.items()) if "CT" in d and "MR" in d]
    if not pairs:
        raise InputError(source, f"no subject with both CT and MR in split {split!r} (the manifest needs subject and modality)")
    return pairs


def _normalised_pair(ct: Tensor, mr: Tensor, setup: Any) -> dict[str, Tensor]:
    from udl_med.inference.translate import input_params, to_unit

    return {"CT": to_unit(ct, input_params(ct, "CT", setup)), "MR": to_unit(mr, input_params(mr, "MR", setup))}


def evaluate_translation(
    model: str | Path | Any,
    source: str | Path,
    split: str | None = "test",
    directions: list[str] | tuple[str, ...] | None = None,
    out_dir: str | Path | None = None,
    max_subjects: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Translate every paired subject of ``split`` and score it against the truth.

    Args:
        model: a model folder / MLflow URI, or a :class:`~udl_med.inference.translate.Translator`.
        source: a manifest or folder with paired CT and MR (``subject``, ``modality``).
        split: the manifest split to evaluate (``None``: all).
        directions: ``ct2mr`` and/or ``mr2ct`` (default: every direction the model has).
        out_dir: where to write side-by-side PNGs (input, output, truth; middle slices).
        max_subjects: evaluate at most this many subjects.
        progress: show progress bars.

    Returns:
        ``{direction}/{metric}`` for the model and ``baseline/{direction}/{metric}``,
        ``baseline_body/{direction}/{metric}`` for the linear baselines (means over
        subjects) with their ``a`` and ``b``,
        ``n_subjects``, ``held_out_ct`` / ``held_out_mr`` (the first subject's files),
        and ``artifacts`` (PNG paths).
    """
    from udl_med.data.io import read_image
    from udl_med.data.preview import save_grid
    from udl_med.inference.translate import SOURCE, TARGET, Translator, TranslationSetup, load_translator, output_params, to_unit, translate_image

    translator = model if isinstance(model, Translator) else load_translator(model)
    setup = TranslationSetup.from_config(translator.config)
    available = translator.directions
    directions = tuple(directions or available)
    for d in directions:
        if d not in available:
            raise UserError(f"the model translates only {', '.join(available)}, not {d}")
    subjects = paired_subjects(source, split)[: max_subjects or None]

    per: dict[str, list[dict[str, float]]] = defaultdict(list)
    fit_data: dict[str, tuple[list[Tensor], list[Tensor], list[Tensor]]] = {d: ([], [], []) for d in directions}
    previews: dict[str, list[Tensor]] = defaultdict(list)
    for subject, ct_path, mr_path in subjects:
        ct_img, mr_img = read_image(ct_path), read_image(mr_path)
        if ct_img.shape != mr_img.shape:
            raise InputError(mr_path, f"shape {tuple(mr_img.shape)} differs from its CT's {tuple(ct_img.shape)}; pairs must share a grid")
        mask = body_mask(ct_img.as_tensor()[0])
        norm = _normalised_pair(ct_img.as_tensor()[0], mr_img.as_tensor()[0], setup)
        images = {"CT": ct_img, "MR": mr_img}
        for d in directions:
            src, tgt = SOURCE[d], TARGET[d]
            out = translate_image(translator, images[src], d, setup, progress=progress).as_tensor()[0]
            pred = to_unit(out, output_params(tgt, setup))
            per[d].append(translation_metrics(pred, norm[tgt], mask, tgt, setup.ct_window))
            xs, ys, ms = fit_data[d]
            xs.append(norm[src])
            ys.append(norm[tgt])
            ms.append(mask)
            if out_dir is not None:
                previews[d] += [norm[src][None], pred[None], norm[tgt][None]]
        log.info("evaluated %s", subject)

    result: dict[str, Any] = {
        "n_subjects": len(subjects),
        "split": split,
        "held_out_ct": str(subjects[0][1]),  # for later pipeline steps
        "held_out_mr": str(subjects[0][2]),
    }
    for d in directions:
        for k in per[d][0]:
            result[f"{d}/{k}"] = float(np.mean([m[k] for m in per[d]]))
        xs, ys, ms = fit_data[d]
        everywhere = [torch.ones_like(m, dtype=torch.bool) for m in ms]
        for name, fit_masks, apply_masks in (("baseline", everywhere, [None] * len(ms)), ("baseline_body", ms, ms)):
            a, b = linear_fit(xs, ys, fit_masks)
            result[f"{name}/{d}/a"], result[f"{name}/{d}/b"] = a, b
            scores = [
                translation_metrics(linear_baseline(x, a, b, am), y, m, TARGET[d], setup.ct_window)
                for x, y, m, am in zip(xs, ys, ms, apply_masks)
            ]
            for k in scores[0]:
                result[f"{name}/{d}/{k}"] = float(np.mean([s[k] for s in scores]))
    artifacts = []
    if out_dir is not None:
        for d in directions:
            grid = torch.stack(previews[d])  # (3 n, 1, *spatial): rows input | output | truth
            artifacts.append(str(save_grid(grid, Path(out_dir) / f"translation_{d}.png", nrow=3)))
    result["artifacts"] = artifacts
    return result


def evaluate_translation_step(
    model: str,
    source: str,
    split: str | None = "test",
    directions: list[str] | None = None,
    out_dir: str | None = None,
    max_subjects: int | None = None,
) -> dict[str, Any]:
    """Pipeline step ``evaluate_translation``: :func:`evaluate_translation`, metrics with ``/`` as ``_``.

    Also reports, per direction, ``{d}_mae_vs_baseline``: the model's MAE over the
    linear baseline's (below 1 is better than the baseline).
    """
    result = evaluate_translation(model, source, split=split, directions=directions, out_dir=out_dir, max_subjects=max_subjects)
    flat = {k.replace("/", "_"): v for k, v in result.items()}
    for d in directions or ("ct2mr", "mr2ct"):
        if f"{d}/mae" in result:
            base = result[f"baseline/{d}/mae"]
            flat[f"{d}_mae_vs_baseline"] = result[f"{d}/mae"] / base if base > 0 else math.inf
    return flat
