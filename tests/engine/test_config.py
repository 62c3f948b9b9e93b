"""Run configs: validated on load, errors name the file and the dotted key, overrides typed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from udl_med.engine.config import apply_overrides, flatten, load_config
from udl_med.errors import ConfigError

BASE = {
    "method": "autoencoder",
    "data": {"source": "phantoms/manifest.csv", "layout": "2d", "size": [32, 32]},
    "model": {"latent_dim": 8},
    "train": {"steps": 10, "batch_size": 4},
}


def write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_valid_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.method == "autoencoder"
    assert config.train.steps == 10 and config.train.lr_schedule == "constant"
    assert config.model.latent_dim == 8
    resolved = config.to_dict()
    assert resolved["model"]["latent_dim"] == 8 and resolved["data"]["size"] == [32, 32]


@pytest.mark.parametrize(
    ("section", "bad", "key"),
    [
        ("train", {"stepz": 5}, "train.stepz"),
        ("model", {"latent_dimm": 4}, "model.latent_dimm"),
        ("data", {"layuot": "2d"}, "data.layuot"),
        ("tracking", {"experimnt": "x"}, "tracking.experimnt"),
    ],
)
def test_unknown_key_is_named(tmp_path: Path, section: str, bad: dict, key: str) -> None:
    config = {**BASE, section: {**BASE.get(section, {}), **bad}}
    path = write(tmp_path, config)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == key
    assert str(path) in str(err.value) and "unknown key" in str(err.value)


def test_mistyped_value_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, {**BASE, "train": {"steps": "many"}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "train.steps"


def test_unknown_method_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {**BASE, "method": "autoencodr"}))
    assert err.value.key == "method" and "autoencoder" in str(err.value)


def test_missing_required_key(tmp_path: Path) -> None:
    config = {k: v for k, v in BASE.items() if k != "data"}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, config))
    assert err.value.key == "data"


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), ["train.steps=3", "data.size=[16, 16]", "model.lr=0.01", "tracking.run_name=x"])
    assert config.train.steps == 3 and config.data.size == (16, 16)
    assert config.model.lr == pytest.approx(0.01) and config.run_name == "x"


def test_override_errors(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(path, ["train.steps"])
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.stepz=3"])
    assert err.value.key == "train.stepz"
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=2"], "x.yaml")


@pytest.mark.parametrize(
    ("bad", "closest"),
    [
        ({"train": {**BASE["train"], "stepz": 5}}, "train.steps"),
        ({"model": {"latent_dimm": 4}}, "model.latent_dim"),
        ({"data": {**BASE["data"], "layuot": "2d"}}, "data.layout"),
        ({"trian": {}}, "train"),
        ({"train": {**BASE["train"], "sample_eval": {"evry": 3}}}, "train.sample_eval.every"),
    ],
)
def test_an_unknown_key_suggests_the_closest_known_ones(tmp_path: Path, bad: dict, closest: str) -> None:
    path = write(tmp_path, {**BASE, **bad})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.source == str(path) and f"unknown key; did you mean {closest}" in err.value.problem


def test_a_bad_override_is_blamed_on_set(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    for override, key in [("model.latnt_dim=3", "model.latnt_dim"), ("train.steps=many", "train.steps"), ("trian.steps=3", "trian")]:
        with pytest.raises(ConfigError) as err:
            load_config(path, [override])
        assert err.value.source == f"--set on {path}" and err.value.key == key
    with pytest.raises(ConfigError) as err:
        load_config(path, ["model.latnt_dim=3"])
    assert str(err.value) == f"--set on {path}: model.latnt_dim: unknown key; did you mean model.latent_dim?"
    with pytest.raises(ConfigError) as err:  # the file's own mistake stays the file's, whatever else is set
        load_config(write(tmp_path, {**BASE, "train": {"stepz": 3}}), ["train.batch_size=2", "model.latent_dim=3"])
    assert err.value.source == str(path) and err.value.key == "train.stepz"
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.steps"])
    assert err.value.source == f"--set on {path}"


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_train_blames_a_bad_override_on_set() -> None:
    """``train(config_dict, overrides)`` (the Python entry) blames the override, not the dict."""
    from udl_med.engine.train import train

    with pytest.raises(ConfigError) as err:
        train(BASE, ["model.latnt_dim=3"])
    assert err.value.source == "--set on <config>" and err.value.key == "model.latnt_dim"
    assert "did you mean model.latent_dim" in err.value.problem
