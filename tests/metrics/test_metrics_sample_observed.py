"""What the metrics sample of issue 26 (seed 1) found unobserved, through public functions only.

- ``near_copy_distance``: a copy rotated by a grid angle (made by an independent rotation
  of a larger image, then cropped) is found at a distance of about its own resampling
  error, far below what a mis-aligned sampling grid leaves; with ``blur=0`` (no blur) an
  exact shifted copy is at distance 0, not NaN.
- ``gaussian_fit`` refuses too few codes and mismatched variances word for word.

Seed 2: every 2D alignment reports ``axis`` -1 (no axis: the plane), refined ones too; the
refusals of ``silhouette``, ``near_copy_distance`` and ``prdc_bootstrap`` word for word;
``memorization_tensors`` logs the warning it returns when it calibrates at a lower rate.

Issue 26, third round: the spectral shortlist reads the low band up to a quarter of the
(half-resolution) size along the last axis too: with a shortlist of one pair, a rotated
copy is told from references that differ from its source only at that band's top.
Seed 5: ``too_few="warn"`` works with one or two held-out subjects (calibrated at 1/(n+1));
``prdc_bootstrap`` names ``k_pr`` and ``k_dc`` word for word; a well-conditioned product of
factors takes the eigenvalue route (no SVD fallback logged); an image shorter than 16
along its first axis is not halved for the spectrum even when its other axis is long
(the unhalved band reaches twice as far). Seed 6: with a lowered float32 matmul precision
(the float64 path), density counts a fake strictly inside a real's ball, as the reference
PRDC does; a bootstrap of one replicate is refused and the interval's shift uses every
replicate. Seed 7: the refusals of ``gaussian_kl_to_standard``, PRDC (naming the set) and a
bootstrap level of 0 word for word; ``Calibration.as_dict`` and ``Alignment.as_dict`` keys, and
a 3D rotation about axis 0 described with its axis. Seed 8: ``calibrate``'s refusal names the
smallest rate its subjects can state (1/(n+1)); memorisation refuses 6-D batches word for
word; ``PRDCResult.as_dict`` has bare keys unless given a prefix; a covariance that is not
positive semi-definite sends the Fréchet trace to the SVD with that reason. Seed 9:
``clopper_pearson`` of no trials is (NaN, NaN).

The open survivors of seeds 9 and 11 (h-mut5): a wave one frequency above the spectral band
along the last axis does not sway a shortlist of one pair; a flipped copy missed by that
shortlist is found by the coarse NCC ranking, its flip named; a blur of sigma <= 0.4 has three
taps per axis (``_blur`` called directly), in float64 taps for a float64 image (seed 14).
Seed 15: an image shorter than 16 along its first axis keeps a full-resolution coarse NCC
ranking, which finds a copy shifted by one pixel that a halved one misses.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from udl_med.errors import UserError
from udl_med.metrics.calibration import calibrate, clopper_pearson
from udl_med.metrics.frechet import frechet_covariances, trace_sqrt_product_factors
from udl_med.metrics.latent import gaussian_fit, gaussian_kl_to_standard, silhouette
from udl_med.metrics.memorization import memorization_tensors
from udl_med.metrics import nearcopy
from udl_med.metrics.nearcopy import Alignment, near_copy_distance
from udl_med.metrics.prdc import prdc, prdc_bootstrap


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


@pytest.mark.parametrize("degrees", [10.0, -5.0, 6.25])  # 6.25: off the 2.5-degree grid, found by the refinement
def test_a_copy_rotated_by_a_grid_angle_is_at_its_resampling_error(degrees: float) -> None:
    big = _smooth_images()
    reference = big[:, 8:40, 8:40]
    query = _rotated(big, degrees)[:, 8:40, 8:40]  # cropped inside: no border padding in the window
    found = near_copy_distance(query, reference)
    assert found.index.tolist() == list(range(6))
    assert float(found.distance.mean()) < 0.0018, found.distance  # a resampled copy: about 7e-4 (a grid off by a voxel fraction: 4e-3)
    assert all(abs(abs(a.angle) - abs(degrees)) <= 0.625 for a in found.alignments)
    assert {a.axis for a in found.alignments} == {-1}  # 2D: a rotation in the plane, refined or not
    if degrees % 2.5:
        assert any(abs(a.angle) == abs(degrees) for a in found.alignments)  # a refined angle won


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


def test_silhouette_near_copy_and_prdc_refusals_word_for_word() -> None:
    with pytest.raises(ValueError) as err:
        silhouette(np.zeros((5, 3)), np.zeros(4))
    assert str(err.value) == "labels must have 5 entries, got 4"
    with pytest.raises(ValueError) as err:
        near_copy_distance(torch.zeros(2, 8), torch.zeros(2, 8))
    assert str(err.value) == "near-copy distance needs (N, *spatial) 2D or 3D images, got query (2, 8), reference (2, 8)"
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError) as err:
        prdc_bootstrap(rng.normal(size=(3, 2)), rng.normal(size=(10, 2)), k_pr=3, k_dc=5)
    assert str(err.value) == "real set: 3 sample(s), at least 6 needed"
    with pytest.raises(ValueError) as err:
        prdc_bootstrap(rng.normal(size=(10, 2)), rng.normal(size=(3, 2)), k_pr=3, k_dc=5)
    assert str(err.value) == "fake set: 3 sample(s), at least 4 needed"


def test_memorisation_logs_the_warning_it_returns(caplog: pytest.LogCaptureFixture) -> None:
    images = _smooth_images(n=10, size=24, seed=3)[:, None]
    train, holdout, synthetic = images[:4], images[4:8], images[8:]
    with caplog.at_level(logging.WARNING, logger="udl_med.metrics.memorization"):
        result = memorization_tensors(synthetic, train, holdout, rate=0.01, too_few="warn")
    assert result["warning"] is not None and "99 are needed" in result["warning"]
    assert [r.getMessage() for r in caplog.records if r.name == "udl_med.metrics.memorization"] == [f"memorisation: {result['warning']}"]


def test_silhouette_names_its_codes_and_calibrate_refuses_rate_one_word_for_word() -> None:
    with pytest.raises(ValueError) as err:
        silhouette(np.array([[0.0, np.nan], [1.0, 1.0]]), np.array([0, 1]))
    assert str(err.value) == "codes: contains NaN or infinite values"
    for rate in (1.0, 0.0):
        with pytest.raises(ValueError) as err:
            calibrate(np.linspace(0.1, 1.0, 50), rate=rate)
        assert str(err.value) == f"false-alarm rate must be in (0, 1), got {rate}"


def test_an_explicit_max_shift_bounds_the_search() -> None:
    big = _smooth_images()
    reference = big[:, 8:40, 8:40]
    query = big[:, 11:43, 8:40]  # shifted by 3 rows: within max_shift 3, beyond max_shift 2
    wide = near_copy_distance(query, reference, max_shift=3, blur=0.0, flips=False, angles=())
    assert {a.shift for a in wide.alignments} == {(3, 0)} and float(wide.distance.max()) < 1e-9
    narrow = near_copy_distance(query, reference, max_shift=2, blur=0.0, flips=False, angles=())
    assert all(max(abs(t) for t in a.shift) <= 2 for a in narrow.alignments) and float(narrow.distance.min()) > 1e-3


def test_every_real_item_can_be_drawn_by_the_bootstrap() -> None:
    # real item 0 alone covers the fakes (its 3rd neighbour is far, so its ball is wide); the
    # other nine sit together far away. A replicate without item 0 has precision 0, one with
    # it 1 (about 65% of them): the bias-shifted interval is wide, not the single point 1.
    real = np.concatenate([[[0.0, 0.0]], np.stack([50.0 + 0.1 * np.arange(9), np.zeros(9)], 1)])
    fake = np.random.default_rng(0).normal(scale=0.5, size=(10, 2))
    result = prdc_bootstrap(real, fake, k_pr=3, k_dc=3, n_boot=200, seed=0)
    assert result.values.precision == 1.0
    assert result.intervals["precision"].low < 0.6 and result.intervals["precision"].high == 1.0


def test_memorisation_warn_keeps_the_rate_check_and_the_level(caplog: pytest.LogCaptureFixture) -> None:
    images = _smooth_images(n=10, size=24, seed=3)[:, None]
    train, holdout, synthetic = images[:4], images[4:8], images[8:]
    for rate in (0.0, 1.0):
        with pytest.raises(ValueError) as err:
            memorization_tensors(synthetic, train, holdout, rate=rate, too_few="warn")
        assert str(err.value) == f"false-alarm rate must be in (0, 1), got {rate}"
    result = memorization_tensors(synthetic, train, holdout, rate=0.01, too_few="warn", level=0.8)
    assert result["level"] == 0.8 and result["stated_rate"] == pytest.approx(1 / 5)
    low, high = result["stated_rate_interval"]
    assert 0.0 < low < 0.2 < high < 1.0


def test_kl_and_silhouette_take_a_row_or_a_column() -> None:
    cov = np.eye(2)
    assert gaussian_kl_to_standard(np.array([[1.0, 0.0]]), cov) == pytest.approx(gaussian_kl_to_standard(np.array([1.0, 0.0]), cov))
    assert gaussian_kl_to_standard(np.array([[1.0, 0.0]]), cov) == pytest.approx(0.5, abs=1e-6)
    codes = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    assert silhouette(codes, np.array([[0], [0], [1], [1]])) == pytest.approx(silhouette(codes, np.array([0, 0, 1, 1])))
    assert silhouette(codes, np.array([[0, 0, 1, 1]])) == pytest.approx(silhouette(codes, np.array([0, 0, 1, 1])))  # a row too


def test_the_spectral_shortlist_sees_the_top_of_its_band_along_the_last_axis() -> None:
    # References share one smooth image and differ only by a wave: the source's has 4 cycles per 32 pixels along the
    # last axis, the top of the kept band (a quarter of the half-resolution size, 16 // 4); the others' lie above the
    # band. The query is the source rotated by 10 degrees, which the coarse NCC ranking (unrotated pairs only) cannot
    # reach, so with a shortlist of one pair only the spectrum can pick the source. With the band's top dropped the
    # references tie and a wrong one wins at distance 0.02-0.10 (tuning seeds 100-111); the source is at about 1e-3.
    base = _smooth_images(1, 48, seed=0)[0]
    base = base / base.std()
    rows, cols = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")

    def wave(k0: int, k1: int, phase: float) -> torch.Tensor:
        return 0.5 * torch.cos(2 * math.pi * (k0 * rows + k1 * cols) / 32 + phase)

    source = base + wave(0, 4, 0.3)
    others = [base + wave(j % 3, 7 + j, 0.7 * j) for j in range(7)]
    reference = torch.stack(others + [source])[:, 8:40, 8:40]
    query = _rotated(source[None], 10.0)[:, 8:40, 8:40]
    found = near_copy_distance(query, reference, shortlist=1)
    assert found.index.tolist() == [7]
    assert float(found.distance[0]) < 0.003, found.distance
    assert abs(found.alignments[0].angle) == 10.0


@pytest.mark.parametrize("n_holdout", [1, 2])
def test_memorisation_warn_calibrates_one_or_two_held_out_subjects(n_holdout: int) -> None:
    images = _smooth_images(n=10, size=24, seed=3)[:, None]
    train, holdout, synthetic = images[:4], images[4 : 4 + n_holdout], images[8:]
    result = memorization_tensors(synthetic, train, holdout, rate=0.01, too_few="warn")
    assert result["stated_rate"] == pytest.approx(1 / (n_holdout + 1))  # the smallest rate n subjects can state
    assert result["n_calibration_subjects"] == n_holdout and result["warning"] is not None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"k_pr": 0, "k_dc": 3}, "k_pr must be a positive integer, got 0"),
    ({"k_pr": 3, "k_dc": 2.5}, "k_dc must be a positive integer, got 2.5"),
])
def test_prdc_bootstrap_names_its_k_word_for_word(kwargs: dict, message: str) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError) as err:
        prdc_bootstrap(rng.normal(size=(10, 2)), rng.normal(size=(10, 2)), **kwargs)
    assert str(err.value) == message


def test_a_well_conditioned_product_of_factors_takes_the_eigenvalue_route(caplog: pytest.LogCaptureFixture) -> None:
    # the route's error estimate is judged against tr S1 + tr S2; two equal factors make a difference of traces 0,
    # which would send every product to the SVD
    f = np.random.default_rng(0).normal(size=(3, 6))  # 3 rows of 6 features: a full-rank 3 x 3 product
    with caplog.at_level(logging.DEBUG, logger="udl_med.metrics.frechet"):
        value = trace_sqrt_product_factors(f, f)
    assert value == pytest.approx(float(np.trace(f.T @ f)), rel=1e-10)  # tr (S^1/2 S S^1/2)^1/2 = tr S
    assert not [r for r in caplog.records if "using the SVD" in r.getMessage()]


def test_an_image_shorter_than_16_along_one_axis_keeps_its_full_resolution_spectrum() -> None:
    # 15 x 48: the spectrum is taken at full resolution (halving needs 16 along EVERY axis), so its band along the
    # last axis reaches 48 // 4 = 12 cycles. The source's wave has 10, the other references' 14 to 20 (above the
    # band); the query is the source rotated by 10 degrees and the shortlist one pair, so only the spectrum can pick
    # the source. Halved (as if only the last axis counted), the band stops at 6: a wrong reference wins at distance
    # 0.008-0.021 (tuning seeds 100-107); the source is at about 0.002.
    h, w, pad = 15, 48, 12
    noise = torch.randn(1, 1, h + 2 * pad, w + 2 * pad, generator=torch.Generator().manual_seed(0))
    k = torch.exp(-0.5 * (torch.arange(-6, 7, dtype=torch.float32) / 2.0) ** 2)
    k = k / k.sum()
    base = F.conv2d(F.pad(noise, (6, 6, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1))
    base = F.conv2d(F.pad(base, (0, 0, 6, 6), mode="replicate"), k.reshape(1, 1, -1, 1))[0, 0]
    base = base / base.std()
    rows, cols = torch.meshgrid(torch.arange(h + 2 * pad + 0.0), torch.arange(w + 2 * pad + 0.0), indexing="ij")

    def wave(k0: int, k1: int, phase: float) -> torch.Tensor:
        return 0.5 * torch.cos(2 * math.pi * (k0 * rows / h + k1 * cols / w) + phase)

    source = base + wave(0, 10, 0.3)
    others = [base + wave(j % 2, 14 + j, 0.7 * j) for j in range(7)]
    reference = torch.stack(others + [source])[:, pad : pad + h, pad : pad + w]
    t = math.radians(10.0)  # a rotation in pixel units on the non-square grid (normalised coordinates scale per axis)
    size = h + 2 * pad, w + 2 * pad
    theta = torch.tensor([[math.cos(t), -math.sin(t) * size[0] / size[1], 0.0], [math.sin(t) * size[1] / size[0], math.cos(t), 0.0]])
    grid = F.affine_grid(theta[None], [1, 1, *size], align_corners=False)
    query = F.grid_sample(source[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0, pad : pad + h, pad : pad + w]
    found = near_copy_distance(query, reference, shortlist=1, max_shift=1)
    assert found.index.tolist() == [7]
    assert float(found.distance[0]) < 0.005, found.distance


@pytest.mark.parametrize("precision", ["highest", "high"])  # high: TF32 voids the float32 screen, every distance in float64
def test_density_counts_a_fake_strictly_inside_a_real_ball(precision: str) -> None:
    # k_dc = 1 radii: real 0 -> 1, real 1 -> 1, real 3 -> 2. Fake 2 is at distance 1 from real 1 (on its ball's edge:
    # out, as the reference PRDC's `<`) and 1 from real 3 (inside): density = 1 / (k M) = 1 / 3
    real, fake = np.array([[0.0], [1.0], [3.0]]), np.array([[2.0], [10.0], [11.0]])
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        result = prdc(real, fake, k_pr=2, k_dc=1)
    finally:
        torch.set_float32_matmul_precision(before)
    assert result.density == pytest.approx(1 / 3)


def test_the_bootstrap_interval_is_shifted_by_the_mean_of_every_replicate() -> None:
    # two replicates: the bias-shifted replicates sit symmetrically about the observed value, so the observed value
    # is the middle of the interval; dropping one replicate would leave a single point at the observed value
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(30, 2)), rng.normal(0.5, 1.0, size=(30, 2))
    result = prdc_bootstrap(real, fake, k_pr=3, k_dc=3, n_boot=2, seed=3)
    for key in ("density", "coverage"):  # (not clipped at 1 here)
        iv = result.intervals[key]
        value = getattr(result.values, key)
        assert iv.low < value < iv.high, key
        assert (iv.low + iv.high) / 2 == pytest.approx(value), key
    with pytest.raises(ValueError) as err:
        prdc_bootstrap(real, fake, k_pr=3, k_dc=3, n_boot=1)
    assert str(err.value) == "bootstrap needs 0 (none) or at least 2 replicates, got 1"


def test_latent_and_prdc_refusals_word_for_word() -> None:
    with pytest.raises(ValueError) as err:
        gaussian_kl_to_standard(np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]))  # eigenvalues 3 and -1
    assert str(err.value) == "the covariance is not positive definite"
    rng = np.random.default_rng(0)
    good = rng.normal(size=(10, 2))
    bad = good.copy()
    bad[1, 1] = np.nan
    for real, fake, which in ((bad, good, "real"), (good, bad, "fake")):
        with pytest.raises(ValueError) as err:
            prdc(real, fake, 3, 3)
        assert str(err.value) == f"{which} features: contains NaN or infinite values"
    with pytest.raises(ValueError) as err:
        prdc_bootstrap(good, good, 3, 3, n_boot=2, level=0.0)
    assert str(err.value) == "confidence level must be in (0, 1), got 0.0"


def test_calibration_and_alignment_as_dict_keys() -> None:
    scores = np.linspace(0.1, 1.0, 50)
    out = calibrate(scores, 0.1).as_dict()
    assert list(out) == ["threshold", "rate", "calibrated_rate", "interval", "level", "n_subjects", "rank"]
    assert out["rank"] == 5 and out["threshold"] == pytest.approx(scores[4]) and out["calibrated_rate"] == pytest.approx(5 / 51)
    low, high = out["interval"]
    assert 0.0 < low < 5 / 51 < high < 1.0
    about_0 = Alignment((1,), 5.0, 0, (0, 1, 0))  # 3D: a rotation about axis 0 names it
    assert about_0.describe() == "rotate 5 deg about axis 0, flip axes [1], shift [0, 1, 0]"
    assert about_0.as_dict() == {"flips": [1], "angle": 5.0, "axis": 0, "shift": [0, 1, 0], "text": about_0.describe()}
    assert Alignment((), -2.5, -1, (0, 0)).describe() == "rotate -2.5 deg"  # 2D: the plane, no axis


def test_calibrate_memorisation_and_prdc_dict_word_for_word() -> None:
    with pytest.raises(ValueError) as err:
        calibrate(np.linspace(0.0, 1.0, 5), 0.01)
    assert str(err.value) == (
        "5 calibration subject(s) cannot state a false-alarm rate of 0.01: at least 99 are needed (or ask for a rate of at least 0.167)"
    )  # 1 / (5 + 1)
    six_d = torch.zeros(2, 1, 8, 8, 8, 1)
    with pytest.raises(UserError) as err:
        memorization_tensors(six_d, six_d, six_d)
    assert str(err.value) == "synthetic images must be a non-empty (N, 1, *spatial) batch, got (2, 1, 8, 8, 8, 1)"
    rng = np.random.default_rng(0)
    real = rng.normal(size=(10, 2))
    result = prdc_bootstrap(real, real + 0.1, 3, 3)
    assert list(result.as_dict()) == ["precision", "recall", "density", "coverage"]
    assert list(result.as_dict("prdc_")) == ["prdc_precision", "prdc_recall", "prdc_density", "prdc_coverage"]


def test_a_covariance_that_is_not_psd_takes_the_svd_with_its_reason() -> None:
    mu = np.zeros(2)
    result = frechet_covariances(mu, np.eye(2), mu, np.diag([1.0, -1e-3]))
    assert result.route == "svd"
    assert result.reason.startswith("eigenvalue -0.001 below -") and result.reason.endswith(" (not PSD at rounding level)")


def test_clopper_pearson_of_no_trials_is_nan() -> None:
    low, high = clopper_pearson(0, 0)
    assert math.isnan(low) and math.isnan(high)
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0


def test_a_wave_just_above_the_spectral_band_does_not_sway_the_shortlist(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the coarse NCC ranking and with a shortlist of one pair, the spectrum alone picks the reference. The query
    # is its source plus a wave of 5 cycles per 32 pixels along the last axis, one frequency above the kept band (a
    # quarter of the half-resolution size, 16 // 4). The other reference carries that wave too, but its content is
    # turned a quarter period along the last axis (the same magnitudes up to a scale, except the zero-frequency
    # column): further from the query in pixels, nearer in a spectrum that saw the wave. The shortlist of one must find
    # what the full search finds; with the wave's frequency in the band the other reference wins (tuning seeds 0-7).
    monkeypatch.setitem(nearcopy.COARSE_SHORTLIST, 2, 0)
    base = _smooth_images(1, 32, seed=0)[0]
    base = base / base.std()
    cols = torch.arange(32.0).expand(32, 32)
    wave = 0.3 * torch.cos(2 * math.pi * 5 * cols / 32 + 0.3)
    turned = torch.fft.irfft(torch.fft.rfft(base, dim=-1) * -1j, n=32, dim=-1)
    reference = torch.stack([base + 0.5 * turned + wave, base])
    query = (base + wave)[None]
    full = near_copy_distance(query, reference, angles=(), flips=False, shortlist=2)
    found = near_copy_distance(query, reference, angles=(), flips=False, shortlist=1)
    assert full.index.tolist() == [1]  # the source is the nearest reference
    assert found.index.tolist() == [1]
    assert float(found.distance[0]) == pytest.approx(float(full.distance[0]), abs=1e-9)


@pytest.mark.parametrize("axis", [0, 1])
def test_a_flipped_copy_is_found_by_the_coarse_ncc_ranking_and_its_flip_named(axis: int) -> None:
    # The spectrum cannot tell a flip along axis 0 from one along axis 1, so a shortlist of one spectral pair holds
    # only one of them: for one of the two axes the flipped copy's pair must come from the half-resolution NCC
    # ranking, which ranks each unrotated alignment with its own flips. The two other references are the query plus
    # other smooth images: nearer to the unflipped query than the source is, so a ranking that never flipped would
    # keep only their pairs and return one of them (at about 0.06).
    images = _smooth_images(3, 32, seed=5)
    source = images[0]
    query = source.flip(axis)[None]
    reference = torch.stack([query[0] + 0.6 * images[1], query[0] + 0.6 * images[2], source])
    found = near_copy_distance(query, reference, shortlist=1)
    assert found.index.tolist() == [2]
    assert float(found.distance[0]) < 1e-9
    assert found.alignments[0].flips == (axis,) and found.alignments[0].angle == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [0.25, 0.4])
def test_a_small_blur_has_three_taps(sigma: float, dtype: torch.dtype) -> None:
    # The kernel reaches ceil(2.5 sigma) voxels, at least 1: for sigma <= 0.4 three taps along each axis (a private
    # helper, tested directly: at the public measure the taps two voxels out weigh exp(-2 / sigma^2) < 4e-6). The
    # kernel is computed in float64, so a float64 image gets float64 taps (metrics seed 14).
    x = torch.zeros(1, 9, 9, dtype=dtype)
    x[0, 4, 4] = 1.0
    taps = torch.exp(-0.5 * (torch.arange(-1.0, 2.0, dtype=torch.float64) / sigma) ** 2)
    taps = taps / taps.sum()
    expected = torch.zeros(9, 9, dtype=torch.float64)
    expected[3:6, 3:6] = taps[:, None] * taps[None, :]
    out = nearcopy._blur(x, sigma)
    assert out.shape == x.shape
    assert out.dtype == dtype
    tolerance = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(out[0].double(), expected, rtol=tolerance, atol=1e-15)
    assert torch.count_nonzero(out) == 9


@pytest.mark.parametrize("axis", [0, 1])
def test_the_coarse_ncc_ranking_keeps_full_resolution_when_the_first_axis_is_short(axis: int) -> None:
    # 15 x 48 images: shorter than 16 along the first axis, so the coarse NCC ranking is not halved (as the spectrum is
    # not) and sees every shift, odd ones too. The query is its source flipped and shifted by one pixel (between the
    # half-resolution grid points); a shortlist of one spectral pair holds one of the two flips the spectrum cannot
    # tell apart, so for one of the axes only the coarse ranking reaches the source. Eight other references are the
    # query plus a fifth of other smooth images: a halved ranking (its size read from the last axis alone) puts them
    # first and returns one of them (here for both axes; on tuning seeds 0-3 in 6 of 8 cases, at 0.005-0.016).
    images = _smooth_images(9, 64, seed=2, sigma=1.5)
    rows, cols = slice(20, 35), slice(8, 56)
    source = images[0][rows, cols]
    moved = images[0][rows, 9:57]  # the content one pixel to the left
    query = moved.flip(axis)[None]
    reference = torch.stack([query[0] + 0.2 * images[1 + j][rows, cols] for j in range(8)] + [source])
    found = near_copy_distance(query, reference, shortlist=1)
    assert found.index.tolist() == [8]
    assert float(found.distance[0]) < 1e-9
    assert found.alignments[0].flips == (axis,) and found.alignments[0].angle == 0.0
