"""User errors survive pickling, so one raised in a worker process reaches the parent intact."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from udl_med.engine.store import StoreError
from udl_med.errors import ConfigError, InputError, OutputError, UserError
from udl_med.evaluation.synthesis import QualityGateError

ERRORS = [
    InputError("scans/a.nii.gz", "cannot be read"),
    OutputError("out/grid.png", "its folder is a file"),
    ConfigError("configs/x.yaml", "model.d_augment_policy.0", "'flip' is not a transform"),
    StoreError("sqlite:///mlflow.db", "is locked"),
    QualityGateError("FID 3.2 above the gate 1.0"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_a_user_error_pickles_with_its_message_and_fields(error: UserError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert vars(back) == vars(error)


def _raise_config_error() -> None:
    raise ConfigError("configs/x.yaml", "model.ensemble", "must be at least 1")


def test_a_config_error_raised_in_a_process_pool_reaches_the_caller() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool:
        with pytest.raises(ConfigError, match="configs/x.yaml: model.ensemble: must be at least 1"):
            pool.submit(_raise_config_error).result()
