"""``udl-med fid``: FID and KID, with bootstrap intervals, between two image sets on disk.

An image set is a volume, a DICOM series, a folder of volumes, a manifest CSV, or saved
statistics (``.npz`` from :func:`set_statistics` / ``--save-stats``). Images are read
with :func:`udl_med.data.io.read_image`, normalised into [-1, 1] by
:func:`udl_med.data.normalize.normalize` (CT: fixed HU window; MR: robust percentiles)
and cut into views by :func:`udl_med.metrics.compare.image_views` (``2``: foreground
slices; ``2.5``: the three middle planes, averaged; ``3``: whole volumes). Features
stream through :class:`~udl_med.metrics.statistics.StreamingStats`, so a set of any size
fits in memory; the measures themselves are :mod:`udl_med.metrics.compare`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from udl_med.data.io import list_images, read_image
from udl_med.data.normalize import normalize
from udl_med.errors import InputError
from udl_med.metrics.compare import (
    compare_stats,
    compare_tensors,
    fake_inception_score,
    image_views,
    parse_dims,
    resize_view,
    tensor_statistics,
)
from udl_med.metrics.extractors import FeatureExtractor, build_extractor
from udl_med.metrics.kid import KID_SUBSETS
from udl_med.metrics.prdc import prdc_report
from udl_med.metrics.statistics import DEFAULT_MAX_FEATURES, FeatureStats, StreamingStats, load_stats, save_stats

logger = logging.getLogger(__name__)

__all__ = [
    "compare_sets",
    "compare_stats",
    "compare_tensors",
    "image_views",
    "iter_normalised",
    "parse_dims",
    "set_modality",
    "set_statistics",
    "tensor_statistics",
]


def _modality_of(records: list[Any]) -> str | None:
    found = {r.modality for r in records if r.modality}
    return found.pop() if len(found) == 1 else None


def iter_normalised(source: str | Path, default_modality: str | None = None, seen: Counter | None = None) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(path, image (1, *spatial) in [-1, 1])`` for every image of ``source``.

    ``seen`` counts the images per modality, as the manifest or the file says (``None``:
    neither says; ``default_modality`` is then used to normalise, but not counted).
    """
    for record in list_images(source):
        image = read_image(record.path)
        said = record.modality or image.meta.get("modality") or None
        if seen is not None:
            seen[said] += 1
        modality = said or default_modality
        tensor, _ = normalize(image.as_tensor(), modality)
        yield str(record.path), tensor


def _counts(seen: Counter) -> str:
    return ", ".join(f"{n} {m or 'without a modality'}" for m, n in sorted(seen.items(), key=lambda kv: (kv[0] is None, str(kv[0]))))


def warn_modalities(real: str | Path, real_seen: Counter, fake: str | Path, fake_seen: Counter) -> bool:
    """Warn (and return True) when REAL and FAKE hold different modalities, as far as their manifests or files say.

    FID between CT and MR measures the modality gap, not the generator; a set that does
    not say its modality is not judged.
    """
    real_known = {m for m in real_seen if m}
    fake_known = {m for m in fake_seen if m}
    if not real_known or not fake_known or real_known == fake_known:
        return False
    logger.warning(
        "REAL and FAKE differ in modality (REAL %s: %s; FAKE %s: %s): FID then measures the modality gap too; "
        "compare sets of one modality (a manifest with only those rows)",
        real, _counts(real_seen), fake, _counts(fake_seen),
    )  # fmt: skip
    return True


def set_modality(source: str | Path) -> str | None:
    """The single modality of an image set's manifest, if it has one."""
    if str(source).endswith(".npz"):
        return None
    return _modality_of(list_images(source))


def _features_of_images(
    images: Iterator[tuple[str, Tensor]], extractor: FeatureExtractor, layout: str, stats: StreamingStats, batch_size: int, name: str = "images"
) -> None:
    size = extractor.preprocessing.size
    pending: list[Tensor] = []

    def flush() -> None:
        if pending:
            stats.update(extractor(torch.stack(pending)))
            pending.clear()

    n_images = n_views = 0
    for path, image in images:
        try:
            views = image_views(image, layout)
        except ValueError as err:
            raise InputError(path, str(err)) from None
        views = [resize_view(v, size) for v in views]
        if layout == "2.5d":
            planes = extractor(torch.stack(views))  # (3, F)
            stats.update(planes.mean(dim=0, keepdim=True))
        else:
            for view in views:
                if pending and view.shape != pending[0].shape:
                    raise InputError(path, f"image size {tuple(view.shape[1:])} differs from earlier ones; the extractor has no fixed input size")
                pending.append(view)
                if len(pending) >= batch_size:
                    flush()
        n_images += 1
        n_views += 1 if layout == "2.5d" else len(views)
        if n_images % 50 == 0:
            logger.info("%s: %d images read so far, %d %s views with foreground", name, n_images, n_views, layout)
    flush()
    logger.info("%s: %d images, %d %s views with foreground: %d feature vectors", name, n_images, n_views, layout, stats.n)


