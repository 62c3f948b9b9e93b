"""The small-data benchmark's utility rows: real + synthetic against real only, and the classifier on synthetic crops alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("small_data_benchmark", ROOT / "benchmarks" / "small_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_utility_rows_report_synthetic_only_beside_real_only_and_judge_only_the_gain(bench) -> None:
    util = {"real": [0.50, 0.55, 0.60], "cdcgan/ada": [0.62, 0.58, 0.70]}
    alone = {"cdcgan/ada": [0.40, 0.45, 0.35], "cdcgan/ada/large_draw": [0.5, 0.5, 0.6]}
    rows = {(r["case"], r["metric"]): r for r in bench.utility_rows(util, [0, 1, 2], {}, alone)}
    synthetic = rows[("12_subjects/utility/cdcgan/ada", "balanced_accuracy_synthetic_only")]
    assert synthetic["ours"] == pytest.approx(0.40) and synthetic["worst"] == pytest.approx(0.35)
    assert synthetic["peer_name"] == "real_only" and synthetic["peer"] == pytest.approx(0.55) and synthetic["meets_goal"] is None
    assert rows[("12_subjects/utility/cdcgan/ada/large_draw", "balanced_accuracy_synthetic_only")]["ours"] == pytest.approx(np.mean([0.5, 0.5, 0.6]))
    gain = rows[("12_subjects/utility/cdcgan/ada", "balanced_accuracy_real_plus_synthetic")]
    assert gain["per_seed_gain"] == pytest.approx([0.12, 0.03, 0.10]) and gain["worst_gain"] == pytest.approx(0.03)
    # without synthetic-only values the rows are those of before
    assert not [r for r in bench.utility_rows(util, [0, 1, 2], {}) if r["metric"] == "balanced_accuracy_synthetic_only"]
