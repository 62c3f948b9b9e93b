"""DiffAugment's and ADA's transforms: values, differentiability, one draw for real and fake, 2D and 3D."""

from __future__ import annotations

import math

import pytest
import torch

from udl_med.nets.ada import ADA_DEFAULT_POLICY, ADA_POLICIES, AdaptiveAugment, affine_resample
from udl_med.nets.diffaugment import DIFFAUGMENT_POLICIES, DiffAugment, cutout, flip, intensity, reflect_index, translate


def _images(spatial_dims: int, n: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 2, *([size] * spatial_dims), generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_translate_moves_each_item_and_fills_the_border(spatial_dims: int) -> None:
    x = _images(spatial_dims)
    shift = torch.zeros(4, spatial_dims, dtype=torch.long)
    shift[1, 0], shift[2, -1], shift[3] = 2, -3, 1
    out = translate(x, shift, fill=0.5)
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1][:, 2:], x[1][:, :-2], rtol=0, atol=0)  # output[i] = input[i - 2] along axis 0
    assert (out[1][:, :2] == 0.5).all()
    torch.testing.assert_close(out[2][..., :-3], x[2][..., 3:], rtol=0, atol=0)
    assert (out[2][..., -3:] == 0.5).all()
    inner = (slice(None),) + (slice(1, None),) * spatial_dims
    back = (slice(None),) + (slice(None, -1),) * spatial_dims
    torch.testing.assert_close(out[3][inner], x[3][back], rtol=0, atol=0)
    # reflect padding mirrors the inside instead
    mirrored = translate(x, shift, reflect=True)
    torch.testing.assert_close(mirrored[1][:, 1], x[1][:, 1], rtol=0, atol=0)  # index -1 -> 1
    torch.testing.assert_close(mirrored[1][:, 0], x[1][:, 2], rtol=0, atol=0)  # index -2 -> 2


def test_reflect_index_mirrors_about_the_border_voxels() -> None:
    assert reflect_index(torch.tensor([-3, -2, -1, 0, 3, 4, 5, 6]), 4).tolist() == [3, 2, 1, 0, 3, 2, 1, 0]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cutout_flip_and_intensity_values(spatial_dims: int) -> None:
    x = _images(spatial_dims)
    centre = torch.full((4, spatial_dims), 4, dtype=torch.long)
    out = cutout(x, centre, [4] * spatial_dims, fill=0.0)
    box = (slice(None),) + (slice(2, 6),) * spatial_dims
    assert (out[0][box] == 0).all() and (out.ne(x)).sum() <= out.eq(0).sum()
    outside = out.clone()
    outside[(slice(None),) + box] = x[(slice(None),) + box]
    torch.testing.assert_close(outside, x, rtol=0, atol=0)
    flips = torch.zeros(4, spatial_dims, dtype=torch.bool)
    flips[1, 0] = True
    flipped = flip(x, flips)
    torch.testing.assert_close(flipped[1], x[1].flip(1), rtol=0, atol=0)
    torch.testing.assert_close(flipped[0], x[0], rtol=0, atol=0)
    b, c = torch.tensor([0.0, 0.5, 0.0, -0.2]), torch.tensor([1.0, 1.0, 2.0, 0.5])
    shifted = intensity(x, b, c)
    mean = x.flatten(1).mean(1)
    for i in range(4):
        torch.testing.assert_close(shifted[i], (x[i] - mean[i]) * c[i] + mean[i] + b[i])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_affine_resample_keeps_identity_items_and_rotates_a_quarter_turn(spatial_dims: int) -> None:
    x = _images(spatial_dims, n=2)
    out = affine_resample(x, torch.tensor([1.0, 1.0]), torch.tensor([0.0, math.pi / 2]))
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=0)
    # a quarter turn in the plane of spatial axes 0 and 1 is a permutation of voxels
    turned = torch.rot90(x[1], 1, dims=(1, 2))
    assert torch.allclose(out[1], turned, atol=1e-5) or torch.allclose(out[1], torch.rot90(x[1], -1, dims=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize(
    "module",
    [DiffAugment(("translation",)), DiffAugment(("cutout",)), DiffAugment(("intensity",)), DiffAugment()]
    + [AdaptiveAugment((name,), p=1.0) for name in ADA_POLICIES]
    + [AdaptiveAugment(p=1.0)],
    ids=lambda m: repr(m),
)
def test_every_transform_is_differentiable_and_one_draw_treats_real_and_fake_alike(spatial_dims: int, module: torch.nn.Module) -> None:
    real = _images(spatial_dims)
    fake = real.clone().requires_grad_(True)
    torch.manual_seed(3)
    seen = module(torch.cat([real, fake]))  # one call, as the adversary makes it
    # differentiable: G's gradient reaches the fakes through the transform
    (grad,) = torch.autograd.grad(seen[4:].square().sum(), fake)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
    # the same draw applied to a real and a fake batch gives the same images when the batches are equal
    torch.manual_seed(5)
    a = module(real)
    torch.manual_seed(5)
    b = module(fake)
    torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    assert not torch.equal(a, real), "the transform changed nothing"


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_ada_at_p_zero_is_the_identity_and_p_sets_the_share_of_items_hit(spatial_dims: int) -> None:
    x = _images(spatial_dims, n=400, size=8)
    torch.testing.assert_close(AdaptiveAugment(p=0.0)(x), x, rtol=0, atol=0)
    torch.manual_seed(0)
    hit = (AdaptiveAugment(("noise",), p=0.3)(x) != x).flatten(1).any(1).float().mean()
    assert 0.22 < hit < 0.38


def test_ada_default_leaves_out_flips_and_policies_are_checked() -> None:
    assert "flip" not in ADA_DEFAULT_POLICY and set(DIFFAUGMENT_POLICIES) == {"translation", "cutout", "intensity"}
    with pytest.raises(ValueError, match="saturation"):
        DiffAugment(("saturation",))
    with pytest.raises(ValueError, match="twice"):
        AdaptiveAugment(("noise", "noise"))
    with pytest.raises(ValueError, match="p must be"):
        AdaptiveAugment(p=1.5)


def test_ada_controller_moves_p_towards_the_target_every_interval() -> None:
    ada = AdaptiveAugment(p=0.5, target=0.6, interval=2, kimg=0.1)  # 100 images move p by 1
    confident = torch.ones(10)  # r_t = 1 > 0.6
    ada.observe(confident, 10, step=1)
    assert float(ada.p) == 0.5  # not due before step 2
    ada.observe(confident, 10, step=2)
    assert float(ada.p) == pytest.approx(0.5 + 20 / 100) and float(ada.rt) == 1.0
    ada.observe(-torch.ones(10), 10, step=3)
    ada.observe(-torch.ones(10), 10, step=4)  # r_t = -1 < 0.6
    assert float(ada.p) == pytest.approx(0.5)
    fixed = AdaptiveAugment(p=0.3, target=None, interval=1)
    fixed.observe(confident, 10, step=1)
    assert float(fixed.p) == 0.3 and float(fixed.rt) == 1.0
    assert {"p", "sign_sum", "sign_count", "images", "last_adjust", "rt"} <= set(ada.state_dict())
