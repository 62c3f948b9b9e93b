"""How good is a pretrained encoder? A linear probe and label-scarce fine-tuning, against random init.

Both evaluations use labeled images the encoder never saw (e.g. held-out phantoms) and
compare the exported encoder (``udl-med export --format encoder``) with the same MONAI
architecture from random initialisation:

- **linear probe**: the encoder is frozen; a logistic regression (scikit-learn, on
  standardised features) is fitted on its features and scored by stratified K-fold
  cross-validation with the folds split by subject, so no subject is in both sides;
- **fine-tuning**: the encoder plus a linear head is trained end to end on the items of
  ``label_fraction`` of the subjects (stratified by class) and scored on the items of
  all other subjects; the ``finetune_classifier`` method, trained by the engine on the
  items in memory.

**Items** are cut by :func:`udl_med.evaluation.probe_items.probe_items` (liver-centred
crops where the phantoms' label maps exist, else whole images). The accuracy of always predicting the most frequent class
is reported as ``chance``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from udl_med.data.memory import TensorItems
from udl_med.data.split import DEFAULT_SPLIT_FRACTIONS, DEFAULT_SPLIT_SEED
from udl_med.engine.fit import fit_in_memory
from udl_med.errors import InputError, UserError
from udl_med.evaluation.probe_items import LABEL_MAP_NAME, ROI_CHOICES, ProbeItems, probe_items
from udl_med.nets.exported import encode_items, load_encoder
from udl_med.nets.linear_head import fit_linear_head

log = logging.getLogger(__name__)

__all__ = [
    "features", "linear_probe_accuracy", "split_subjects", "fit_linear_head", "finetune_accuracy", "probe_step",
    "ProbeItems", "probe_items", "LABEL_MAP_NAME", "ROI_CHOICES",
]


@torch.no_grad()
def features(encoder: nn.Module, data: ProbeItems, batch: int = 64) -> np.ndarray:
    """Frozen features ``(N, F)`` of every item (mean over parts for whole-image items)."""
    encoder.eval()
    if data.parts is not None:
        return np.stack([encode_items(encoder, p, batch).mean(0).numpy() for p in data.parts])
    return encode_items(encoder, data.items, batch).numpy()


def linear_probe_accuracy(x: np.ndarray, labels: np.ndarray, subjects: np.ndarray, folds: int = 5, c: float = 0.1, seed: int = 0) -> float:
    """Mean accuracy of a logistic regression on standardised ``x`` over subject-grouped stratified folds."""
    from sklearn.linear_model import LogisticRegression  # lazy: scikit-learn is slow to import; only this path needs it
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score  # lazy: scikit-learn is slow to import; only this path needs it
    from sklearn.pipeline import make_pipeline  # lazy: scikit-learn is slow to import; only this path needs it
    from sklearn.preprocessing import StandardScaler  # lazy: scikit-learn is slow to import; only this path needs it

    n_subjects = len(np.unique(subjects))
    folds = min(folds, n_subjects, int(np.bincount(labels).max()))
    if folds < 2 or len(np.unique(labels)) < 2:
        raise InputError("<probe>", f"too few subjects or classes for a probe ({n_subjects} subjects, {len(np.unique(labels))} classes)")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(model, x, labels, groups=subjects, cv=cv).mean())


def split_subjects(labels: np.ndarray, subjects: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the items of ``fraction`` of the subjects, drawn per class (at least one subject each)."""
    rng = np.random.default_rng(seed)
    subject_label = {s: int(labels[subjects == s][0]) for s in np.unique(subjects)}
    chosen: set[str] = set()
    for cls in sorted(set(subject_label.values())):
        members = sorted(s for s, lab in subject_label.items() if lab == cls)
        k = max(1, round(fraction * len(members)))
        chosen.update(rng.choice(members, size=min(k, len(members)), replace=False).tolist())
    return np.isin(subjects, sorted(chosen))


def finetune_accuracy(
    encoder: str | Path,
    data: ProbeItems,
    train_mask: np.ndarray,
    num_classes: int,
    steps: int = 300,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    c: float = 0.1,
    pretrained: bool = True,
) -> float:
    """Fine-tune the exported ``encoder`` + a linear head on the masked items; accuracy on the other items.

    LP-FT (Kumar et al., "Fine-tuning can distort pretrained features and underperform
    out-of-distribution", ICLR 2022), the ``finetune_classifier`` method trained by the
    engine on the items in memory: the head starts as a logistic regression on the
    frozen features of the training items, then encoder and head train together with
    AdamW, the head at ``10 * lr``. The same recipe serves pretrained and random
    encoders (``pretrained=False``: the architecture from random init with ``seed``).

    Args:
        encoder: a folder written by ``udl-med export --format encoder``.
        data: item-level probe items (roi ``liver``).
        train_mask: the items fine-tuning trains on; the others score it.
        num_classes: number of classes.
        steps, lr, batch_size: the fine-tuning run (``batch_size`` capped at the training items).
        seed: the run seed (batch order) and the random init's seed.
        c: inverse L2 strength of the initial head's logistic regression.
        pretrained: load the exported weights.
    """
    if data.parts is not None:
        raise UserError("fine-tuning needs item-level inputs (roi 'liver'); whole-image items are pooled features")
    x_train, y_train = data.items[train_mask], torch.as_tensor(data.labels[train_mask])
    x_test, y_test = data.items[~train_mask], torch.as_tensor(data.labels[~train_mask])
    model = {
        "encoder": str(encoder),
        "pretrained": pretrained,
        "init_seed": seed,
        "lr": lr,
        "head_init_items": len(x_train),
        "c": c,
    }
    train_set = TensorItems(x_train, y_train, num_classes=num_classes)
    method = fit_in_memory("finetune_classifier", model, train_set, steps=steps, batch_size=min(batch_size, len(x_train)), seed=seed).method
    with torch.no_grad():
        predictions = torch.cat([method.classify(x_test[i : i + 128]).argmax(1) for i in range(0, len(x_test), 128)])
    return float((predictions == y_test).float().mean())


