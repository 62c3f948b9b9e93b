"""``udl-med classify MODEL INPUT --out predictions.csv [--json]``: one class prediction per scan.

Each image of INPUT (a volume, a DICOM series, every image of a folder or manifest) is
prepared exactly as for ``udl-med encode`` (:func:`udl_med.inference.encode.image_items`:
read, normalised with the run's CT window or MR percentiles, padded, cut into the items
the model was trained on: every foreground slice across the run's ``slice_axis`` for
2D/2.5D models, a grid of foreground patches for 3D models, centre-cropped). The
model's ``classify`` gives class probabilities per item.

Geometry: each image is first resampled to the spacing and orientation the model was
trained on (:mod:`udl_med.inference.model_grid`, MONAI); ``--no-resample`` uses it as it
is and refuses a large mismatch (exit code 2).

**Pooling.** A scan's probabilities are the mean of its items' probabilities (the
foreground slices or patches), and its predicted class is their argmax. A lesion seen on
a few slices moves the mean less than it would move a maximum, but the mean is calibrated
on scans where most slices carry the class (and it is what the benchmark measures).

A model trained on one modality (``data.modality``) classifies only the images the
manifest gives that modality (or none); the others are skipped and counted.

``predictions.csv`` columns: ``image``, ``subject``, ``label`` (the manifest's; empty
where there is none), ``predicted``, ``prob_0`` .. ``prob_<K-1>``, ``n_items``. Every
image is read and classified before anything is written, and the file is written
atomically: an unreadable input exits with code 2 and leaves no file. When the manifest
has labels, the result (``--json``) holds ``accuracy``, ``balanced_accuracy`` and
``macro_auc`` (one-versus-rest, scikit-learn; null when a class is absent from the
labels) over the labeled scans.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from udl_med.data.io import list_images
from udl_med.engine.model_io import load_model
from udl_med.errors import InputError, UserError
from udl_med.inference.encode import image_items, item_config, on_model_grid
from udl_med.io_utils import atomic_write_text
from udl_med.methods.base import Capability
from udl_med.nets.exported import probabilities

log = logging.getLogger(__name__)

ITEM_BATCH = 64

__all__ = ["classify_to_file", "classify_items", "scan_probabilities", "classification_metrics"]


@torch.no_grad()
def classify_items(classify, items: Tensor, batch: int = ITEM_BATCH, device: torch.device | str | None = None) -> Tensor:
    """``classify`` over ``items`` ``(N, C, *size)`` in batches (on ``device``): probabilities ``(N, K)`` on the CPU.

    A classifier that returns logits (``finetune_classifier``, ``dbn``) has them turned
    into probabilities with a softmax; one that returns probabilities keeps them.
    """
    out = []
    for i in range(0, len(items), batch):
        x = items[i : i + batch]
        out.append(probabilities(classify(x if device is None else x.to(device)).detach().float()).cpu())
    return torch.cat(out)


def scan_probabilities(
    classify, data: dict[str, Any], record: Any, kept: Any = None, resample: bool = True, device: torch.device | str | None = None
) -> tuple[np.ndarray, int]:
    """Mean item probabilities ``(K,)`` of one image and its item count (see the module docstring).

    ``record``: a manifest record (``path``, ``modality``); ``kept``: the model's training
    geometry, which the image is resampled to first (``resample``).
    """
    cut = image_items(item_config(data, record.path), on_model_grid(record.path, kept, resample), record.modality)
    probs = classify_items(classify, cut.items, device=device)
    return probs.mean(0).numpy(), len(cut.items)


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """Accuracy, balanced accuracy and macro one-versus-rest AUC of scan probabilities ``(N, K)``."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score  # lazy: scikit-learn is slow to import; only this path needs it

    predicted = probs.argmax(1)
    out: dict[str, float | None] = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "macro_auc": None,
    }
    k = probs.shape[1]
    if set(np.unique(labels).tolist()) == set(range(k)):
        p = probs / probs.sum(1, keepdims=True)
        out["macro_auc"] = float(roc_auc_score(labels, p[:, 1] if k == 2 else p, multi_class="ovr", average="macro"))
    return out


def classify_to_file(
    model: str, input: str | Path, out: str | Path, device: str | None = None, resample: bool = True  # noqa: A002
) -> dict[str, Any]:
    """Classify every image of ``input`` with ``model``; write ``out`` (.csv). See the module docstring.

    Each image is first resampled to the model's training spacing and orientation
    (:mod:`udl_med.inference.model_grid`); ``resample=False`` uses it as it is, and
    refuses a large mismatch. ``device``: where the network runs (default: the CPU).

    Returns:
        ``{"out", "n_images", "num_classes", "method"}``, plus ``n_labeled``,
        ``accuracy``, ``balanced_accuracy`` and ``macro_auc`` when some images are labeled.

    Raises:
        UserError: a model that cannot classify, one trained on in-memory data, an
            output name that is not ``.csv``.
        InputError: an input without images, or an unreadable image (nothing is written).
    """
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise UserError(f"{out}: the predictions file must end in .csv")
    loaded = load_model(model, device=device)
    method = loaded.method
    if Capability.CLASSIFY not in method.capabilities or not hasattr(method, "classify"):
        raise UserError(f"{loaded.source}: method {method.name!r} cannot classify")
    data = loaded.config.get("data", {})
    if data.get("kind", "scans") != "scans":
        raise UserError(f"{loaded.source}: the model was trained on in-memory data (data.kind {data.get('kind')!r}), not on scans")
    records = list_images(input)
    modality = data.get("modality")
    skipped = [r for r in records if modality and r.modality and r.modality != modality]
    records = [r for r in records if r not in skipped]
    if not records:
        raise InputError(input, "no images found" + (f" with the model's modality {modality}" if skipped else ""))
    rows, probs, labels = [], [], []
    for record in records:
        p, n_items = scan_probabilities(method.classify, data, record, loaded.data_spec.geometry, resample, next(method.parameters()).device)
        probs.append(p)
        labels.append(record.label)
        rows.append((record, p, n_items))
    k = int(probs[0].shape[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "subject", "label", "predicted", *(f"prob_{c}" for c in range(k)), "n_items"])
    for record, p, n_items in rows:
        writer.writerow(
            [str(record.path), record.subject or "", "" if record.label is None else record.label, int(p.argmax()), *(f"{v:.6f}" for v in p), n_items]
        )
    result: dict[str, Any] = {"out": str(out), "n_images": len(records), "n_skipped": len(skipped), "num_classes": k, "method": method.name}
    labeled = [i for i, lab in enumerate(labels) if lab is not None]
    if labeled:
        y = np.array([labels[i] for i in labeled], dtype=np.int64)
        if int(y.max()) >= k:
            raise InputError(input, f"label {int(y.max())} is not a class of this {k}-class model")
        result["n_labeled"] = len(labeled)
        result.update(classification_metrics(y, np.stack([probs[i] for i in labeled])))
    atomic_write_text(out, buffer.getvalue())
    log.info("classified %d images of %s into %s", len(records), input, out)
    return result