def set_statistics(
    source: str | Path,
    extractor: FeatureExtractor | str = "random",
    dims: str = "2",
    batch_size: int = 16,
    max_features: int = DEFAULT_MAX_FEATURES,
    default_modality: str | None = None,
    seed: int = 0,
    device: str | None = None,
    seen: Counter | None = None,
) -> FeatureStats:
    """Feature statistics of an image set (or the saved statistics ``source.npz``); ``seen`` counts its modalities.

    Raises:
        UserError: unreadable images, no usable slices, or an extractor/dims mismatch.
    """
    layout, spatial_dims = parse_dims(dims)
    if str(source).endswith(".npz"):
        return load_stats(source)
    if isinstance(extractor, str):
        extractor = build_extractor(extractor, spatial_dims)
    stats = StreamingStats(max_features=max_features, seed=seed, key=extractor.key(layout), device=device)
    _features_of_images(iter_normalised(source, default_modality, seen), extractor, layout, stats, batch_size, name=str(source))
    if stats.n < 2:
        raise InputError(source, f"{stats.n} {layout} view(s) with foreground; at least 2 are needed for FID")
    return stats.compute()


def compare_sets(
    real: str | Path,
    fake: str | Path,
    extractor: str = "random",
    dims: str = "2",
    bootstrap: int = 100,
    kid_subset_size: int | None = None,
    kid_subsets: int = KID_SUBSETS,
    seed: int = 0,
    batch_size: int = 16,
    save_real_stats: str | Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """FID and KID between image sets REAL and FAKE (folders, manifests, volumes or ``.npz``).

    Args:
        extractor: ``random``, ``encoder:PATH``, ``inception:PATH``, ``radimagenet:PATH``,
            ``swav:PATH`` or ``medicalnet:PATH`` (see :func:`udl_med.metrics.extractors.build_extractor`).
        dims: ``"2"`` (slices), ``"2.5"`` (three middle planes, averaged) or ``"3"`` (volumes).
        bootstrap: bootstrap replicates for the 95% intervals; 0 for none.
        kid_subset_size: KID subset size; None: min(1000, n_real, n_fake).
        save_real_stats: write REAL's statistics (with features) to this ``.npz`` for reuse.
        device: torch device of the statistics and the Fréchet distance (default CPU).

    Returns:
        ``fid``, ``fid_ci_low``, ``fid_ci_high``, ``kid``, ``kid_std``, ``kid_ci_low``,
        ``kid_ci_high``, ``n_real``, ``n_fake`` (feature vectors), ``feature_dim``,
        ``kid_subset_size``, ``extractor``, ``dims``; ``precision``, ``recall``,
        ``density``, ``coverage`` (:mod:`udl_med.metrics.prdc`; k = 3 and 5) with
        ``<key>_ci_low`` / ``<key>_ci_high`` (None without bootstrap; all None for
        statistics saved without features or sets smaller than k + 1); with a class head
        (``inception``) and 2D slices also ``inception_score`` and ``inception_score_std`` of FAKE.

    Raises:
        UserError: bad paths or images, too few samples, mismatched statistics or feature
            sizes, a weight file with the wrong hash.
    """
    layout, spatial_dims = parse_dims(dims)
    needs_images = not (str(real).endswith(".npz") and str(fake).endswith(".npz"))
    net = build_extractor(extractor, spatial_dims) if needs_images else None
    modality = set_modality(real) or set_modality(fake)
    real_seen, fake_seen = Counter(), Counter()
    real_stats = set_statistics(real, net, dims, batch_size, default_modality=modality, seed=seed, device=device, seen=real_seen)
    fake_stats = set_statistics(fake, net, dims, batch_size, default_modality=modality, seed=seed + 1, device=device, seen=fake_seen)
    warn_modalities(real, real_seen, fake, fake_seen)
    if save_real_stats is not None:
        save_stats(real_stats, save_real_stats)
    result = compare_stats(real_stats, fake_stats, bootstrap, kid_subset_size, kid_subsets, seed, device=device)
    key = real_stats.key
    result.update(extractor=key.extractor if key else extractor, dims=str(dims))
    if real_stats.features is not None and fake_stats.features is not None:
        result.update(prdc_report(real_stats.features, fake_stats.features, n_boot=bootstrap, seed=seed))
    else:
        result.update(prdc_report([], []))
    if net is not None and net.num_classes and layout == "2d" and fake_stats.features is not None:
        result.update(fake_inception_score(fake_stats, net))
    return result
