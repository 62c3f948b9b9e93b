"""Shared test fixtures: one MLflow store and one set of tiny phantoms per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Two cores, two xdist workers: one thread each keeps the suite from oversubscribing.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite MLflow store shared by the session (creating one costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight tiny phantom subjects (32 x 32 x 16), NIfTI, with manifest.csv."""
    from udl_med.data.phantoms import write_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, n=8, shape=(32, 32, 16), seed=0, fmt="nifti")
    return out


@pytest.fixture(scope="session")
def phantom_manifest(phantom_dir: Path) -> Path:
    return phantom_dir / "manifest.csv"
