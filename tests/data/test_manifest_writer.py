"""write_manifest: where relative image paths point, as the pipeline's `select` step and `synthesize` use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from udl_med.data.manifest import list_images, write_manifest
from udl_med.data.phantoms import write_phantoms
from udl_med.data.manifest import select_images


def test_select_with_relative_paths_reads_back_the_same_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's case: phantoms in out/phantoms, the selection written to out/ct.csv, paths relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    write_phantoms(Path("out/phantoms"), n=2, shape=(16, 16, 8), seed=0, fmt="nifti")
    written = select_images("out/phantoms/manifest.csv", "out/ct.csv", modality="CT")
    images = [r.path.resolve() for r in list_images(written["manifest"])]
    expected = sorted((tmp_path / "out" / "phantoms").glob("sub-*/ct.nii.gz"))
    assert sorted(images) == expected
    assert Path("out/ct.csv").read_text().splitlines()[1].startswith("phantoms/sub-")  # relative to the CSV's folder


def test_a_mappings_relative_image_is_relative_to_the_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "a.nii.gz").write_bytes(b"")
    path = write_manifest("synthetic/manifest.csv", [{"image": "a.nii.gz", "label": 1}])
    assert path.read_text().splitlines()[1].split(",")[:2] == ["a.nii.gz", "1"]
    outside = write_manifest(tmp_path / "other" / "manifest.csv", [{"image": str(tmp_path / "synthetic" / "a.nii.gz")}])
    assert outside.read_text().splitlines()[1].startswith(str(tmp_path / "synthetic" / "a.nii.gz"))
