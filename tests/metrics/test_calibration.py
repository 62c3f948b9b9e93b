"""Per-subject split-conformal threshold: the stated false-alarm rate is the rate new subjects get."""

from __future__ import annotations

import numpy as np
import pytest

from udl_med.metrics.calibration import CalibrationError, calibrate, clopper_pearson, subject_scores, subjects_needed


def test_threshold_is_the_conformal_order_statistic() -> None:
    scores = np.arange(1.0, 200.0)  # n = 199 subjects
    c = calibrate(scores, rate=0.01)
    assert c.rank == 2 and c.threshold == 2.0 and c.n_subjects == 199  # floor(200 * 0.01) = 2
    assert c.calibrated_rate == pytest.approx(2 / 200)
    assert c.interval[0] < c.calibrated_rate < c.interval[1] < 0.04
    assert c.flag([1.5, 2.0, 3.0]).tolist() == [True, False, False]  # strictly below


def test_the_rate_holds_on_new_subjects_when_the_truth_is_known() -> None:
    """Scores of new subjects ~ Exp(1): the false-alarm rate of a threshold t is exactly 1 - exp(-t)."""
    rng = np.random.default_rng(0)
    rates, inside = [], 0
    for _ in range(2000):
        c = calibrate(rng.exponential(size=149), rate=0.02)  # k = 3, stated 3/150 = 0.02
        true_rate = 1.0 - np.exp(-c.threshold)
        rates.append(true_rate)
        inside += c.interval[0] <= true_rate <= c.interval[1]
    assert np.mean(rates) == pytest.approx(0.02, abs=0.0015)  # the guarantee: expected rate = k / (n + 1)
    assert inside / 2000 == pytest.approx(0.95, abs=0.015)  # the interval covers the conditional rate


def test_subject_scores_are_the_minimum_over_scans() -> None:
    subjects, scores = subject_scores([0.5, 0.2, 0.9, 0.4], ["a", "a", "b", "b"])
    assert subjects == ["a", "b"] and scores.tolist() == [0.2, 0.4]
    with pytest.raises(CalibrationError, match="subject ids"):
        subject_scores([0.1, 0.2], ["a"])


def test_too_few_subjects_is_refused_saying_how_many_are_needed() -> None:
    assert subjects_needed(0.01) == 99 and subjects_needed(0.05) == 19
    with pytest.raises(CalibrationError, match=r"24 calibration subject\(s\) cannot state a false-alarm rate of 0.01: at least 99"):
        calibrate(np.ones(24), rate=0.01)
    assert calibrate(np.arange(99.0), 0.01).rank == 1
    with pytest.raises(CalibrationError, match="in \\(0, 1\\)"):
        calibrate(np.ones(5), rate=0.0)


def test_clopper_pearson() -> None:
    low, high = clopper_pearson(0, 100)
    assert low == 0.0 and high == pytest.approx(0.0362, abs=1e-3)
    low, high = clopper_pearson(5, 100)
    assert low < 0.05 < high