def probe_step(
    encoder: str,
    data: str,
    seed: int = 0,
    roi: str = "auto",
    folds: int = 5,
    c: float = 0.1,
    label_fraction: float = 0.1,
    finetune_steps: int = 300,
    finetune_lr: float = 1e-3,
    batch_size: int = 32,
    split: str | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """Linear probe and fine-tuning of an exported encoder against the same architecture from random init.

    A pipeline step (``run: probe``) and a library function. See the module docstring.

    Args:
        encoder: a folder written by ``udl-med export --format encoder``.
        data: labeled held-out images (manifest or folder), with subjects.
        seed: seed of the random initialisation, the folds and the fine-tuning subset.
        roi: item selection, ``auto``, ``liver`` or ``whole``.
        folds: cross-validation folds of the linear probe.
        c: inverse L2 strength of the logistic regression.
        label_fraction: fraction of the subjects whose labels fine-tuning may use.
        finetune_steps, finetune_lr, batch_size: fine-tuning optimisation (AdamW; the head at 10x lr).
        split: probe only the images of this manifest split (None: all of ``data``); a
            source without a split column is split by subject as the encoder's training
            split it (``training_split`` of ``encoder.json``).
        quick: a smoke-test setting (the demo): 3 folds and at most 50 fine-tuning steps.

    Returns:
        ``linear_probe/pretrained``, ``linear_probe/random``, ``finetune/pretrained``,
        ``finetune/random`` (accuracies), the two ``.../gain`` differences, ``chance``,
        ``n_items``, ``n_subjects``, ``subjects`` (the subjects probed),
        ``n_finetune_subjects``, ``roi``.
    """

    if not 0.0 < label_fraction < 1.0:
        raise UserError(f"label_fraction must be in (0, 1), got {label_fraction}")
    if quick:
        folds, finetune_steps = min(folds, 3), min(finetune_steps, 50)
    pretrained = load_encoder(encoder, pretrained=True)
    trained = pretrained.spec.get("training_split", {})  # how training split a source without a split column
    fractions, split_seed = trained.get("fractions", DEFAULT_SPLIT_FRACTIONS), trained.get("seed", DEFAULT_SPLIT_SEED)
    items = probe_items(data, pretrained.spec["input"], roi, split, fractions, split_seed)
    num_classes = int(items.labels.max()) + 1
    result: dict[str, Any] = {
        "roi": items.roi,
        "n_items": int(len(items.labels)),
        "n_subjects": int(len(np.unique(items.subjects))),
        "subjects": sorted(str(s) for s in np.unique(items.subjects)),
        "chance": float(np.bincount(items.labels).max() / len(items.labels)),
    }
    encoders = {"pretrained": pretrained.net, "random": load_encoder(encoder, pretrained=False, seed=seed).net}
    for name, net in encoders.items():
        result[f"linear_probe/{name}"] = linear_probe_accuracy(features(net, items), items.labels, items.subjects, folds, c, seed)
    if items.parts is None:
        mask = split_subjects(items.labels, items.subjects, label_fraction, seed)
        result["n_finetune_subjects"] = int(len(np.unique(items.subjects[mask])))
        for name in ("pretrained", "random"):
            result[f"finetune/{name}"] = finetune_accuracy(
                encoder, items, mask, num_classes, finetune_steps, finetune_lr, batch_size, seed, c, pretrained=name == "pretrained"
            )
        result["finetune/gain"] = result["finetune/pretrained"] - result["finetune/random"]
    result["linear_probe/gain"] = result["linear_probe/pretrained"] - result["linear_probe/random"]
    log.info("probed %d subject(s)%s: %s", result["n_subjects"], "" if split is None else f" of split {split}", ", ".join(result["subjects"]))
    log.info(
        "probe of %s on %s: linear probe %.3f pretrained vs %.3f random; fine-tune %s",
        encoder, data, result["linear_probe/pretrained"], result["linear_probe/random"],
        f"{result['finetune/pretrained']:.3f} vs {result['finetune/random']:.3f}" if "finetune/pretrained" in result else "n/a",
    )
    return result
