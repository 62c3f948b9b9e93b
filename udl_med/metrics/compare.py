"""FID, KID and Inception Score between in-memory image sets: the measures ``udl-med fid`` reports.

Images are normalised tensors in [-1, 1]; :func:`image_views` cuts what the extractor
sees of one image:

- ``2`` (2D): every slice along ``slice_axis`` (2, axial for RAS volumes) with at least
  ``foreground_fraction`` of its pixels above background; a 2D image (or a one-slice
  volume, across any axis) is itself, whatever its content, so generated slices are
  never filtered out.
- ``2.5``: the three orthogonal middle planes of a volume; their features are averaged
  into one vector per volume.
- ``3``: whole volumes (or patches), resized by the extractor.

:func:`compare_stats` compares two feature statistics (FID, KID, bootstrap intervals),
:func:`compare_tensors` two batches. Reading image sets from files, and the ``fid``
command, live in :mod:`udl_med.evaluation.compare`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from udl_med.errors import UserError
from udl_med.metrics.bootstrap import bootstrap_ci
from udl_med.metrics.extractors import FeatureExtractor, build_extractor
from udl_med.metrics.inception_score import inception_score
from udl_med.metrics.kid import KID_SUBSETS, KernelMatrices
from udl_med.metrics.prdc import prdc_report
from udl_med.metrics.statistics import DEFAULT_MAX_FEATURES, FeatureStats, StreamingStats, check_comparable, frechet_distance_stats

logger = logging.getLogger(__name__)

LAYOUTS = {"2": "2d", "2.5": "2.5d", "3": "3d"}
SLICE_AXIS = 2  # the last spatial axis: axial slices of RAS volumes (DataConfig's default)
FOREGROUND_FRACTION = 0.05  # DataConfig's default
FOREGROUND_LEVEL = -1.0 + 0.05  # normalised intensity above which a voxel is foreground


def parse_dims(dims: str | int | float) -> tuple[str, int]:
    """``"2" | "2.5" | "3"`` -> (layout, spatial dims of the extractor)."""
    key = {"2.0": "2", "3.0": "3"}.get(str(dims), str(dims))
    if key not in LAYOUTS:
        raise UserError(f"dims must be 2, 2.5 or 3, got {dims!r}")
    return LAYOUTS[key], 3 if key == "3" else 2


# --- views ---------------------------------------------------------------------------


def image_views(image: Tensor, layout: str, slice_axis: int = SLICE_AXIS, foreground_fraction: float = FOREGROUND_FRACTION) -> list[Tensor]:
    """What the extractor sees of one normalised image ``(1, *spatial)`` in [-1, 1].

    Returns a list of ``(1, *spatial')`` tensors: 2D slices (``2d``), the three middle
    planes (``2.5d``, to be averaged) or the volume itself (``3d``).

    Raises:
        ValueError: a 2D image for ``2.5d``/``3d``.
    """
    spatial = image.shape[1:]
    if len(spatial) == 3 and sum(s == 1 for s in spatial) == 1:  # a one-slice volume is a 2D image
        image = image.squeeze(spatial.index(1) + 1)
        spatial = image.shape[1:]
    if len(spatial) == 2:
        if layout != "2d":
            raise ValueError(f"a 2D image {tuple(spatial)} has no {layout} view; use dims 2")
        return [image]
    if layout == "3d":
        return [image]
    if layout == "2.5d":
        return [image.select(axis + 1, spatial[axis] // 2) for axis in range(3)]  # planes normal to x, y, z
    slices = image.unbind(slice_axis + 1)
    return [s for s in slices if (s > FOREGROUND_LEVEL).float().mean() >= foreground_fraction]


def resize_view(x: Tensor, size: tuple[int, ...] | None) -> Tensor:
    """Resize ``(C, *spatial)`` to ``size`` as the extractors do (so that views stack)."""
    if size is None or tuple(x.shape[1:]) == tuple(size):
        return x
    mode = "bilinear" if x.ndim == 3 else "trilinear"
    return F.interpolate(x[None].float(), size=size, mode=mode, align_corners=False)[0]


def tensor_statistics(images: Tensor, extractor: FeatureExtractor, batch_size: int = 16, layout: str = "2d") -> FeatureStats:
    """Feature statistics of in-memory images ``(N, C, *spatial)`` in [-1, 1], one view each."""
    stats = StreamingStats(max_features=max(DEFAULT_MAX_FEATURES, images.shape[0]), key=extractor.key(layout))
    for batch in images.split(batch_size):
        stats.update(extractor(batch))
    return stats.compute()


# --- the comparison ------------------------------------------------------------------


def compare_stats(
    real: FeatureStats,
    fake: FeatureStats,
    bootstrap: int = 100,
    kid_subset_size: int | None = None,
    kid_subsets: int = KID_SUBSETS,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """FID, KID and their bootstrap intervals between two feature statistics.

    KID and the intervals need the features; statistics saved without them give ``None``.

    Raises:
        UserError: not comparable (extractor, preprocessing, feature size), too few samples.
    """
    check_comparable(real, fake)
    result: dict[str, Any] = {
        "fid": frechet_distance_stats(real, fake, device=device),
        "fid_ci_low": None,
        "fid_ci_high": None,
        "kid": None,
        "kid_std": None,
        "kid_ci_low": None,
        "kid_ci_high": None,
        "n_real": real.n,
        "n_fake": fake.n,
        "feature_dim": real.dim,
    }
    if real.features is None or fake.features is None:
        logger.warning("statistics without features: KID and confidence intervals are not available")
        return result
    for name, s in (("real", real), ("fake", fake)):
        if not s.complete:
            logger.info("KID and intervals of the %s set use a uniform sample of %d of its %d vectors", name, s.features.shape[0], s.n)
    kernels = KernelMatrices(real.features, fake.features)
    kid = kernels.kid(kid_subset_size, kid_subsets, seed)
    result.update(kid=kid.mean, kid_std=kid.std, kid_subset_size=kid.subset_size)
    if bootstrap:
        ci = bootstrap_ci(real.features, fake.features, n_boot=bootstrap, seed=seed, kernels=kernels)
        result.update(fid_ci_low=ci.fid.low, fid_ci_high=ci.fid.high, kid_ci_low=ci.kid.low, kid_ci_high=ci.kid.high)
    return result


def fake_inception_score(stats: FeatureStats, extractor: FeatureExtractor) -> dict[str, float]:
    """Inception Score of a set from its kept features, through the extractor's class head."""
    with torch.no_grad():
        logits = extractor.head(torch.as_tensor(stats.features, dtype=torch.float32))
    score = inception_score(logits.double().numpy(), splits=min(10, stats.features.shape[0]))
    return {"inception_score": score.mean, "inception_score_std": score.std}


def compare_tensors(
    real: Tensor,
    fake: Tensor,
    extractor: FeatureExtractor | str = "random",
    bootstrap: int = 100,
    kid_subset_size: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """FID, KID, precision, recall, density and coverage between in-memory images ``(N, C, *spatial)`` in [-1, 1] (one view each).

    For the demo and for evaluation inside training: 2D batches use a 2D extractor,
    3D batches a 3D one. The PRDC keys are those of :func:`udl_med.metrics.prdc.prdc_report`.
    """
    if real.ndim != fake.ndim or real.ndim not in (4, 5):
        raise UserError(f"images must both be (N, C, H, W) or (N, C, D, H, W), got {tuple(real.shape)} and {tuple(fake.shape)}")
    spatial_dims = real.ndim - 2
    net = build_extractor(extractor, spatial_dims) if isinstance(extractor, str) else extractor
    layout = f"{spatial_dims}d"
    real_stats, fake_stats = tensor_statistics(real, net, layout=layout), tensor_statistics(fake, net, layout=layout)
    result = compare_stats(real_stats, fake_stats, bootstrap, kid_subset_size, KID_SUBSETS, seed)
    result.update(extractor=net.name, dims=str(spatial_dims))
    result.update(prdc_report(real_stats.features, fake_stats.features, n_boot=bootstrap, seed=seed))
    return result


__all__ = [
    "compare_stats",
    "compare_tensors",
    "fake_inception_score",
    "image_views",
    "parse_dims",
    "resize_view",
    "tensor_statistics",
]
