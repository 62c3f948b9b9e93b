"""Judging a CT <-> MR translation model on held-out paired subjects (``run: evaluate_translation``).

Every paired subject of a split is translated whole, in each direction, and scored with
:mod:`udl_med.metrics.translation` (MAE in the body, PSNR, SSIM) against the truth and
against the two linear baselines described there.
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

from udl_med.data.preview import save_grid
from udl_med.data.readers import read_image
from udl_med.data.split import DEFAULT_SPLIT_FRACTIONS, DEFAULT_SPLIT_SEED, records_of_split
from udl_med.errors import InputError, UserError
from udl_med.inference.translation_setup import SOURCE, TARGET, input_params, output_params, to_unit
from udl_med.inference.translator import Translator, load_translator
from udl_med.inference.window_engines import translate_image
from udl_med.metrics.translation import body_mask, linear_baseline, linear_fit, translation_metrics

log = logging.getLogger(__name__)

__all__ = ["paired_subjects", "evaluate_translation", "evaluate_translation_step"]


def paired_subjects(
    source: str | Path,
    split: str | None = "test",
    fractions: tuple[float, ...] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = DEFAULT_SPLIT_SEED,
) -> list[tuple[str, Path, Path]]:
    """``(subject, ct path, mr path)`` of every subject of ``split`` with both a CT and an MR.

    A source without a ``split`` column is split by subject as training split it, with
    the run's ``fractions`` and ``seed`` (:func:`~udl_med.data.split.records_of_split`).

    Raises:
        InputError: the source has no such pairs (a manifest needs ``subject`` and ``modality``).
    """
    by_subject: dict[str, dict[str, Path]] = defaultdict(dict)
    for record in records_of_split(source, split, fractions, seed):
        if record.subject and record.modality in ("CT", "MR"):
            by_subject[record.subject][record.modality] = record.path
    pairs = [(s, d["CT"], d["MR"]) for s, d in sorted(by_subject.items()) if "CT" in d and "MR" in d]
    if not pairs:
        raise InputError(source, f"no subject with both CT and MR in split {split!r} (the manifest needs subject and modality)")
    return pairs


def _normalised_pair(ct: Tensor, mr: Tensor, setup: Any) -> dict[str, Tensor]:
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
        model: a model folder / MLflow URI, or a :class:`~udl_med.inference.translator.Translator`.
        source: a manifest or folder with paired CT and MR (``subject``, ``modality``).
        split: the manifest split to evaluate (``None``: all); a source without a split
            column is split by subject with the run's ``data.split_fractions`` and
            ``data.split_seed``, so ``test`` is the subjects training held out.
        directions: ``ct2mr`` and/or ``mr2ct`` (default: every direction the model has).
        out_dir: where to write side-by-side PNGs (input, output, truth; middle slices).
        max_subjects: evaluate at most this many subjects.
        progress: show progress bars.

    Returns:
        ``{direction}/{metric}`` for the model and ``baseline/{direction}/{metric}``,
        ``baseline_body/{direction}/{metric}`` for the linear baselines (means over
        subjects) with their ``a`` and ``b``,
        ``n_subjects``, ``subjects`` (the subjects evaluated), ``held_out_ct`` / ``held_out_mr`` (the first subject's files),
        and ``artifacts`` (PNG paths).
    """
    translator = model if isinstance(model, Translator) else load_translator(model)
    setup = translator.setup
    available = translator.directions
    directions = tuple(directions or available)
    for d in directions:
        if d not in available:
            raise UserError(f"the model translates only {', '.join(available)}, not {d}")
    data = translator.config.data
    subjects = paired_subjects(source, split, data.split_fractions, data.split_seed)[: max_subjects or None]
    log.info("evaluating %d subject(s) of split %s: %s", len(subjects), split, ", ".join(s for s, _, _ in subjects))

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
        "subjects": [s for s, _, _ in subjects],
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
