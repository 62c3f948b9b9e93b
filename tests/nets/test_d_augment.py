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
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=1e-5)  # resampled on the voxel centres: equal up to rounding
    # a quarter turn in the plane of spatial axes 0 and 1 is a permutation of voxels
    turned = torch.rot90(x[1], 1, dims=(1, 2))
    assert torch.allclose(out[1], turned, atol=1e-5) or torch.allclose(out[1], torch.rot90(x[1], -1, dims=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_affine_resample_folds_integer_shifts_and_flips_into_one_resampling_with_reflect_borders(spatial_dims: int) -> None:
    """A pure integer shift is ``translate(..., reflect=True)`` (border rule abcd|cba), a pure flip is ``flip``, up to rounding; they compose before the rotation."""
    x = _images(spatial_dims, n=4, size=8)
    shift = torch.tensor([[3, -2, 1][:spatial_dims], [-1, 0, 2][:spatial_dims], [0, 0, 0][:spatial_dims], [1, 1, -3][:spatial_dims]])
    ones, zeros = torch.ones(4), torch.zeros(4)
    moved = affine_resample(x, ones, zeros, shift)
    torch.testing.assert_close(moved, translate(x, shift, reflect=True), rtol=0, atol=1e-5)  # the shifted-in border mirrors the inside
    flips = torch.tensor([True, False, True, False])
    mirrored = torch.zeros(4, spatial_dims, dtype=torch.bool)
    mirrored[:, 0] = flips
    torch.testing.assert_close(affine_resample(x, ones, zeros, None, flips), flip(x, mirrored), rtol=0, atol=1e-5)
    # flip, then shift, then the quarter turn (a permutation of voxels: no border to differ)
    quarter = torch.full((4,), math.pi / 2)
    both = affine_resample(x, ones, quarter, shift, flips)
    torch.testing.assert_close(both, affine_resample(translate(flip(x, mirrored), shift, reflect=True), ones, quarter), rtol=0, atol=1e-5)


def test_affine_resample_rotates_in_voxel_units_on_a_non_square_grid() -> None:
    """A quarter turn of a 6 x 6 square inside a 6 x 10 image is a quarter turn of that square (normalised coordinates would shear it)."""
    x = torch.zeros(1, 1, 6, 10)
    x[0, 0, :, 2:8] = torch.arange(36.0).reshape(6, 6)
    out = affine_resample(x, torch.ones(1), torch.tensor([math.pi / 2]))
    inner = out[0, 0, :, 2:8]
    assert torch.allclose(inner, torch.rot90(x[0, 0, :, 2:8], 1), atol=1e-4) or torch.allclose(inner, torch.rot90(x[0, 0, :, 2:8], -1), atol=1e-4)


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


# share of items a transform alone changes at p: translation misses when it draws the zero shift (1/3 per axis at size 8)
HIT_SHARE = {"flip": 0.5, "translation": 1 - (1 / 3) ** 2, "scaling": 1.0, "rotation": 1.0, "intensity": None, "noise": 1.0, "cutout": 1.0}


@pytest.mark.parametrize("name", ADA_POLICIES)
def test_each_ada_transform_hits_items_with_probability_p_and_leaves_the_others_bit_exact(name: str) -> None:
    """Each transform changes a share p (times its own chance of a non-identity draw) of the items; the rest stay bit-exact, geometric ones included."""
    p, x = 0.4, _images(2, n=3000, size=8)
    torch.manual_seed(1)
    out = AdaptiveAugment((name,), p=p, target=None)(x)
    changed = (out != x).flatten(1).any(1).float().mean().item()
    expected = 1 - (1 - p) ** 2 if name == "intensity" else p * HIT_SHARE[name]  # intensity: brightness and contrast each with p
    assert abs(changed - expected) < 0.04, (name, changed, expected)  # an item missed but resampled (rounding) would count as changed


def test_ada_transforms_are_drawn_independently() -> None:
    """With the whole default policy at p, the share of items left alone is the product over the transforms' misses."""
    p, x = 0.3, _images(2, n=4000, size=8)
    torch.manual_seed(2)
    out = AdaptiveAugment(ADA_DEFAULT_POLICY, p=p, target=None)(x)
    untouched = (out == x).flatten(1).all(1).float().mean().item()
    miss_translation = 1 - p * HIT_SHARE["translation"]
    expected = miss_translation * (1 - p) ** 2 * (1 - p) ** 2 * (1 - p) * (1 - p)  # scaling, rotation, brightness, contrast, noise, cutout
    assert abs(untouched - expected) < 0.03, (untouched, expected)


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


@pytest.mark.parametrize("size", [(8, 8), (5, 9), (4, 6, 7), (1, 6)])
def test_the_grid_of_outer_sums_equals_affine_grid(size: tuple[int, ...]) -> None:
    from udl_med.nets.ada import _affine_grid

    nd = len(size)
    theta = torch.randn(3, nd, nd + 1, generator=torch.Generator().manual_seed(0))
    shape = [3, 1, *size]
    torch.testing.assert_close(_affine_grid(theta, shape), torch.nn.functional.affine_grid(theta, shape, align_corners=True), rtol=0, atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("p", [0.15, 0.5])  # 0.15: under half the items move, only they are resampled; 0.5: all are, lerp keeps the rest
def test_ada_geometry_keeps_unmoved_items_and_their_gradient_exact_on_either_path(spatial_dims: int, p: float) -> None:
    x = _images(spatial_dims, n=400, size=8).requires_grad_(True)
    before = x.detach().clone()
    torch.manual_seed(4)
    out = AdaptiveAugment(("translation", "scaling", "rotation"), p=p, target=None)(x)
    assert torch.equal(x.detach(), before)  # the input is never written
    kept = (out == x).flatten(1).all(1)
    # unmoved: scaling and rotation missed, and translation missed or drew the zero shift ((1/3) per axis at size 8)
    expected = (1 - p) ** 2 * (1 - p * (1 - (1 / 3) ** spatial_dims))
    assert abs(float(kept.float().mean()) - expected) < 0.05, (float(kept.float().mean()), expected)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad[kept], torch.ones_like(grad[kept]))  # an unmoved item passes its gradient through untouched
    assert not torch.equal(grad[~kept], torch.ones_like(grad[~kept]))  # a moved one through the resampling


def test_ada_intensity_noise_and_cutout_leave_the_input_unwritten_with_and_without_gradient() -> None:
    x = _images(2, n=64, size=8)
    before = x.clone()
    for grad in (False, True):
        torch.manual_seed(6)
        with torch.set_grad_enabled(grad):
            out = AdaptiveAugment(("intensity", "noise", "cutout"), p=0.5, target=None)(x.requires_grad_(grad))
        assert torch.equal(x.detach(), before) and not torch.equal(out.detach(), before)
        x = x.detach()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_ada_full_pipeline_writes_only_its_own_tensors_and_passes_gradients(spatial_dims: int) -> None:
    """Transforms after the first that made a tensor write into it: never into the input, and the gradient still flows."""
    x = _images(spatial_dims, n=16, size=8)
    before = x.clone()
    for policy in (ADA_POLICIES, ("noise", "cutout"), ("cutout",)):
        for p in (0.5, 1.0):
            torch.manual_seed(7)
            out = AdaptiveAugment(policy, p=p, target=None)(x)
            assert torch.equal(x, before) and not torch.equal(out, before), (policy, p)
            leaf = x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad((AdaptiveAugment(policy, p=p, target=None)(leaf) ** 2).sum(), leaf)
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_ada_follows_p_when_it_moves_between_calls() -> None:
    ada = AdaptiveAugment(("noise",), p=0.0, target=None)
    x = torch.zeros(400, 1, 4, 4)
    assert torch.equal(ada(x), x)
    for p in (1.0, 0.25):
        ada.p.fill_(p)  # as the controller and a checkpoint load do: in place
        hit = (ada(x) != 0).flatten(1).any(1).float().mean()
        assert abs(float(hit) - p) < 0.07, (p, float(hit))
