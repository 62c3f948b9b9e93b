"""DiffAugment's and ADA's draws observed through their public functions (issue 26, mutants of the d_side sample).

Each transform's parameters are read back from what it does to images built so the
parameter is visible (a constant image shows the brightness, a +-1 pattern the contrast,
a ramp the shift, ones the cutout box), and compared with the ranges the papers give:
DiffAugment's brightness U(-0.5, 0.5), contrast U(0.5, 1.5), shifts up to 1/8 of the size,
a box of half the size; ADA's brightness N(0, 0.2), contrast 2^N(0, 0.5), noise |N(0, 0.1)|.

d_side seed 8 (after ADA's one-resample rewrite): DiffAugment's refusals word for word;
ADA's controller keeps r_t exact: ``p`` stays put when r_t equals the target (a float32
r_t would not), and r_t counts every score past 2^24 (a float32 count would round). Seed 9: ADA keeps the
images' dtype (half precision too), its cutout box lies anywhere along each axis on its own
(a non-square image shows each axis's half), and the controller keeps its interval at any
step count. Seed 10: ``cutout``'s refusal word for word. Seed 11: ``reflect_index`` on
axes of 1 and 2 voxels (a single slice, a pair), and a reflect-padded shift along them.
"""

from __future__ import annotations

import math

import pytest
import torch

from udl_med.nets.ada import AdaptiveAugment, affine_resample
from udl_med.nets.diffaugment import DiffAugment, cutout, flip, intensity, reflect_index, translate

N = 2000  # items: ranges and spreads to about 2-5%


def _pattern(n: int, size: int = 4) -> torch.Tensor:
    """``(n, 1, size, size)`` of +-1 in a checkerboard: mean 0, half-range 1."""
    board = (torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 * 2.0 - 1.0
    return board.expand(n, 1, size, size).clone()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_flip_mirrors_exactly_the_spatial_axes_asked_for(spatial_dims: int) -> None:
    x = torch.rand(spatial_dims + 1, 2, *([5] * spatial_dims), generator=torch.Generator().manual_seed(0))
    flips = torch.zeros(spatial_dims + 1, spatial_dims, dtype=torch.bool)
    for a in range(spatial_dims):
        flips[a + 1, a] = True  # item a + 1 flips along spatial axis a only; item 0 not at all
    out = flip(x, flips)
    assert torch.equal(out[0], x[0])
    for a in range(spatial_dims):
        assert torch.equal(out[a + 1], x[a + 1].flip(1 + a)), a  # item dims: channel, then the spatial axes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_intensity_keeps_the_images_dtype(dtype: torch.dtype) -> None:
    x = _pattern(3).to(dtype)
    out = intensity(x, torch.tensor([0.25, 0.0, -0.5]), torch.tensor([1.0, 2.0, 0.5]))
    assert out.dtype == dtype  # under autocast D must see its input's precision, not float32
    expected = x.double() * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64).reshape(3, 1, 1, 1) + torch.tensor([0.25, 0.0, -0.5], dtype=torch.float64).reshape(3, 1, 1, 1)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-2)


def test_diffaugment_brightness_and_contrast_cover_their_ranges() -> None:
    torch.manual_seed(0)
    brightness = DiffAugment(("intensity",))(torch.zeros(N, 1, 4, 4))  # a constant image: only b shows
    b = brightness.flatten(1)
    assert torch.equal(b.min(1).values, b.max(1).values)  # one brightness per item
    b = b[:, 0]
    assert b.min() >= -0.5 and b.max() <= 0.5 and b.min() < -0.45 and b.max() > 0.45
    assert abs(float(b.mean())) < 0.03
    torch.manual_seed(1)
    out = DiffAugment(("intensity",))(_pattern(N)).flatten(1)
    c = (out.max(1).values - out.min(1).values) / 2  # half-range of a +-1 pattern scaled by c
    assert c.min() >= 0.5 - 1e-6 and c.max() <= 1.5 + 1e-6 and c.min() < 0.55 and c.max() > 1.45
    assert abs(float(c.mean()) - 1.0) < 0.03


