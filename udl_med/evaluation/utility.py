"""Downstream utility of synthetic data: does it help a classifier trained on few labeled real scans?

Three arms train the SAME MONAI classifier (:class:`monai.networks.nets.Classifier`,
same width, same initialisation for a seed, same optimiser, same number of steps, same
batch size, class-balanced batches, the same augmentation: :attr:`ClassifierBudget.augment`,
for ``augment-eval`` and the pipeline step flips, shifts, scalings and rotations, so a gain
is what synthetic data adds beyond the augmentation a classifier does anyway) on

- ``real``: the items of a few labeled real subjects (``per_class_subjects`` per class,
  drawn per seed);
- ``real+synthetic``: those real items plus every synthetic item;
- ``synthetic``: the synthetic items alone (train on synthetic, test on real);

and every arm is scored on the SAME held-out real subjects (their items), by accuracy
and balanced accuracy (the mean of per-class recalls: chance is ``1 / classes`` whatever
the class balance). Each number is a mean over seeds with its standard deviation; the
gain of ``real+synthetic`` over ``real`` is said to exceed the seed spread when it is
larger than the larger of the two arms' standard deviations.

Items: 2D images (one-slice volumes, e.g. from :func:`lesion_slices`, or ``udl-med
synthesize`` output) or every foreground slice of a volume, each with its manifest label
and subject; intensities are normalised with ``ct_window`` (CT) as in training.

:func:`lesion_slices` (pipeline step ``lesion_slices``) makes such items from phantoms:
every CT slice through the liver, except slices of lesion subjects that the lesion does
not reach, as a one-slice NIfTI volume in HU clipped to ``window``, with the subject's
label, subject and split. A slice then shows the class it is labeled with, which a
class-conditional generator and a classifier both need.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from udl_med import keys
from udl_med.data.geometry import Geometry
from udl_med.data.io import read_image, write_image, write_manifest
from udl_med.data.normalize import normalize
from udl_med.data.phantoms import TISSUES
from udl_med.data.split import DEFAULT_SPLIT_FRACTIONS, DEFAULT_SPLIT_SEED, records_of_split
from udl_med.errors import InputError, UserError
from udl_med.io_utils import atomic_folder
from udl_med.metrics.compare import image_views, resize_view

log = logging.getLogger(__name__)

DEFAULT_WINDOW = (-250.0, 250.0)  # soft-tissue window: the lesion classes differ by 60-120 HU


# --- items --------------------------------------------------------------------------------


def lesion_slices(
    source: str | Path,
    out: str | Path,
    window: tuple[float, float] = DEFAULT_WINDOW,
    min_liver_voxels: int = 16,
    slice_axis: int = 2,
    split: str | None = None,
    subject_prefix: str = "",
    crop: list[int] | tuple[int, int] | None = None,
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
    split_seed: int = DEFAULT_SPLIT_SEED,
) -> dict[str, Any]:
    """Write the class-showing CT slices of phantoms as one-slice volumes plus a manifest (see the module docstring).

    ``split``: keep only this split's CTs; a source without a split column is split by
    subject as training splits it (``split_fractions``, ``split_seed``:
    :func:`~udl_med.data.split.records_of_split`), and the manifest written keeps each
    item's split.

    ``subject_prefix`` is put before every subject id: two phantom sets reuse the ids
    ``sub-000, ...``, and the utility check refuses held-out subjects that share an id with
    training subjects.

    ``crop``: the in-plane size of a liver-centred crop of every slice (centred on the
    slice's liver and lesion voxels, shifted to stay inside the slice), the item where
    synthetic data helps (README: synthesis); None keeps the whole slice. Every item keeps
    its place in the scanner: its origin is the physical position of its first voxel.

    Returns ``manifest``, ``n``, ``per_class`` (slice counts), ``n_subjects`` and ``subjects``.

    Raises:
        InputError: no CT images, no label or label map, no slice through the liver, or a
            crop larger than a slice.
    """
    from monai.data import MetaTensor  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    if crop is not None:
        crop = [int(c) for c in crop]
        if len(crop) != 2 or min(crop) < 1:
            raise UserError(f"lesion_slices crop must be two positive sizes (in-plane), got {crop}")
    liver_value, lesion_value = TISSUES.index("liver"), TISSUES.index("lesion")
    records = [r for r in records_of_split(source, split, split_fractions, split_seed) if r.modality == "CT"]
    if not records:
        raise InputError(source, f"no CT images{'' if split is None else f' in split {split!r}'}")
    out = Path(out)
    counts: dict[int, int] = {}

    def write(folder: Path) -> None:
        rows = []
        for record in records:
            tissue_path = record.path.parent / "tissue.nii.gz"
            if record.label is None or not tissue_path.is_file():
                raise InputError(record.path, "lesion_slices needs a label and a tissue.nii.gz beside every CT")
            image = read_image(record.path)
            geometry = Geometry.from_meta(image.meta)
            ct = image[0].numpy()
            tissue = read_image(tissue_path)[0].numpy()
            plane = [a for a in range(ct.ndim) if a != slice_axis]
            if crop is not None and any(c > ct.shape[a] for c, a in zip(crop, plane)):
                raise InputError(record.path, f"crop {list(crop)} is larger than a slice {[ct.shape[a] for a in plane]}")
            for k in range(ct.shape[slice_axis]):
                t = np.take(tissue, k, axis=slice_axis)
                liver = (t == liver_value) | (t == lesion_value)
                if liver.sum() < min_liver_voxels:
                    continue
                if record.label and not (t == lesion_value).any():
                    continue
                hu = np.take(ct, k, axis=slice_axis)
                start = [0, 0]
                if crop is not None:
                    centre = [int(round(c.mean())) for c in np.nonzero(liver)]
                    start = [min(max(c - s // 2, 0), n - s) for c, s, n in zip(centre, crop, hu.shape)]
                    hu = hu[start[0] : start[0] + crop[0], start[1] : start[1] + crop[1]]
                hu = np.clip(np.expand_dims(hu, slice_axis), *window)
                name = f"{record.subject}_z{k:03d}.nii.gz"
                first = np.zeros(ct.ndim)  # the item's first voxel, as an index into the volume
                first[slice_axis], first[plane] = k, start
                if geometry is not None:
                    origin = geometry.lps_affine() @ np.append(first, 1.0)
                    item_geometry = Geometry.create(geometry.spacing, origin[: ct.ndim], geometry.direction)
                meta = {**item_geometry.as_meta(), "modality": "CT"} if geometry is not None else {"modality": "CT"}
                write_image(MetaTensor(torch.as_tensor(hu[None], dtype=torch.float32), meta=meta), folder / name)
                rows.append({"image": name, "label": record.label, "modality": "CT", "subject": f"{subject_prefix}{record.subject}", "split": record.split})
                counts[record.label] = counts.get(record.label, 0) + 1
        if not rows:
            raise InputError(source, "no slice shows a liver")
        write_manifest(folder / "manifest.csv", rows)

    atomic_folder(out, write)
    return {
        "manifest": str(out / "manifest.csv"),
        "n": int(sum(counts.values())),
        "per_class": {str(k): v for k, v in sorted(counts.items())},
        "n_subjects": len({r.subject for r in records}),
        "subjects": sorted({str(r.subject) for r in records}),
    }


@dataclass(frozen=True)
class LabeledItems:
    """Classifier items ``images (N, 1, *size)`` in [-1, 1] with ``labels (N,)`` and ``subjects (N,)``."""

    images: Tensor
    labels: np.ndarray
    subjects: np.ndarray

    def subset(self, mask: np.ndarray) -> LabeledItems:
        return LabeledItems(self.images[torch.as_tensor(mask)], self.labels[mask], self.subjects[mask])


def labeled_items(
    source: str | Path,
    ct_window: tuple[float, float] = DEFAULT_WINDOW,
    size: tuple[int, ...] | None = None,
    split: str | None = None,
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
    split_seed: int = DEFAULT_SPLIT_SEED,
) -> LabeledItems:
    """Every labeled 2D view of ``source`` (one-slice volumes, or the foreground slices of volumes), normalised.

    ``split``: only this split (None: all); a source without a split column is split by
    subject as training splits it (:func:`~udl_med.data.split.records_of_split`).

    Raises:
        InputError: an image without a label, or no items.
    """
    images, labels, subjects = [], [], []
    for record in records_of_split(source, split, split_fractions, split_seed):
        if record.label is None:
            raise InputError(record.path, "utility items need a label (manifest column 'label')")
        image = read_image(record.path)
        modality = record.modality or image.meta.get("modality")
        x, _ = normalize(image.as_tensor(), modality, ct_window=ct_window)
        for view in image_views(x.float(), "2d"):
            size = size or tuple(view.shape[1:])
            images.append(resize_view(view, size))
            labels.append(int(record.label))
            subjects.append(record.subject or str(record.path))
    if not images:
        raise InputError(source, "no labeled items")
    return LabeledItems(torch.stack(images).float(), np.asarray(labels), np.asarray(subjects))


def few_subjects(items: LabeledItems, per_class: int, seed: int) -> np.ndarray:
    """Mask of the items of ``per_class`` subjects of every class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for cls in np.unique(items.labels):
        members = sorted(set(items.subjects[items.labels == cls].tolist()))
        chosen += rng.choice(members, size=min(per_class, len(members)), replace=False).tolist()
    return np.isin(items.subjects, chosen)


# --- the classifier -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierBudget:
    """What every arm gets: network width, steps, batch size, learning rate, weight decay, augmentation.

    ``augment``: random flips (the default), and ADA's translation, scaling and rotation
    (:class:`~udl_med.nets.ada.AdaptiveAugment`, each with probability
    :data:`GEOMETRY_P`). A classifier trained on a few real crops with geometric
    augmentation is the peer synthetic data has to beat: on the small-data benchmark it
    lifts real-only balanced accuracy from about 0.5 to about 0.8 (README: small data).

    ``synthetic_share``: where an arm mixes real and synthetic items, that share of the
    draws comes from the synthetic ones (:func:`sampling_weights`), however many crops
    were drawn; unset, the items are pooled and the more numerous source fills most of
    every batch.
    """

    channels: tuple[int, ...] = (8, 16, 32)
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment: tuple[str, ...] = ("flip",)
    synthetic_share: float | None = None

    def __post_init__(self) -> None:
        unknown = [a for a in self.augment if a not in keys.CLASSIFIER_AUGMENTS]
        if unknown:
            raise UserError(f"unknown classifier augmentation {unknown[0]!r}; valid: {', '.join(keys.CLASSIFIER_AUGMENTS)}")
        if self.synthetic_share is not None and not 0.0 < self.synthetic_share < 1.0:
            raise UserError(f"synthetic_share must lie strictly between 0 and 1 (or be unset: real and synthetic items pooled), got {self.synthetic_share}")


GEOMETRY_P = 0.5  # each geometric transform of the classifier's augmentation is applied with this probability


def build_classifier(size: tuple[int, ...], num_classes: int, budget: ClassifierBudget, seed: int) -> nn.Module:
    """The one classifier every arm trains: MONAI ``Classifier`` (strided conv + residual units), seeded init."""
    from monai.networks.nets import Classifier  # lazy: MONAI's transforms/networks are slow to import; only this path needs them

    torch.manual_seed(seed)
    return Classifier(in_shape=(1, *size), classes=num_classes, channels=budget.channels, strides=(2,) * len(budget.channels), num_res_units=1)


def sampling_weights(labels: np.ndarray, num_classes: int, synthetic: np.ndarray | None = None, synthetic_share: float | None = None) -> Tensor:
    """Per-item draw weights: every class equally often.

    With ``synthetic_share`` and the mask ``synthetic`` of the synthetic items, that share
    of the draws comes from them and the rest from the real ones, classes balanced within
    each: the real items keep their weight whatever the size of the synthetic draw.
    """
    if synthetic_share is None or synthetic is None:
        counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
        return torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    weights = np.zeros(len(labels))
    for members, share in ((~synthetic, 1.0 - synthetic_share), (synthetic, synthetic_share)):
        counts = np.bincount(labels[members], minlength=num_classes).astype(np.float64)
        weights[members] = share / (counts[labels[members]] * np.count_nonzero(counts))
    return torch.as_tensor(weights, dtype=torch.double)


def train_classifier(
    items: LabeledItems, num_classes: int, budget: ClassifierBudget, seed: int, augment: bool = True, synthetic: np.ndarray | None = None
) -> nn.Module:
    """Train :func:`build_classifier` on ``items`` with class-balanced batches, augmented as ``budget.augment`` says (``augment=False``: not at all).

    ``synthetic``: the mask of the synthetic items, drawn with ``budget.synthetic_share``
    (:func:`sampling_weights`).
    """
    with torch.random.fork_rng():  # the geometric draws come from the global generator: seeded here, the caller's left alone
        torch.manual_seed(seed)
        return _train_classifier(items, num_classes, budget, seed, augment, synthetic)


def _train_classifier(items: LabeledItems, num_classes: int, budget: ClassifierBudget, seed: int, augment: bool, synthetic: np.ndarray | None) -> nn.Module:
    from udl_med.nets.ada import AdaptiveAugment  # lazy: only a geometric augmentation needs ADA's pipeline

    geometry = [a for a in budget.augment if a != "flip"] if augment else []
    move = AdaptiveAugment(geometry, p=GEOMETRY_P, target=None) if geometry else None
    flips = augment and "flip" in budget.augment
    model = build_classifier(tuple(items.images.shape[2:]), num_classes, budget, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    weights = sampling_weights(items.labels, num_classes, synthetic, budget.synthetic_share)
    generator = torch.Generator().manual_seed(seed)
    y_all = torch.as_tensor(items.labels)
    model.train()
    for _ in range(budget.steps):
        idx = torch.multinomial(weights, budget.batch_size, replacement=True, generator=generator)
        x = items.images[idx]
        if flips:
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)
        if move is not None:
            with torch.no_grad():
                x = move(x)
        loss = nn.functional.cross_entropy(model(x), y_all[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def score(model: nn.Module, items: LabeledItems) -> dict[str, float]:
    """Accuracy and balanced accuracy of ``model`` on ``items``."""
    from sklearn.metrics import balanced_accuracy_score  # lazy: scikit-learn is slow to import; only this path needs it

    predictions = torch.cat([model(b).argmax(1) for b in items.images.split(128)]).numpy()
    return {"accuracy": float((predictions == items.labels).mean()), "balanced_accuracy": float(balanced_accuracy_score(items.labels, predictions))}


def _concat(a: LabeledItems, b: LabeledItems) -> LabeledItems:
    return LabeledItems(torch.cat([a.images, b.images]), np.concatenate([a.labels, b.labels]), np.concatenate([a.subjects, b.subjects]))


def utility_tensors(
    real: LabeledItems,
    synthetic: LabeledItems,
    heldout: LabeledItems,
    seeds: tuple[int, ...] = (0, 1, 2),
    per_class_subjects: int | None = 2,
    budget: ClassifierBudget = ClassifierBudget(),
    arms: tuple[str, ...] = keys.UTILITY_ARMS,
) -> dict[str, Any]:
    """The three arms on in-memory items (see the module docstring).

    Returns:
        per arm ``{arm}/accuracy``, ``{arm}/accuracy_std``, ``{arm}/balanced_accuracy``,
        ``{arm}/balanced_accuracy_std`` and ``{arm}/per_seed``; ``gain`` (balanced
        accuracy of real+synthetic minus real), ``gain_exceeds_spread``, ``chance``,
        ``heldout_subjects`` (the one list every arm was scored on), item counts.
    """
    unknown = [a for a in arms if a not in keys.UTILITY_ARMS]
    if unknown:
        raise UserError(f"unknown utility arm(s) {unknown}; valid: {', '.join(keys.UTILITY_ARMS)}")
    if not real.images.shape[1:] == synthetic.images.shape[1:] == heldout.images.shape[1:]:
        raise UserError(f"item sizes differ: real {tuple(real.images.shape[1:])}, synthetic {tuple(synthetic.images.shape[1:])}, heldout {tuple(heldout.images.shape[1:])}")
    overlap = set(heldout.subjects.tolist()) & set(real.subjects.tolist())
    if overlap:
        raise UserError(f"held-out subjects also in the real training set: {sorted(overlap)[:5]}")
    num_classes = int(max(real.labels.max(), synthetic.labels.max(), heldout.labels.max())) + 1
    per_seed: dict[str, list[dict[str, float]]] = {a: [] for a in arms}
    n_real = []
    for seed in seeds:
        few = real.subset(few_subjects(real, per_class_subjects, seed)) if per_class_subjects else real
        n_real.append(len(few.labels))
        train_sets = {"real": few, "real_plus_synthetic": _concat(few, synthetic), "synthetic": synthetic}
        is_synthetic = np.arange(len(few.labels) + len(synthetic.labels)) >= len(few.labels)
        for arm in arms:
            model = train_classifier(train_sets[arm], num_classes, budget, seed, synthetic=is_synthetic if arm == "real_plus_synthetic" else None)
            per_seed[arm].append({**score(model, heldout), "seed": seed})
            log.info("utility seed %d arm %s: %s", seed, arm, per_seed[arm][-1])
    result: dict[str, Any] = {}
    for arm in arms:
        for metric in ("accuracy", "balanced_accuracy"):
            values = np.asarray([r[metric] for r in per_seed[arm]])
            result[f"{arm}/{metric}"] = float(values.mean())
            result[f"{arm}/{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        result[f"{arm}/per_seed"] = per_seed[arm]
    if "real" in arms and "real_plus_synthetic" in arms:
        result["gain"] = result["real_plus_synthetic/balanced_accuracy"] - result["real/balanced_accuracy"]
        spread = max(result["real/balanced_accuracy_std"], result["real_plus_synthetic/balanced_accuracy_std"])
        result["gain_exceeds_spread"] = bool(result["gain"] > spread)
    result.update(
        chance=1.0 / num_classes,
        heldout_subjects=sorted(set(heldout.subjects.tolist())),
        n_heldout_items=int(len(heldout.labels)),
        n_synthetic_items=int(len(synthetic.labels)),
        n_real_items=float(np.mean(n_real)),
        seeds=list(seeds),
    )
    return result


def utility_step(
    real: str,
    synthetic: str,
    heldout: str,
    seeds: list[int] | tuple[int, ...] = (0, 1, 2),
    per_class_subjects: int | None = 2,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    channels: list[int] | tuple[int, ...] = (8, 16, 32),
    ct_window: list[float] | tuple[float, float] = DEFAULT_WINDOW,
    real_split: str | None = None,
    heldout_split: str | None = None,
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
    split_seed: int = DEFAULT_SPLIT_SEED,
    classifier_augment: list[str] | tuple[str, ...] = keys.CLASSIFIER_AUGMENTS,
    synthetic_share: float | None = None,
) -> dict[str, Any]:
    """``udl-med augment-eval REAL SYNTH --heldout HELD`` and the pipeline step ``utility``.

    Args:
        real: labeled real items (manifest or folder); ``per_class_subjects`` subjects
            per class of it are the few labels (None: all of it).
        synthetic: labeled synthetic items (``udl-med synthesize`` output).
        heldout: labeled real items of other subjects, the test set of every arm.
        seeds: one run of every arm per seed (classifier init, batches, the few subjects).
        steps, batch_size, lr, channels, classifier_augment: the classifier budget, the
            same for every arm (``classifier_augment``: :attr:`ClassifierBudget.augment`;
            by default flips and the geometric transforms, the classifier a user would
            train anyway, so the gain is what synthetic data adds beyond augmentation).
        synthetic_share: :attr:`ClassifierBudget.synthetic_share` of the real + synthetic
            arm (None: real and synthetic items pooled).
        ct_window: CT normalisation of the items.
        real_split, heldout_split: use only these manifest splits; a source without a
            split column is split by subject with ``split_fractions`` and ``split_seed``
            (training's ``data.split_fractions`` / ``data.split_seed``).
    """
    window = tuple(float(v) for v in ct_window)
    real_items = labeled_items(real, window, split=real_split, split_fractions=split_fractions, split_seed=split_seed)
    size = tuple(real_items.images.shape[2:])
    result = utility_tensors(
        real_items,
        labeled_items(synthetic, window, size),
        labeled_items(heldout, window, size, split=heldout_split, split_fractions=split_fractions, split_seed=split_seed),
        tuple(int(s) for s in seeds),
        per_class_subjects,
        ClassifierBudget(tuple(int(c) for c in channels), int(steps), int(batch_size), float(lr), augment=tuple(classifier_augment), synthetic_share=synthetic_share),
    )
    for arm in keys.UTILITY_ARMS:
        log.info(
            "utility %s: accuracy %.3f +- %.3f, balanced %.3f +- %.3f",
            arm, result[f"{arm}/accuracy"], result[f"{arm}/accuracy_std"], result[f"{arm}/balanced_accuracy"], result[f"{arm}/balanced_accuracy_std"],
        )
    return result
