"""Translation metrics: hand-computed MAE/PSNR/SSIM, the body mask, the linear fit, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from udl_med.metrics.translation import body_mask, linear_baseline, linear_fit, masked_mae, psnr, ssim, translation_metrics


def test_masked_mae_by_hand() -> None:
    pred = torch.tensor([[0.0, 1.0], [2.0, 5.0]])
    target = torch.zeros(2, 2)
    mask = torch.tensor([[True, True], [True, False]])
    assert masked_mae(pred, target, mask) == pytest.approx(1.0)  # (0 + 1 + 2) / 3
    with pytest.raises(ValueError, match="empty"):
        masked_mae(pred, target, torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="shapes differ"):
        masked_mae(pred, target[:1], mask)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_psnr_and_ssim(spatial_dims: int) -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand((16,) * spatial_dims, generator=g) * 2 - 1
    # constant offset 0.1: MSE 0.01, PSNR = 20 log10(2) - 10 log10(0.01)
    assert psnr(target + 0.1, target) == pytest.approx(20 * math.log10(2.0) + 20.0, abs=1e-6)
    assert ssim(target, target) == pytest.approx(1.0, abs=1e-6)
    noisy = target + 0.5 * torch.randn(target.shape, generator=g)
    assert ssim(noisy, target) < 0.9
    assert ssim(torch.rand((20, 20, 5), generator=g), torch.rand((20, 20, 5), generator=g)) < 0.5  # thin axis: smaller window


def test_body_mask_fills_holes() -> None:
    ct = torch.full((9, 9, 3), -1000.0)
    ct[2:7, 2:7] = 40.0
    ct[4, 4] = -900.0  # air inside the body (bowel gas) is body
    mask = body_mask(ct)
    assert mask[4, 4, 1] and mask.sum() == 25 * 3 and not mask[0, 0, 0]


def test_linear_fit_recovers_the_map_and_is_least_squares() -> None:
    g = torch.Generator().manual_seed(1)
    xs = [torch.rand(5, 6, generator=g) for _ in range(3)]
    ms = [torch.rand(5, 6, generator=g) > 0.3 for _ in range(3)]
    a, b = linear_fit(xs, [3 * x - 0.5 for x in xs], ms)
    assert (a, b) == (pytest.approx(3.0), pytest.approx(-0.5))
    ys = [torch.rand(5, 6, generator=g) for _ in range(3)]
    a, b = linear_fit(xs, ys, ms)

    def sse(a_: float, b_: float) -> float:
        return sum(float(((a_ * x + b_ - y)[m] ** 2).sum()) for x, y, m in zip(xs, ys, ms))

    assert all(sse(a, b) <= sse(a + da, b + db) for da, db in ((0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01)))
    with pytest.raises(ValueError, match="no voxels"):
        linear_fit(xs, ys, [torch.zeros_like(m) for m in ms])


def test_baseline_and_metric_units() -> None:
    x = torch.tensor([[0.5, -1.0], [0.0, 0.9]])
    mask = torch.tensor([[True, False], [True, True]])
    pred = linear_baseline(x, 2.0, 0.1, mask)
    torch.testing.assert_close(pred, torch.tensor([[1.0, -1.0], [0.1, 1.0]], dtype=torch.float64))  # clipped; air outside
    torch.testing.assert_close(linear_baseline(x, 2.0, 0.1), torch.tensor([[1.0, -1.0], [0.1, 1.0]], dtype=torch.float64))
    target = torch.zeros(8, 8, 8)
    m = translation_metrics(target + 0.05, target, torch.ones(8, 8, 8, dtype=torch.bool), "CT", (-1000.0, 1000.0))
    assert m["mae_hu"] == pytest.approx(50.0)  # 0.05 of the normalised range = 50 HU in a 2000 HU window
    assert "mae_hu" not in translation_metrics(target + 0.05, target, target > -1, "MR", (-1000.0, 1000.0))