def test_diffaugment_translation_shifts_up_to_an_eighth_and_cutout_blanks_half_the_size() -> None:
    size = 16  # shifts up to round(16 / 8) = 2 voxels per axis; a box of 8 x 8
    ramp = torch.arange(1, size + 1, dtype=torch.float32)
    x = (ramp[:, None] * 100 + ramp[None, :]).expand(N, 1, size, size).clone()  # value 100 * (row + 1) + (col + 1)
    torch.manual_seed(0)
    moved = DiffAugment(("translation",))(x)
    centre = moved[:, 0, size // 2, size // 2].round()  # one resample: integer shifts exact up to float rounding  # output[i] = input[i - shift]: the centre holds input (8 - s0, 8 - s1)
    s0 = size // 2 - (torch.div(centre, 100, rounding_mode="floor") - 1)
    s1 = size // 2 - (centre.remainder(100) - 1)
    assert set(s0.long().tolist()) == set(range(-2, 3)) and set(s1.long().tolist()) == set(range(-2, 3))
    torch.manual_seed(0)
    blanked = DiffAugment(("cutout",))(torch.ones(N, 1, size, size))
    zeros = (blanked == 0).flatten(1).sum(1)
    assert zeros.max() == 8 * 8 and zeros.min() >= 4 * 4  # the whole box inside, or clipped at a corner to a quarter of it
    assert ((blanked == 0) | (blanked == 1)).all()


def test_ada_brightness_contrast_and_noise_follow_their_distributions() -> None:
    torch.manual_seed(0)
    b = AdaptiveAugment(("intensity",), p=1.0, target=None)(torch.zeros(N, 1, 4, 4))[:, 0, 0, 0]
    assert abs(float(b.std()) - 0.2) < 0.015 and abs(float(b.mean())) < 0.02
    torch.manual_seed(1)
    out = AdaptiveAugment(("intensity",), p=1.0, target=None)(_pattern(N)).flatten(1)
    log_c = torch.log2((out.max(1).values - out.min(1).values) / 2)
    assert abs(float(log_c.std()) - 0.5) < 0.03 and abs(float(log_c.mean())) < 0.04
    torch.manual_seed(2)
    noisy = AdaptiveAugment(("noise",), p=1.0, target=None)(torch.zeros(N, 1, 8, 8))
    sigma = noisy.flatten(1).std(1)  # per item |N(0, 0.1)|: mean 0.1 * sqrt(2 / pi)
    assert abs(float(sigma.mean()) - 0.1 * math.sqrt(2 / math.pi)) < 0.006


def test_ada_flips_half_the_items_it_hits_along_the_first_axis_only() -> None:
    x = torch.rand(4000, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for p in (0.4, 1.0):
        torch.manual_seed(int(p * 10))
        out = AdaptiveAugment(("flip",), p=p, target=None)(x)
        # one resample serves every geometric transform, so a flip is exact up to float rounding; missed items are untouched
        flipped = torch.isclose(out, x.flip(2), rtol=0, atol=1e-5).flatten(1).all(1)  # first spatial axis (left-right of an axial slice)
        kept = (out == x).flatten(1).all(1)
        assert bool((flipped | kept).all())  # nothing else: not the second axis, not the channel
        assert abs(float(flipped.float().mean()) - p / 2) < 0.03, p  # probability p, then 1/2


def test_ada_translation_shifts_each_hit_item_by_up_to_an_eighth() -> None:
    size = 16  # up to round(16 / 8) = 2 voxels per axis, reflect-padded
    ramp = torch.arange(1, size + 1, dtype=torch.float32)
    x = (ramp[:, None] * 100 + ramp[None, :]).expand(N, 1, size, size).clone()
    torch.manual_seed(0)
    moved = AdaptiveAugment(("translation",), p=1.0, target=None)(x)
    centre = moved[:, 0, size // 2, size // 2].round()  # one resample: integer shifts exact up to float rounding
    s0 = size // 2 - (torch.div(centre, 100, rounding_mode="floor") - 1)
    s1 = size // 2 - (centre.remainder(100) - 1)
    assert set(s0.long().tolist()) == set(range(-2, 3)) and set(s1.long().tolist()) == set(range(-2, 3))
    assert abs(float((s0 == 2).float().mean()) - 0.2) < 0.03  # uniform over the five shifts
    assert float(moved.min()) >= 101 - 1e-3  # reflect-padded (pixel blitting): the border mirrors the inside, never a 0 fill
    shifted = (s0 == 2) & (s1 == 0)  # down two rows only
    torch.testing.assert_close(moved[shifted][:, 0, 0], x[shifted][:, 0, 2], rtol=0, atol=1e-3)  # row -2 mirrors to row 2
    torch.manual_seed(1)
    half = AdaptiveAugment(("translation",), p=0.5, target=None)(x)
    moved_share = (half != x).flatten(1).any(1).float().mean()  # hit with p, and then not the zero shift (1/25)
    assert abs(float(moved_share) - 0.5 * 24 / 25) < 0.04


def test_ada_default_controller_reaches_p_1_over_20_thousand_images_towards_r_t_0_6() -> None:
    ada = AdaptiveAugment()  # p 0, target 0.6, every 4 steps, kimg 20
    for step in range(1, 4):
        ada.observe(torch.ones(50), 50, step)
        assert float(ada.p) == 0.0, step  # not due before step 4
    ada.observe(torch.ones(50), 50, 4)
    assert float(ada.p) == pytest.approx(200 / 20_000)
    for rt, direction in ((0.5, -1), (0.7, 1)):  # either side of the target 0.6
        ada = AdaptiveAugment(p=0.5)
        scores = torch.where(torch.arange(100) < int(100 * (1 + rt) / 2), 1.0, -1.0)  # mean sign rt
        ada.observe(scores, 100, 4)
        assert float(ada.rt) == pytest.approx(rt) and float(ada.p) == pytest.approx(0.5 + direction * 100 / 20_000)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"target": 1.0}, "target must be in (0, 1), got 1.0"),
    ({"target": 1.5}, "target must be in (0, 1), got 1.5"),
    ({"target": 0.0}, "target must be in (0, 1), got 0.0"),
    ({"p": -0.1}, "p must be in [0, 1], got -0.1"),
    ({"interval": 0}, "interval must be >= 1 and kimg > 0, got 0 and 20.0"),
    ({"kimg": 0.0}, "interval must be >= 1 and kimg > 0, got 4 and 0.0"),
    ({"policy": ()}, "policy must name at least one transform"),
])
def test_ada_refuses_bad_settings_word_for_word(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        AdaptiveAugment(**kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize(("policy", "message"), [
    ((), "policy must name at least one transform"),
    (("translation", "flip"), "unknown augmentation 'flip'; valid: translation, cutout, intensity"),
    (("cutout", "intensity", "cutout"), "augmentation 'cutout' is listed twice"),
])
def test_diffaugment_refuses_bad_policies_word_for_word(policy: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError) as err:
        DiffAugment(policy)
    assert str(err.value) == message


def test_ada_p_stays_put_when_r_t_equals_the_target_exactly() -> None:
    ada = AdaptiveAugment(p=0.5, target=1 / 3, interval=1)
    ada.observe(torch.tensor([1.0, 2.0, -0.5]), 3, 1)  # signs 1, 1, -1: r_t = 1/3
    assert float(ada.rt) == 1 / 3
    assert float(ada.p) == 0.5  # neither up nor down
    ada.observe(torch.tensor([1.0, 1.0, 1.0, -1.0]), 4, 2)  # r_t = 1/2 > 1/3: up by 4 images / 20k
    assert float(ada.p) == 0.5 + 4 / 20_000


def test_ada_r_t_counts_every_score_past_two_to_the_24() -> None:
    # a patch discriminator gives many scores per image: over a long interval the count passes 2^24, where a
    # float32 count rounds 2^24 + 1 to 2^24
    ada = AdaptiveAugment(p=0.5, target=0.6, interval=16)
    for step in range(16):
        ada.observe(torch.ones(2**20), 1, step)  # not due before step 16
    ada.observe(-torch.ones(1), 1, 16)
    assert float(ada.rt) == (2**24 - 1) / (2**24 + 1)
    assert float(ada.p) == 0.5 + 17 / 20_000  # r_t > 0.6: up by the 17 images seen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("policy", [("intensity",), ("flip", "translation", "scaling", "rotation", "intensity", "noise", "cutout")])
def test_ada_keeps_the_images_dtype(dtype: torch.dtype, policy: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 8, dtype=dtype)
    out = AdaptiveAugment(policy, p=1.0, target=None)(x)
    assert out.dtype == dtype and not torch.equal(out, x)


def test_ada_cutout_box_is_half_of_each_axis_anywhere_along_it() -> None:
    torch.manual_seed(0)
    rows, cols = 12, 20
    out = AdaptiveAugment(["cutout"], p=1.0, target=None)(torch.ones(400, 1, rows, cols))[:, 0]
    blank = out == 0  # the box (ones elsewhere)
    on_rows, on_cols = blank.any(2), blank.any(1)  # (N, rows), (N, cols): where the box lies along each axis
    assert int(on_rows.sum(1).max()) == rows // 2 and int(on_cols.sum(1).max()) == cols // 2
    assert bool((blank == (on_rows[:, :, None] & on_cols[:, None, :])).all())  # one box per item
    first_row = on_rows.float().argmax(1).float()
    first_col = on_cols.float().argmax(1).float()
    # centred anywhere: the box starts half its length before its centre, so up to the last index less that
    assert int(first_row.max()) == rows - 1 - rows // 4 and int(first_col.max()) == cols - 1 - cols // 4
    assert abs(float(torch.corrcoef(torch.stack([first_row, first_col]))[0, 1])) < 0.15  # drawn apart


def test_ada_keeps_its_interval_past_two_to_the_24_steps() -> None:
    ada = AdaptiveAugment(p=0.5, target=0.6, interval=2)
    start = 2**24 + 1  # a float32 step would round to 2^24
    ada.observe(torch.ones(4), 4, start)
    assert float(ada.p) == 0.5 + 4 / 20_000
    ada.observe(torch.ones(4), 4, start + 1)  # one step after the adjustment: not due
    assert float(ada.p) == 0.5 + 4 / 20_000
    ada.observe(torch.ones(4), 4, start + 2)  # due: the 8 images since move p
    assert float(ada.p) == 0.5 + 4 / 20_000 + 8 / 20_000


def test_cutout_refuses_a_centre_or_size_of_the_wrong_shape_word_for_word() -> None:
    x = torch.zeros(3, 1, 8, 8)
    message = "centre must be (B, spatial_dims) = (3, 2) and size have spatial_dims entries"
    for centre, size in ((torch.zeros(3, 3, dtype=torch.long), (4, 4)), (torch.zeros(3, 2, dtype=torch.long), (4,))):
        with pytest.raises(ValueError) as err:
            cutout(x, centre, size)
        assert str(err.value) == message


def test_reflect_index_on_axes_of_one_and_two_voxels() -> None:
    index = torch.tensor([-3, -2, -1, 0, 1, 2, 3])
    assert reflect_index(index, 1).tolist() == [0] * 7  # one voxel: every index is it
    assert reflect_index(index, 2).tolist() == [1, 0, 1, 0, 1, 0, 1]  # ab|a: period 2
    volume = torch.arange(2.0 * 1 * 4).reshape(1, 1, 2, 1, 4)  # a 2 x 1 x 4 volume
    moved = translate(volume, torch.tensor([[1, 1, 0]]), reflect=True)  # one voxel along the axes of 2 and of 1
    assert torch.equal(moved[0, 0, :, 0], volume[0, 0, [1, 0], 0])


def test_translate_refuses_a_shift_of_the_wrong_shape_word_for_word() -> None:
    from_shape = torch.zeros(3, 1, 8, 8)
    with pytest.raises(ValueError) as err:
        translate(from_shape, torch.zeros(3, 3, dtype=torch.long))
    assert str(err.value) == "shift must be (B, spatial_dims) = (3, 2), got (3, 3)"


def test_affine_resample_zooms_by_scale_and_keeps_the_dtype() -> None:
    size = 32
    ramp = torch.arange(size, dtype=torch.float64)
    x = torch.stack([ramp[:, None].expand(size, size), ramp[None, :].expand(size, size)])[None]  # (1, 2, H, W): row and column index
    out = affine_resample(x, torch.tensor([2.0]), torch.tensor([0.0]))
    assert out.dtype == torch.float64
    inner = out[0, :, 8:24, 8:24]  # away from the reflected border
    # zoomed in 2x about the centre: one output voxel spans half an input voxel along both axes
    torch.testing.assert_close(inner[0].diff(dim=0), torch.full((15, 16), 0.5, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(inner[1].diff(dim=1), torch.full((16, 15), 0.5, dtype=torch.float64), rtol=0, atol=1e-6)
    # zoomed 2x and turned a quarter: the row index now runs along the columns, at half speed
    turned = affine_resample(x, torch.tensor([2.0]), torch.tensor([math.pi / 2]))[0, :, 8:24, 8:24]
    torch.testing.assert_close(turned[0].diff(dim=1).abs(), torch.full((16, 15), 0.5, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(turned[1].diff(dim=0).abs(), torch.full((15, 16), 0.5, dtype=torch.float64), rtol=0, atol=1e-6)


def test_ada_intensity_hits_an_item_when_either_brightness_or_contrast_does() -> None:
    x = _pattern(1)  # one item per call: the pipeline must not wait for an item hit by both
    torch.manual_seed(0)
    ada = AdaptiveAugment(("intensity",), p=0.5, target=None)
    changed = sum(not torch.equal(ada(x), x) for _ in range(400)) / 400
    assert abs(changed - 0.75) < 0.07  # 1 - (1 - p)^2


def test_ada_rotates_by_at_most_15_degrees_and_cuts_out_half_the_size() -> None:
    size = 32
    ramp = torch.arange(size, dtype=torch.float32)
    coords = torch.stack([ramp[:, None].expand(size, size), ramp[None, :].expand(size, size)])  # row and column index
    x = coords.expand(500, 2, size, size).clone()
    torch.manual_seed(0)
    out = AdaptiveAugment(("rotation",), p=1.0, target=None)(x)[:, :, 12:20, 12:20]
    # the column index read back: d/dcol = cos(angle), d/drow = +-sin(angle)
    cos = out[:, 1].diff(dim=2).mean((1, 2))
    sin = out[:, 1].diff(dim=1).mean((1, 2))
    degrees = torch.rad2deg(torch.atan2(sin, cos)).abs()
    assert float(degrees.max()) <= 15.2 and float(degrees.max()) > 13.5 and float(degrees.mean()) == pytest.approx(7.5, abs=1.0)
    torch.manual_seed(1)
    blanked = AdaptiveAugment(("cutout",), p=1.0, target=None)(torch.ones(N, 1, 16, 16))
    assert (blanked == 0).flatten(1).sum(1).max() == 8 * 8  # a box of half the size: 8 x 8
