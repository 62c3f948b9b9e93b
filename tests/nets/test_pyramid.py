"""Laplacian pyramid: exact round trip, level sizes, band-pass residuals, argument checks."""

from __future__ import annotations

import pytest
import torch

from udl_med.nets.pyramid import check_pyramid_size, downsample, gaussian_pyramid, laplacian_pyramid, reconstruct, upsample


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_round_trip_is_exact(spatial_dims: int, mode: str) -> None:
    x = torch.rand(2, 1, *([16] * spatial_dims), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    pyramid = laplacian_pyramid(x, 3, mode)
    assert [tuple(p.shape[2:]) for p in pyramid] == [(16,) * spatial_dims, (8,) * spatial_dims, (4,) * spatial_dims]
    assert torch.allclose(reconstruct(pyramid, mode), x, rtol=0, atol=1e-12)  # exact up to (a - b) + b rounding
    x32 = x.float()
    assert (reconstruct(laplacian_pyramid(x32, 3, mode), mode) - x32).abs().max() < 1e-6


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_levels_are_averages_and_residuals_are_band_pass(spatial_dims: int) -> None:
    x = torch.arange(16.0**spatial_dims).view(1, 1, *([16] * spatial_dims))
    gauss = gaussian_pyramid(x, 2)
    assert torch.allclose(gauss[1].mean(), x.mean())  # the average pool keeps the mean
    first = x[(0, 0) + (slice(0, 2),) * spatial_dims].mean()
    assert torch.isclose(gauss[1][(0, 0) + (0,) * spatial_dims], first)
    constant = torch.full((1, 1, *([8] * spatial_dims)), 0.3)
    h = laplacian_pyramid(constant, 3, "linear")
    assert all(r.abs().max() < 1e-6 for r in h[:-1])  # a flat image has no detail
    assert torch.allclose(h[-1], torch.full_like(h[-1], 0.3))


def test_upsample_nearest_repeats_and_downsample_inverts_it() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    up = upsample(x, "nearest")
    assert up.shape == (1, 1, 4, 4) and up[0, 0, 0, 1] == 1.0 and up[0, 0, 3, 3] == 4.0
    assert torch.equal(downsample(up), x)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="divisible by 2\\*\\*\\(levels - 1\\) = 4"):
        check_pyramid_size((12, 10), 3)
    with pytest.raises(ValueError, match="valid: nearest, linear"):
        upsample(torch.zeros(1, 1, 4, 4), "cubic")
    with pytest.raises(ValueError, match="even spatial sizes"):
        downsample(torch.zeros(1, 1, 5, 4))
    with pytest.raises(ValueError, match="at least one level"):
        reconstruct([])
