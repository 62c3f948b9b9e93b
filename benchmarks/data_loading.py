"""Data loading: 2D slices per second through udl-med's slice dataset against plain MONAI.

Both sides read the same phantom files (CT and MR, NIfTI) and produce normalised
32x32 axial slices in [-1, 1] (CT: HU window, MR: robust percentiles), batched by a
``DataLoader`` (batch 16, shuffled, in-process), one epoch of the same number of items:

- peer: MONAI ``Dataset`` with ``LoadImaged`` -> ``EnsureChannelFirstd`` ->
  ``ScaleIntensityRanged`` / ``ScaleIntensityRangePercentilesd`` ->
  ``RandSpatialCropd((32, 32, 1))`` -> ``SqueezeDimd``, i.e. a file read per slice;
- peer (cached): the chain up to the crop in a MONAI ``CacheDataset`` (each file once),
  then ``RandSpatialCropd`` + ``SqueezeDimd`` per item in a MONAI ``Dataset``;
- ours: ``build_dataset`` with ``cache: false`` (a file read per slice) and ``cache: true``.

Each side is timed over whole epochs (the sides that read a file per item over
``SLOW_ITEMS`` random items of one), best of ``REPEATS``, alternating sides so load
drift hits both, with one torch thread (as DataLoader workers run). Ours is timed after ``build_dataset`` (made once per training run),
except in the ``cached, incl. build`` row, which adds the build to one epoch.

    .venv/bin/python benchmarks/data_loading.py
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset

BATCH, REPEATS, SIZE = 16, 3, (32, 32)
SLOW_ITEMS = 96  # items timed on the sides that read a file per item


def _epoch(dataset, seed: int = 0, limit: int | None = None) -> tuple[float, int]:
    """Seconds and items for one shuffled epoch (or its first ``limit`` items)."""
    generator = torch.Generator().manual_seed(seed)
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, torch.randperm(len(dataset), generator=generator)[:limit].tolist())
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=generator)
    n = 0
    start = time.perf_counter()
    for batch in loader:
        n += int(batch["image"].shape[0])
    return time.perf_counter() - start, n


def _peer(manifest: Path, n_items: int, cached: bool):
    from monai.data import CacheDataset, Dataset
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        RandSpatialCropd,
        ScaleIntensityRanged,
        ScaleIntensityRangePercentilesd,
        SqueezeDimd,
    )

    from udl_med.data.io import list_images

    records = [r for r in list_images(manifest) if r.split == "train"]
    per_file = max(1, round(n_items / len(records)))  # the same epoch length as ours
    parts = []
    for modality, scale in (
        ("CT", ScaleIntensityRanged("image", a_min=-1000, a_max=1000, b_min=-1, b_max=1, clip=True)),
        ("MR", ScaleIntensityRangePercentilesd("image", lower=0.5, upper=99.5, b_min=-1, b_max=1, clip=True)),
    ):
        files = [{"image": str(r.path)} for r in records if r.modality == modality]
        head = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), scale])
        tail = Compose([RandSpatialCropd("image", roi_size=(*SIZE, 1), random_size=False), SqueezeDimd("image", dim=-1)])
        if cached:  # each file loaded and scaled once, then cropped per item
            volumes = list(CacheDataset(files, head, progress=False))
            parts.append(Dataset(volumes * per_file, tail))
        else:
            parts.append(Dataset(files * per_file, Compose([head, tail])))
    return ConcatDataset(parts)


def _ours(manifest: Path, cache: bool):
    from udl_med.data.config import DataConfig
    from udl_med.data.datasets import build_dataset

    return build_dataset(DataConfig(source=str(manifest), layout="2d", size=SIZE, cache=cache), "train")


def main() -> int:
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)  # as in DataLoader worker processes, where data loading runs in training
    from udl_med.data.phantoms import write_phantoms

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_phantoms(Path(tmp) / "ph", n=12, shape=(64, 64, 32), seed=0, fmt="nifti")
        manifest = Path(tmp) / "ph" / "manifest.csv"
        ours_cached = _ours(manifest, cache=True)
        n_items = len(ours_cached)
        best: dict[str, float] = {}

        def record(name: str, seconds: float, n: int) -> None:
            best[name] = max(best.get(name, 0.0), n / seconds)

        for r in range(REPEATS):
            start = time.perf_counter()
            fresh = _ours(manifest, cache=True)
            build = time.perf_counter() - start
            t, n = _epoch(fresh, r)
            record("ours_cached_with_build", build + t, n)
            record("ours_cached", *_epoch(ours_cached, r))
            record("ours_uncached", *_epoch(_ours(manifest, cache=False), r, SLOW_ITEMS))
            record("peer", *_epoch(_peer(manifest, n_items, cached=False), r, SLOW_ITEMS))
            start = time.perf_counter()
            peer_cached = _peer(manifest, n_items, cached=True)
            build = time.perf_counter() - start
            t, n = _epoch(peer_cached, r)
            record("peer_cached_with_build", build + t, n)
            record("peer_cached", *_epoch(peer_cached, r))

    threads = torch.get_num_threads()
    plain = "MONAI Dataset: LoadImaged + EnsureChannelFirstd + ScaleIntensityRange(Percentiles)d + RandSpatialCropd"
    cached = "MONAI CacheDataset: the same chain, cached up to the crop"
    for case, ours_key, peer_key, peer_name, goal in (
        ("2d 32x32 slices, no cache", "ours_uncached", "peer", plain, 1.0),
        ("2d 32x32 slices, cached (steady state)", "ours_cached", "peer", plain, 1.0),
        ("2d 32x32 slices, cached, incl. building the cache", "ours_cached_with_build", "peer", plain, 1.0),
        ("2d 32x32 slices, both cached (steady state)", "ours_cached", "peer_cached", cached, 1.0),
        ("2d 32x32 slices, both cached, incl. building", "ours_cached_with_build", "peer_cached_with_build", cached, 1.0),
    ):
        ratio = best[ours_key] / best[peer_key]
        rows.append(
            {
                "benchmark": "data_loading",
                "case": f"{case}; 12 phantom subjects 64x64x32 (CT+MR), {n_items} slices/epoch, batch {BATCH}, {threads} threads",
                "metric": "slices_per_second",
                "ours": round(best[ours_key], 1),
                "peer_name": peer_name,
                "peer": round(best[peer_key], 1),
                "ratio": round(ratio, 2),
                "goal": f">= {goal}",
                "meets_goal": ratio >= goal,
            }
        )
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
