"""Datasets: 2D, 2.5D and 3D items; unlabeled, labeled, paired and unpaired; seeds; caching."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch.utils.data import DataLoader

from udl_med import keys
from udl_med.data.config import DataConfig
from udl_med.data.datasets import FOREGROUND_LEVEL, build_dataset, data_spec
from udl_med.data.transforms import volume_transform
from udl_med.data.io import read_image
from udl_med.data.normalize import normalize
from udl_med.errors import InputError

SIZE = {2: (24, 24), 3: (16, 16, 8)}


def _cfg(phantom_dir: Path, **kw) -> DataConfig:
    return DataConfig(source=str(phantom_dir / "manifest.csv"), **kw)


def _manifest(phantom_dir: Path) -> list[dict[str, str]]:
    with open(phantom_dir / "manifest.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("layout", ["2d", "2.5d", "3d"])
def test_items_have_the_promised_shape_and_range(phantom_dir: Path, layout: str) -> None:
    dims = 3 if layout == "3d" else 2
    cfg = _cfg(phantom_dir, layout=layout, size=SIZE[dims], context=2)
    ds = build_dataset(cfg, "train")
    spec = data_spec(cfg, ds)
    channels = 5 if layout == "2.5d" else 1
    assert (spec.spatial_dims, spec.in_channels, spec.image_size, spec.num_classes) == (dims, channels, SIZE[dims], 0)
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=True)))
    assert batch[keys.IMAGE].shape == (4, channels, *SIZE[dims]) and batch[keys.IMAGE].dtype == torch.float32
    assert float(batch[keys.IMAGE].min()) >= -1.0 and float(batch[keys.IMAGE].max()) <= 1.0
    assert set(batch[keys.MODALITY]) <= {"CT", "MR"} and all(Path(p).exists() for p in batch[keys.PATH])
    train_files = {str(phantom_dir / r["image"]) for r in _manifest(phantom_dir) if r["split"] == "train"}
    assert {str(r.path) for r in ds.records} == train_files


def test_background_slices_are_skipped(phantom_dir: Path) -> None:
    cfg = _cfg(phantom_dir, modality="CT", crop="center", size=(32, 32))
    ds = build_dataset(cfg, "train")
    slices_total = sum(read_image(r.path).shape[-1] for r in ds.records)
    assert 0 < len(ds) < slices_total  # the phantom body ends inside the grid
    fractions = [float((ds[i][keys.IMAGE] > FOREGROUND_LEVEL).float().mean()) for i in range(len(ds))]
    assert min(fractions) >= cfg.foreground_fraction
    everything = build_dataset(cfg.model_copy(update={"foreground_fraction": 0.0}), "train")
    assert len(everything) == slices_total


def test_slice_equals_the_normalised_volume(phantom_dir: Path) -> None:
    """Item k of an axial, centre-cropped dataset is the normalised slice of its volume."""
    cfg = _cfg(phantom_dir, modality="MR", crop="center", size=(32, 32), foreground_fraction=0.0)
    ds = build_dataset(cfg, "val")
    rec = ds.records[0]
    vol, _ = normalize(read_image(rec.path).as_tensor(), "MR")
    for k in (0, 7, 15):
        torch.testing.assert_close(ds[k][keys.IMAGE], vol[:, :, :, k])
    side = build_dataset(cfg.model_copy(update={"slice_axis": 0, "size": (32, 16)}), "val")
    torch.testing.assert_close(side[5][keys.IMAGE], vol[:, 5, :, :])


def test_two_and_a_half_d_centre_channel_is_the_slice(phantom_dir: Path) -> None:
    flat = build_dataset(_cfg(phantom_dir, crop="center", foreground_fraction=0.0), "val")
    stack = build_dataset(_cfg(phantom_dir, layout="2.5d", context=1, crop="center", foreground_fraction=0.0), "val")
    assert len(flat) == len(stack)
    for i in (0, 5, len(flat) - 1):
        torch.testing.assert_close(stack[i][keys.IMAGE][1:2], flat[i][keys.IMAGE])
    torch.testing.assert_close(stack[1][keys.IMAGE][0], flat[0][keys.IMAGE][0])  # the neighbour below
    torch.testing.assert_close(stack[0][keys.IMAGE][0], stack[0][keys.IMAGE][1])  # edges repeat


def test_labeled_items_carry_the_manifest_label(phantom_dir: Path) -> None:
    cfg = _cfg(phantom_dir, labeled=True, modality="CT")
    ds = build_dataset(cfg, "train")
    labels = {str(phantom_dir / r["image"]): int(r["label"]) for r in _manifest(phantom_dir)}
    assert data_spec(cfg, ds).num_classes == 3
    for i in range(0, len(ds), 7):
        item = ds[i]
        assert item[keys.LABEL] == labels[item[keys.PATH]] and item[keys.MODALITY] == "CT"
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch[keys.LABEL].dtype == torch.int64 and batch[keys.LABEL].shape == (5,)


def _find_crop(volume: torch.Tensor, crop: torch.Tensor) -> tuple[int, ...]:
    """The offset at which ``crop`` (1, *size) was cut out of ``volume`` (1, *spatial)."""
    ranges = [range(n - s + 1) for n, s in zip(volume.shape[1:], crop.shape[1:])]
    hits = [
        start
        for start in np.ndindex(*[len(r) for r in ranges])
        if torch.equal(volume[(slice(None),) + tuple(slice(a, a + s) for a, s in zip(start, crop.shape[1:]))], crop)
    ]
    assert len(hits) == 1
    return hits[0]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_paired_items_are_the_same_subject_and_position(phantom_dir: Path, spatial_dims: int) -> None:
    cfg = _cfg(phantom_dir, pairing="paired", size=SIZE[spatial_dims], layout="3d" if spatial_dims == 3 else "2d")
    ds = build_dataset(cfg, "train")
    for i in range(0, len(ds), max(1, len(ds) // 4)):
        item = ds[i]
        ct, mr = item[keys.CT], item[keys.MR]
        assert ct.shape == mr.shape == (1, *SIZE[spatial_dims])
        pi, k = ds.index[i]
        ct_v, mr_v = ds.pairs[pi]
        assert ct_v.record.subject == mr_v.record.subject and (ct_v.modality, mr_v.modality) == ("CT", "MR")
        ct_vol, _ = normalize(read_image(ct_v.record.path).as_tensor(), "CT")
        mr_vol, _ = normalize(read_image(mr_v.record.path).as_tensor(), "MR")
        if spatial_dims == 2:
            ct_vol, mr_vol = ct_vol[..., k], mr_vol[..., k]
        start = _find_crop(ct_vol, ct)
        assert start == _find_crop(mr_vol, mr)  # the MR crop is cut at the same place


def test_unpaired_uses_disjoint_subjects_and_independent_draws(phantom_dir: Path) -> None:
    cfg = _cfg(phantom_dir, pairing="unpaired")
    ds = build_dataset(cfg, "train")
    ct_subjects = {v.record.subject for v, _ in ds.ct_index}
    mr_subjects = {v.record.subject for v, _ in ds.mr_index}
    assert ct_subjects and mr_subjects and not ct_subjects & mr_subjects
    assert len(ct_subjects | mr_subjects) == 6  # together they cover the training subjects
    item = ds[0]
    assert item[keys.CT].shape == item[keys.MR].shape == (1, 32, 32)
    partners = {float(ds[0][keys.MR].sum())}
    for seed in range(1, 6):
        ds.set_random_state(seed)
        partners.add(float(ds[0][keys.MR].sum()))
    assert len(partners) > 1  # the MR partner is drawn at random, not tied to the CT item


@pytest.mark.parametrize("layout", ["2d", "3d"])
def test_set_random_state_makes_items_reproducible(phantom_dir: Path, layout: str) -> None:
    dims = 3 if layout == "3d" else 2
    cfg = _cfg(phantom_dir, layout=layout, size=SIZE[dims])
    ds = build_dataset(cfg, "train")
    other = build_dataset(cfg, "train")
    ds.set_random_state(7)
    other.set_random_state(7)
    first = [ds[i][keys.IMAGE] for i in range(0, len(ds), 9)]
    assert all(torch.equal(a, other[i][keys.IMAGE]) for a, i in zip(first, range(0, len(ds), 9)))
    assert all(torch.equal(a, ds[i][keys.IMAGE]) for a, i in zip(first, range(0, len(ds), 9)))  # order-free
    ds.set_random_state(8)
    assert any(not torch.equal(a, ds[i][keys.IMAGE]) for a, i in zip(first, range(0, len(ds), 9)))


def test_cache_does_not_change_items(phantom_dir: Path) -> None:
    cached = build_dataset(_cfg(phantom_dir, cache=True), "val")
    fresh = build_dataset(_cfg(phantom_dir, cache=False), "val")
    assert len(cached) == len(fresh)
    for i in range(0, len(cached), 5):
        torch.testing.assert_close(cached[i][keys.IMAGE], fresh[i][keys.IMAGE], rtol=0, atol=0)


def test_resize_keeps_the_whole_slice(phantom_dir: Path) -> None:
    ds = build_dataset(_cfg(phantom_dir, crop="resize", size=(16, 16), modality="CT"), "val")
    x = ds[len(ds) // 2][keys.IMAGE]
    assert x.shape == (1, 16, 16)
    assert float(x[0, 0, 0]) == pytest.approx(-1.0, abs=0.05) and float(x[0, 8, 8]) > -0.5  # air corner, body centre


def test_folder_of_volumes_without_manifest(phantom_dir: Path, tmp_path: Path) -> None:
    import shutil

    for sub in ("sub-000", "sub-001"):
        shutil.copy(phantom_dir / sub / "ct.nii.gz", tmp_path / f"{sub}_ct.nii.gz")
    ds = build_dataset(DataConfig(source=str(tmp_path), modality="CT"), None)  # modality from the file header
    assert {r.path.name for r in ds.records} == {"sub-000_ct.nii.gz", "sub-001_ct.nii.gz"}
    assert ds[0][keys.MODALITY] == "CT"
    train, val = (build_dataset(DataConfig(source=str(tmp_path), modality="CT"), s) for s in ("train", "val"))
    assert len(train.records) == len(val.records) == 1 and train.records[0].path != val.records[0].path  # split by image (no subject column)


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError, match="extra"):
        DataConfig(source="x", sizes=(32, 32))
    with pytest.raises(ValidationError, match="size"):
        DataConfig(source="x", layout="3d", size=(32, 32))
    with pytest.raises(ValidationError):
        DataConfig(source="x", ct_window=(100, -100))
    cfg = DataConfig(source="x")
    with pytest.raises(ValidationError):
        cfg.layout = "3d"  # frozen
    assert (cfg.layout, cfg.size, cfg.slice_axis, cfg.context, cfg.split, cfg.eval_split) == ("2d", (32, 32), 2, 1, "train", "val")


@pytest.mark.parametrize("cache", [True, False])
def test_a_bad_volume_is_an_input_error_naming_it(phantom_dir: Path, tmp_path: Path, cache: bool) -> None:
    import shutil

    import SimpleITK as sitk

    shutil.copy(phantom_dir / "sub-000" / "ct.nii.gz", tmp_path / "a.nii.gz")
    bad = np.zeros((8, 8, 8), np.float32)
    bad[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(bad), str(tmp_path / "b.mha"))
    with pytest.raises(InputError, match="NaN") as err:
        build_dataset(DataConfig(source=str(tmp_path), cache=cache), None)
    assert str(tmp_path / "b.mha") in str(err.value)
    with pytest.raises(InputError, match="NaN"):  # the chain on its own (used by `encode`) too
        volume_transform(DataConfig(source=str(tmp_path)))({keys.IMAGE: str(tmp_path / "b.mha"), keys.MODALITY: ""})


def test_bad_sources_name_the_file(phantom_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        build_dataset(DataConfig(source=str(tmp_path / "nope.csv")), "train")
    unlabeled = tmp_path / "m.csv"
    unlabeled.write_text(f"image,modality,split\n{phantom_dir / 'sub-000' / 'ct.nii.gz'},CT,train\n")
    with pytest.raises(InputError, match="label"):
        build_dataset(DataConfig(source=str(unlabeled), labeled=True), "train")
    with pytest.raises(InputError, match="split"):
        build_dataset(DataConfig(source=str(unlabeled)), "val")
    with pytest.raises(InputError, match="CT and MR"):
        build_dataset(DataConfig(source=str(unlabeled), pairing="paired"), "train")


@pytest.mark.parametrize("pairing", ["none", "paired", "unpaired"])
def test_no_slice_with_enough_foreground_says_what_to_do_and_the_advice_works(phantom_dir: Path, tmp_path: Path, pairing: str) -> None:
    """The split, its subjects, the fullest slice; following the advice (that fraction) builds the split."""
    cfg = _cfg(phantom_dir, layout="2d", size=(24, 24), pairing=pairing, modality="CT" if pairing == "none" else None, foreground_fraction=0.99)
    with pytest.raises(InputError, match=r"of split 'val' \(\d+ image\(s\) of 1 subject\(s\)\).*manifest's split column") as err:
        build_dataset(cfg, "val")
    message = str(err.value)
    assert "\n" not in message
    advised = float(message.rsplit("at most ", 1)[1])
    assert 0.0 < advised < 0.99
    assert len(build_dataset(cfg.model_copy(update={"foreground_fraction": advised}), "val")) > 0
    # a manifest without a split column: the advice names data.split_fractions
    rows = _manifest(phantom_dir)
    unsplit = tmp_path / "manifest.csv"
    with unsplit.open("w", newline="") as f:
        writer = csv.DictWriter(f, [c for c in rows[0] if c != "split"])
        writer.writeheader()
        writer.writerows({k: (str(phantom_dir / v) if k == "image" else v) for k, v in r.items() if k != "split"} for r in rows)
    with pytest.raises(InputError, match="data.split_fractions"):
        build_dataset(cfg.model_copy(update={"source": str(unsplit)}), "val")
