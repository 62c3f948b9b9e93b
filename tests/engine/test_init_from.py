"""train.init_from: weights of a trained model copied into named submodules before the first step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from udl_med.engine.config import validate_config
from udl_med.engine.train import Trainer, train
from udl_med.errors import ConfigError, InputError

MLP = {"architecture": "mlp", "latent_dim": 4, "g_hidden": [8], "d_hidden": [8]}


def _config(out: Path, **train_kw: Any) -> dict[str, Any]:
    return {
        "method": "gan",
        "seed": 0,
        "data": {"kind": "points", "points": {"n_train": 64, "n_eval": 16}},
        "model": MLP,
        "train": {"steps": 3, "batch_size": 8, "eval_every": 3, "checkpoint_every": 3, **train_kw},
        "tracking": {"enabled": False},
        "output_dir": str(out),
    }


def _built(config: dict[str, Any]) -> Trainer:
    trainer = Trainer(validate_config(config))
    trainer._build()
    return trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(train(_config(tmp_path_factory.mktemp("init") / "first", steps=5))["run_dir"])


def test_named_modules_start_from_the_trained_model_and_nothing_else_does(trained: Path, tmp_path: Path) -> None:
    from udl_med.engine.model_io import load_model

    source = load_model(trained / "model").method
    fresh = _built(_config(tmp_path / "plain")).method
    started = _built(_config(tmp_path / "second", init_from=[{"model": str(trained), "modules": ["generator"]}])).method
    for (name, a), b in zip(started.generator.state_dict().items(), source.generator.state_dict().values()):
        assert torch.equal(a, b), name  # a run folder works: its model folder is found
    assert not all(torch.equal(a, b) for a, b in zip(fresh.generator.parameters(), source.generator.parameters()))
    for a, b in zip(started.discriminator.parameters(), fresh.discriminator.parameters()):
        assert torch.equal(a, b)  # the same seed: untouched modules start as in a plain run


def test_bad_requests_name_the_key(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.init_from.*no module 'nope'"):
        _built(_config(tmp_path / "a", init_from=[{"model": str(trained), "modules": ["nope"]}]))
    with pytest.raises(InputError, match="keeps no module 'discriminator'"):  # model files keep the generator only
        _built(_config(tmp_path / "b", init_from=[{"model": str(trained), "modules": ["discriminator"]}]))
    with pytest.raises(InputError, match="must be a 'vae' model, got 'gan'"):
        _built(_config(tmp_path / "c", init_from=[{"model": str(trained), "modules": ["generator"], "method": "vae"}]))
    with pytest.raises(InputError, match="no such model"):
        _built(_config(tmp_path / "d", init_from=[{"model": str(tmp_path / "missing"), "modules": ["generator"]}]))
    wider = _config(tmp_path / "e", init_from=[{"model": str(trained), "modules": ["generator"]}])
    wider["model"] = {**MLP, "g_hidden": [16]}
    with pytest.raises(InputError, match="'generator' does not match this config"):
        _built(wider)


def test_a_methods_own_request_is_loaded_by_the_engine_and_not_on_resume(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """How the two-stage GAN's model.stage1_model arrives: Method.init_from, applied by the engine."""
    from udl_med.methods.base import InitFrom
    from udl_med.methods.gan import GAN

    asked = InitFrom(model=str(tmp_path / "gone"), modules=("generator",))
    monkeypatch.setattr(GAN, "init_from", lambda self: (("model.some_key", asked),))
    with pytest.raises(InputError, match="no such model"):
        _built(_config(tmp_path / "a"))
    asked = InitFrom(model=str(trained), modules=("generator",), method="vae")
    with pytest.raises(InputError, match="model.some_key must be a 'vae' model"):
        _built(_config(tmp_path / "b"))
    trainer = Trainer(validate_config(_config(tmp_path / "b")), resume=True)
    trainer._build()  # resuming: the checkpoint holds the weights, the model is not read
