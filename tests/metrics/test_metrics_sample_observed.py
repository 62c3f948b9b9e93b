"""What the metrics sample of issue 26 (seed 1) found unobserved, through public functions only.

- ``near_copy_distance``: a copy rotated by a grid angle (made by an independent rotation
  of a larger image, then cropped) is found at a distance of about its own resampling
  error, far below what a mis-aligned sampling grid leaves; with ``blur=0`` (no blur) an
  exact shifted copy is at distance 0, not NaN.
- ``gaussian_fit`` refuses too few codes and mismatched variances word for word.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from udl_med.metrics.latent import gaussian_fit
from udl_med.metrics.nearcopy import near_copy_distance


def _smooth_images(n: int = 6, size: int = 48, seed: int = 0, sigma: float = 2.0) -> torch.Tensor:
    """``(n, size, size)`` smooth random images: noise low-passed by a Gaussian of ``sigma`` pixels."""
    noise = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    r = int(3 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    y = F.conv2d(F.pad(noise, (r, r, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.reshape(1, 1, -1, 1))[:, 0]


def _rotated(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """``x (B, H, W)`` rotated by ``degrees`` about its centre (bilinear, independent of the measure's own code)."""
    t = math.radians(degrees)
    theta = torch.tensor([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]])[None].expand(len(x), 2, 3)
    grid = F.affine_grid(theta, [len(x), 1, *x.shape[1:]], align_corners=False)
    return F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]


@pytest.mark.parametrize("degrees", [10.0, -5.0])
def test_a_copy_rotated_by_a_grid_angle_is_at_its_resampling_error(degrees: float) -> None:
    big = _smooth_images()
    reference = big[:, 8:40, 8:40]
    query = _rotated(big, degrees)[:, 8:40, 8:40]  # cropped inside: no border padding in the window
    found = near_copy_distance(query, reference)
    assert found.index.tolist() == list(range(6))
    assert float(found.distance.mean()) < 0.0018, found.distance  # a resampled copy: about 7e-4 (a grid off by a voxel fraction: 4e-3)
    assert all(abs(abs(a.angle) - abs(degrees)) <= 0.625 for a in found.alignments)


def test_without_blur_an_exact_shifted_copy_is_at_distance_zero() -> None:
    big = _smooth_images()
    reference = big[:, 8:40, 8:40]
    query = big[:, 10:42, 7:39] * 3.0 + 1.0  # shifted by (2, -1), intensities scaled and offset
    found = near_copy_distance(query, reference, blur=0.0)
    assert torch.isfinite(found.distance).all()
    assert found.index.tolist() == list(range(6)) and float(found.distance.max()) < 1e-9
    assert {a.shift for a in found.alignments} == {(2, -1)}


def test_gaussian_fit_refusals_word_for_word() -> None:
    with pytest.raises(ValueError) as err:
        gaussian_fit(np.zeros((1, 3)))
    assert str(err.value) == "codes needs at least 2 rows, got 1"
    with pytest.raises(ValueError) as err:
        gaussian_fit(np.zeros((4, 3)), np.ones((4, 2)))
    assert str(err.value) == "variances must have the shape of codes (4, 3), got (4, 2)"
