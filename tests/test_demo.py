"""`udl-med demo` end to end, as `make demo` runs it: a relative --out in a fresh working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from udl_med.data.manifest import list_images


def test_demo_runs_every_job_and_its_manifests_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "udl_med.cli", "demo", "--out", "demo-out"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for needed in ("translate.translated", "fid_translated.fid", "memorization.rate", "kplus1_classify.accuracy", "kplus1_vs_supervised_only", "rbm.eval/recon_mse"):
        assert needed in proc.stdout, (needed, proc.stdout[-2000:])
    monkeypatch.chdir(tmp_path)  # read the manifests from where the demo ran, as the next command would
    for manifest in ("demo-out/real_ct.csv", "demo-out/translated/manifest.csv", "demo-out/synthetic/manifest.csv"):
        assert all(r.path.exists() for r in list_images(manifest)), manifest


def test_kplus1_side_by_side_pairs_the_two_classifiers() -> None:
    from udl_med.demo import kplus1_side_by_side

    result = {"kplus1_classify.accuracy": 0.6, "supervised_only_classify.accuracy": 0.45, "kplus1_classify.macro_auc": 0.8, "other.accuracy": 1.0}
    assert kplus1_side_by_side(result) == {"accuracy": {"kplus1": 0.6, "supervised_only": 0.45, "gain": 0.15}}
