"""The command line: every command has --help, help is instant, errors are one line with exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from udl_med.cli import build_parser, main

COMMANDS = [
    "phantoms", "info", "convert", "train", "sample", "encode", "fid", "translate", "export", "pipeline", "demo", "configs",
    "classify", "synthesize", "memorization", "augment-eval", "latent", "interpolate", "arithmetic",
]


def test_every_contract_command_exists() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"udl-med {command}" in out and "--json" in out


def test_help_does_not_import_heavy_modules() -> None:
    code = "import sys, udl_med.cli as c; c.build_parser(); print(sorted(m for m in ('torch', 'monai', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_missing_config_is_one_line_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["train", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0]


def test_missing_model_is_one_line_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-model"
    assert main(["export", str(missing), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0]
    assert not (tmp_path / "out").exists()


def test_a_bad_set_is_blamed_on_set_with_the_closest_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "gan-ring-best", "--set", "model.lossx=1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("udl-med train: error: --set on ") and line.endswith("gan-ring-best.yaml: model.lossx: unknown key; did you mean model.loss?")
