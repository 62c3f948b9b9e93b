"""DICOM series built in the tests from the CT and MR files that pydicom ships."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np


def dicom_testdata(name: str):
    import pydicom
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file(name))


def make_series(
    folder: Path,
    name: str = "CT_small.dcm",
    n: int = 5,
    step: float = 2.5,
    orientation: list[float] | None = None,
    positions: list[float] | None = None,
    shuffle_seed: int | None = 0,
    series_uid: str | None = None,
) -> tuple[Path, list[np.ndarray], np.ndarray]:
    """Write an ``n``-slice series from one pydicom test file, under shuffled file names.

    Slice k is the source image rolled by 3k columns, at ``positions[k]`` (default
    ``k * step``) along the slice normal. Returns the folder, the stored slices in
    position order and the first slice's position.
    """
    from pydicom.uid import generate_uid

    src = dicom_testdata(name)
    if orientation is not None:
        src.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    iop = np.array([float(v) for v in src.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array([float(v) for v in src.ImagePositionPatient])
    positions = positions if positions is not None else [k * step for k in range(n)]
    series_uid = series_uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(shuffle_seed).permutation(len(positions)) if shuffle_seed is not None else range(len(positions))
    slices = []
    for k, d in enumerate(positions):
        ds = copy.deepcopy(src)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + d * normal]
        ds.InstanceNumber = int(order[k]) + 1  # instance numbers and names do not follow position
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        arr = np.roll(src.pixel_array, 3 * k, axis=1).astype(src.pixel_array.dtype)
        ds.PixelData = arr.tobytes()
        ds.save_as(folder / f"img_{order[k]:03d}.dcm")
        slices.append(arr)
    return folder, slices, origin
