"""Downstream utility: the three arms share the held-out subjects and the budget; a useful synthetic set helps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from udl_med.errors import UserError
from udl_med.evaluation import utility
from udl_med.evaluation.utility import ClassifierBudget, LabeledItems, few_subjects, utility_tensors


def _items(n_subjects: int, per_subject: int, seed: int, prefix: str, size: int = 16) -> LabeledItems:
    """Class 1: a bright square somewhere on a noisy background; class 0: none (learnable, flip-invariant)."""
    g = torch.Generator().manual_seed(seed)
    labels = np.repeat(np.arange(n_subjects) % 2, per_subject)
    images = 0.3 * torch.randn(len(labels), 1, size, size, generator=g) - 0.5
    for i, k in enumerate(labels):
        r, c = torch.randint(0, size - 4, (2,), generator=g).tolist()
        images[i, 0, r : r + 4, c : c + 4] += 1.5 * k
    subjects = np.repeat(np.asarray([f"{prefix}{s}" for s in range(n_subjects)]), per_subject)
    return LabeledItems(images.clamp(-1, 1), labels, subjects)


def test_few_subjects_draws_per_class() -> None:
    items = _items(10, 3, 0, "r")
    mask = few_subjects(items, 2, seed=0)
    chosen = set(items.subjects[mask])
    assert len(chosen) == 4 and sorted(np.bincount(items.labels[mask])) == [6, 6]
    assert not np.array_equal(mask, few_subjects(items, 2, seed=1))


def test_arms_share_the_heldout_subjects_and_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    real, synthetic, heldout = _items(12, 2, 0, "r"), _items(20, 2, 1, "s"), _items(8, 3, 2, "h")
    seen: list[tuple[str, ...]] = []
    budgets: list[int] = []
    real_score, real_train = utility.score, utility.train_classifier

    def spy_score(model, items):
        seen.append(tuple(items.subjects.tolist()))
        return real_score(model, items)

    def spy_train(items, num_classes, budget, seed, augment=True, synthetic=None):
        budgets.append(budget.steps)
        return real_train(items, num_classes, budget, seed, augment, synthetic)

    monkeypatch.setattr(utility, "score", spy_score)
    monkeypatch.setattr(utility, "train_classifier", spy_train)
    result = utility_tensors(real, synthetic, heldout, seeds=(0, 1), per_class_subjects=1, budget=ClassifierBudget((4, 8), steps=150, batch_size=16, lr=3e-3))
    assert len(seen) == 6 and len(set(seen)) == 1 and set(seen[0]) == set(heldout.subjects)  # 3 arms x 2 seeds, one test set
    assert budgets == [150] * 6
    assert result["heldout_subjects"] == sorted(set(heldout.subjects))
    for arm in ("real", "real_plus_synthetic", "synthetic"):
        assert 0.0 <= result[f"{arm}/balanced_accuracy"] <= 1.0 and len(result[f"{arm}/per_seed"]) == 2
    assert result["real_plus_synthetic/balanced_accuracy"] > result["real/balanced_accuracy"] + 0.1  # 20 extra subjects of a learnable task help
    assert result["synthetic/balanced_accuracy"] > 0.65 and result["gain"] > 0.1
    assert result["n_real_items"] == 4 and result["chance"] == 0.5


def test_heldout_subjects_must_be_new() -> None:
    real = _items(6, 2, 0, "r")
    with pytest.raises(UserError, match="held-out subjects also in the real training set"):
        utility_tensors(real, _items(4, 2, 1, "s"), _items(4, 2, 2, "r"), seeds=(0,), budget=ClassifierBudget((4,), steps=1))


def test_lesion_slices_show_their_class(phantom_manifest) -> None:
    import tempfile
    from pathlib import Path

    from udl_med.data.io import list_images, read_image

    with tempfile.TemporaryDirectory() as tmp:
        result = utility.lesion_slices(phantom_manifest, Path(tmp) / "slices")
        records = list_images(result["manifest"])
        assert len(records) == result["n"] > 0 and {r.modality for r in records} == {"CT"}
        image = read_image(records[0].path)
        assert image.shape[-1] == 1 and float(image.min()) >= -250 and float(image.max()) <= 250
        items = utility.labeled_items(result["manifest"])
        assert items.images.shape[1:] == (1, 32, 32) and set(items.labels) <= {0, 1, 2}


def test_lesion_slices_crop_is_liver_centred_and_keeps_its_place(phantom_manifest, tmp_path) -> None:
    """``crop``: items of the asked size, centred on the liver, each with the physical origin of its first voxel."""
    from udl_med.data.geometry import Geometry
    from udl_med.data.io import list_images, read_image
    from udl_med.data.phantoms import TISSUES

    result = utility.lesion_slices(phantom_manifest, tmp_path / "crops", window=(-200.0, 300.0), crop=[16, 12])
    whole = utility.lesion_slices(phantom_manifest, tmp_path / "slices", window=(-200.0, 300.0))
    assert result["n"] == whole["n"] and result["per_class"] == whole["per_class"]  # the same slices, cropped
    liver_values = (TISSUES.index("liver"), TISSUES.index("lesion"))
    volumes = {r.subject: r.path for r in list_images(phantom_manifest) if r.modality == "CT"}
    checked = 0
    for record in list_images(result["manifest"]):
        item = read_image(record.path)
        assert tuple(item.shape) == (1, 16, 12, 1) and -200 <= float(item.min()) and float(item.max()) <= 300
        volume = read_image(volumes[record.subject])
        vg, ig = Geometry.from_meta(volume.meta), Geometry.from_meta(item.meta)
        # the item's origin is a voxel of the volume: find it, and the item equals the volume there
        index = np.linalg.solve(vg.lps_affine()[:3, :3], np.asarray(ig.origin) - np.asarray(vg.origin))
        i, j, k = (int(round(v)) for v in index)
        assert np.allclose(index, (i, j, k), atol=1e-4) and np.allclose(ig.spacing, vg.spacing)
        expected = np.clip(volume[0, i : i + 16, j : j + 12, k].numpy(), -200, 300)
        assert np.allclose(item[0, :, :, 0].numpy(), expected, atol=1e-3)
        # centred on the liver where the slice leaves room
        tissue = read_image(volumes[record.subject].parent / "tissue.nii.gz")[0, :, :, k].numpy()
        ci, cj = (c.mean() for c in np.nonzero(np.isin(tissue, liver_values)))
        assert abs(i + 8 - ci) <= 1 or i in (0, 32 - 16)
        assert abs(j + 6 - cj) <= 1 or j in (0, 32 - 12)
        checked += 1
    assert checked == result["n"]


def test_lesion_slices_refuses_a_crop_larger_than_a_slice(phantom_manifest, tmp_path) -> None:
    from udl_med.errors import InputError

    with pytest.raises(InputError, match="crop"):
        utility.lesion_slices(phantom_manifest, tmp_path / "crops", crop=[64, 16])


def _batches_seen(monkeypatch: pytest.MonkeyPatch, items: LabeledItems, budget: ClassifierBudget) -> list[torch.Tensor]:
    """The batches the classifier was trained on (a forward hook on the built network)."""
    seen: list[torch.Tensor] = []
    build = utility.build_classifier

    def spy_build(size, num_classes, budget, seed):
        model = build(size, num_classes, budget, seed)
        model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()) if module.training else None)
        return model

    monkeypatch.setattr(utility, "build_classifier", spy_build)
    utility.train_classifier(items, 2, budget, seed=3)
    return seen


def test_the_classifier_moves_its_inputs_only_when_asked_and_reproducibly(monkeypatch: pytest.MonkeyPatch) -> None:
    items = _items(6, 2, 0, "r")
    known = torch.cat([items.images, items.images.flip(-1)]).flatten(1)

    def unmoved(batches: list[torch.Tensor]) -> float:
        x = torch.cat(batches).flatten(1)
        return float((x[:, None, :] == known[None]).all(-1).any(-1).double().mean())

    flips = ClassifierBudget((4,), steps=20, batch_size=8, lr=3e-3)
    moved = ClassifierBudget((4,), steps=20, batch_size=8, lr=3e-3, augment=("flip", "translation", "scaling", "rotation"))
    assert unmoved(_batches_seen(monkeypatch, items, flips)) == 1.0  # every input is an item or its mirror image
    state = torch.random.get_rng_state()
    first = _batches_seen(monkeypatch, items, moved)
    assert torch.equal(torch.random.get_rng_state(), state)  # the draws leave the caller's generator alone
    assert 0.0 < unmoved(first) < 0.5  # each transform at p 0.5: (1/2)^3 of the items pass unmoved
    assert all(torch.equal(a, b) for a, b in zip(first, _batches_seen(monkeypatch, items, moved)))  # the same seed, the same draws


def test_the_classifier_augmentation_is_checked_and_a_geometric_one_still_learns() -> None:
    with pytest.raises(UserError, match="unknown classifier augmentation 'elastic'; valid: flip, translation, scaling, rotation"):
        ClassifierBudget(augment=("flip", "elastic"))
    real, heldout = _items(12, 3, 0, "r"), _items(8, 3, 2, "h")
    budget = ClassifierBudget((4, 8), steps=150, batch_size=16, lr=3e-3, augment=("flip", "translation", "scaling", "rotation"))
    assert utility.score(utility.train_classifier(real, 2, budget, seed=0), heldout)["balanced_accuracy"] > 0.75


def test_a_synthetic_share_draws_that_share_from_the_synthetic_items_classes_balanced_within_each() -> None:
    labels = np.r_[np.repeat([0, 1], [3, 9]), np.repeat([0, 1], [60, 20])]  # 12 real items, 80 synthetic ones
    synthetic = np.arange(len(labels)) >= 12
    pooled = utility.sampling_weights(labels, 2)
    assert torch.allclose(pooled, torch.as_tensor(1.0 / np.bincount(labels)[labels], dtype=torch.double))  # unset: the weights of before
    for share in (0.25, 0.5):
        p = utility.sampling_weights(labels, 2, synthetic, share).numpy()
        p = p / p.sum()
        assert p[synthetic].sum() == pytest.approx(share)
        for source in (synthetic, ~synthetic):
            assert p[source & (labels == 0)].sum() == pytest.approx(p[source & (labels == 1)].sum())
    with pytest.raises(UserError, match="synthetic_share must lie strictly between 0 and 1"):
        ClassifierBudget(synthetic_share=1.0)


def test_only_the_mixed_arm_is_drawn_with_the_synthetic_share(monkeypatch: pytest.MonkeyPatch) -> None:
    real, synthetic, heldout = _items(6, 2, 0, "r"), _items(20, 2, 1, "s"), _items(4, 2, 2, "h")
    masks: list[np.ndarray | None] = []
    weights = utility.sampling_weights

    def spy(labels, num_classes, mask=None, share=None):
        masks.append(None if mask is None else mask.copy())
        assert share == 0.3
        return weights(labels, num_classes, mask, share)

    monkeypatch.setattr(utility, "sampling_weights", spy)
    utility_tensors(real, synthetic, heldout, seeds=(0,), per_class_subjects=None, budget=ClassifierBudget((4,), steps=2, batch_size=8, synthetic_share=0.3))
    mixed = [m for m in masks if m is not None]
    assert len(masks) == 3 and len(mixed) == 1  # real, real + synthetic, synthetic: only the mixture has a mask
    assert mixed[0].sum() == len(synthetic.labels) and not mixed[0][: len(real.labels)].any()
