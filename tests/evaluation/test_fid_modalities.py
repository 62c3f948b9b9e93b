"""fid warns when REAL and FAKE differ in modality, and its log counts what the result says."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import pytest

from udl_med.evaluation.compare import compare_sets


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from udl_med.data.phantoms import write_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, n=4, shape=(24, 24, 12), seed=0)
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    found = {}
    for name, keep in {"both": lambda r: True, "ct": lambda r: r["modality"] == "CT", "mr": lambda r: r["modality"] == "MR"}.items():
        path = out / f"{name}.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if keep(r))
        found[name] = path
    return found


def test_real_ct_and_mr_against_ct_fakes_is_warned(sets: dict[str, Path], caplog) -> None:
    with caplog.at_level(logging.INFO, logger="udl_med.evaluation.compare"):
        compare_sets(sets["both"], sets["ct"], bootstrap=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "differ in modality" in warnings[0], warnings
    assert "4 CT, 4 MR" in warnings[0] and f"FAKE {sets['ct']}: 4 CT)" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="udl_med.evaluation.compare"):
        compare_sets(sets["ct"], sets["ct"], bootstrap=0)
        compare_sets(sets["mr"], sets["mr"], bootstrap=0)
    assert not caplog.records


def test_the_log_counts_what_the_result_reports(sets: dict[str, Path], caplog) -> None:
    with caplog.at_level(logging.INFO, logger="udl_med.evaluation.compare"):
        result = compare_sets(sets["both"], sets["ct"], bootstrap=0)
    summary = {}
    for record in caplog.records:
        match = re.fullmatch(r"(.+): (\d+) images, (\d+) 2d views with foreground: (\d+) feature vectors", record.getMessage())
        if match:
            summary[match.group(1)] = (int(match.group(2)), int(match.group(3)), int(match.group(4)))
    assert summary[str(sets["both"])][0] == 8 and summary[str(sets["ct"])][0] == 4
    assert summary[str(sets["both"])][2] == result["n_real"] and summary[str(sets["ct"])][2] == result["n_fake"]
    assert summary[str(sets["both"])][1] == result["n_real"]  # every view with foreground is a feature vector
