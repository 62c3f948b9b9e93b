"""Shipped configs and pipelines: found by name, listed with descriptions, pipeline paths relative to the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from udl_med.cli import main
from udl_med.pipeline import load_pipeline
from udl_med.errors import ConfigError
from udl_med.shipped import description, find_shipped, list_shipped, resolve_shipped, shipped_files

ROOT = Path(__file__).resolve().parents[1]


def test_every_file_in_configs_and_pipelines_ships_with_a_one_line_description() -> None:
    for kind in ("configs", "pipelines"):
        on_disk = sorted(p.stem for p in (ROOT / kind).glob("*.yaml"))
        assert sorted(shipped_files(kind)) == on_disk
        for name, path in shipped_files(kind).items():
            text = description(path)
            assert text, f"{kind}/{name}.yaml needs a first comment line: its one-line description"


def test_description_is_the_first_comment_line(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("\n#   A tiny thing.\n# more words\nmethod: vae\n")
    assert description(path) == "A tiny thing."
    path.write_text("method: vae\n# late comment\n")
    assert description(path) == ""


def test_configs_command_lists_both_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["configs", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["configs"]["ae2d-phantom"].startswith("Convolutional autoencoder")
    assert "pretrain-encoder" in result["pipelines"]
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "configs:" in lines and any(line.split()[:1] == ["ae2d-phantom"] for line in lines)
    assert list_shipped()["configs"] == result["configs"]


def test_names_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_shipped("configs", "ae2d-phantom") == find_shipped("configs", "ae2d-phantom.yaml") == ROOT / "configs" / "ae2d-phantom.yaml"
    assert find_shipped("configs", "configs/ae2d-phantom.yaml") is None  # a path is not a name
    local = tmp_path / "ae2d-phantom"
    local.write_text("method: vae\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_shipped("configs", "ae2d-phantom") == Path("ae2d-phantom")  # an existing path wins over a name
    with pytest.raises(ConfigError, match="no shipped config 'ae2d-phantm'.*ae2d-phantom"):
        resolve_shipped("configs", "ae2d-phantm")


def test_train_and_pipeline_by_unknown_name_exit_2_with_the_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "no-such-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-config" in err[0] and "udl-med configs" in err[0]
    assert main(["pipeline", "pretrain-encodr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean pretrain-encoder?" in err[0]


def test_pipeline_inputs_resolve_relative_to_the_file_outputs_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "elsewhere" / "pipelines"
    folder.mkdir(parents=True)
    (folder / "my.yaml").write_text("method: autoencoder\ndata: {source: x}\n")
    (folder / "data.csv").write_text("image\n")
    pipeline = {
        "name": "p",
        "steps": [
            {"name": "a", "run": "train", "with": {"config": "my.yaml"}},
            {"name": "b", "run": "train", "with": {"config": "ae2d-phantom"}},
            {"name": "c", "run": "select", "with": {"source": "data.csv", "out": "sel.csv"}},
            {"name": "d", "run": "fid", "with": {"real": "${steps.c.manifest}", "fake": "runs:/abc/model"}},
        ],
    }
    (folder / "p.yaml").write_text(yaml.safe_dump(pipeline))
    monkeypatch.chdir(tmp_path)  # not the pipeline's folder
    loaded = {s.name: s.with_ for s in load_pipeline(folder / "p.yaml").steps}
    assert loaded["a"]["config"] == str(folder.resolve() / "my.yaml")
    assert loaded["b"]["config"] == str(ROOT / "configs" / "ae2d-phantom.yaml")  # a shipped name
    assert loaded["c"] == {"source": str(folder.resolve() / "data.csv"), "out": "sel.csv"}  # outputs stay relative to the cwd
    assert loaded["d"] == {"real": "${steps.c.manifest}", "fake": "runs:/abc/model"}
    # --set values are command-line paths: relative to the working directory
    overridden = {s.name: s.with_ for s in load_pipeline(folder / "p.yaml", ["steps.c.with.source=mine.csv"]).steps}
    assert overridden["c"]["source"] == "mine.csv"
    # a shipped pipeline by name, its train config by shipped name
    shipped = {s.name: s.with_ for s in load_pipeline("pretrain-encoder").steps}
    assert shipped["train"]["config"] == str(ROOT / "configs" / "ae2d-phantom.yaml")
    # a config that is neither there nor shipped names the pipeline file and the step's key
    pipeline["steps"][0]["with"]["config"] = "typo.yaml"
    (folder / "p.yaml").write_text(yaml.safe_dump(pipeline))
    with pytest.raises(ConfigError, match=r"p\.yaml: steps\.a\.with\.config: no such config file"):
        load_pipeline(folder / "p.yaml")
