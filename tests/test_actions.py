"""The one table of actions: every command and every step kind comes from it, and agrees with its library function."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from udl_med.actions import ACTIONS, REQUIRED, commands, step_kinds
from udl_med.cli import build_parser, main
from udl_med.errors import ConfigError
from udl_med.pipeline import STEP_KINDS, check_steps, load_pipeline
from udl_med.shipped import shipped_files


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return dict(sub.choices)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def test_the_commands_are_the_tables_commands() -> None:
    assert set(_subparsers()) == {a.command for a in ACTIONS.values() if a.command} == set(commands())
    assert commands()["augment-eval"] is ACTIONS["utility"]


def test_the_step_kinds_are_the_tables_steps() -> None:
    assert set(STEP_KINDS) == {a.name for a in ACTIONS.values() if a.step} == set(step_kinds())
    assert all(STEP_KINDS[k] is ACTIONS[k] for k in STEP_KINDS)


@pytest.mark.parametrize("command", sorted(commands()))
def test_a_commands_options_are_its_actions_command_line_arguments(command: str) -> None:
    parser = _subparsers()[command]
    dests = {a.dest for a in parser._actions} - {"help", "json"}
    action = commands()[command]
    assert dests == {a.name for a in action.args if a.cli}
    for arg in action.args:
        if arg.cli and not arg.required and arg.kind != "flag":
            assert _plain(parser.get_default(arg.name)) == _plain(arg.default)


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_an_actions_arguments_are_its_library_functions_parameters(name: str) -> None:
    action = ACTIONS[name]
    signature = inspect.signature(action.function())
    assert tuple(signature.parameters) == action.names
    for arg in action.args:
        default = signature.parameters[arg.name].default
        if default is inspect.Parameter.empty:
            assert arg.default is REQUIRED, f"{name}.{arg.name} has no default in the library"
        else:
            assert _plain(arg.default) == _plain(default), f"{name}.{arg.name}: {arg.default!r} != {default!r}"
        assert arg.help and (arg.kind == "flag") == (arg.type is None)


@pytest.mark.parametrize("command", sorted(commands()))
def test_help_shows_every_arguments_help_with_its_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    out = re.sub(r"(\w)- (\w)", r"\1-\2", out)  # argparse wraps after a hyphen
    for arg in commands()[command].args:
        if not arg.cli:
            continue
        text = " ".join(arg.help.split())
        if arg.required or arg.kind == "flag" or arg.default in (None, (), ""):
            assert text in out
        else:
            default = " ".join(map(str, arg.default)) if isinstance(arg.default, tuple) else str(arg.default)
            assert f"{text} (default: {default})" in out


def test_the_command_line_calls_the_library_with_the_tables_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import udl_med.data.phantoms
    import udl_med.evaluation.utility

    calls: list[dict[str, Any]] = []

    def record(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return {"ok": 1}

    monkeypatch.setattr(udl_med.data.phantoms, "write_phantoms", record)
    monkeypatch.setattr(udl_med.evaluation.utility, "utility_step", record)
    assert main(["phantoms", str(tmp_path), "--format", "dicom", "--shape", "8", "8", "4"]) == 0
    assert calls[-1] == {"out": str(tmp_path), "n": 8, "shape": (8, 8, 4), "seed": 0, "fmt": "dicom"}
    assert main(["augment-eval", "r.csv", "s.csv", "--heldout", "h.csv", "--per-class-subjects", "0", "--seeds", "4"]) == 0
    assert calls[-1] == {"real": "r.csv", "synthetic": "s.csv", "heldout": "h.csv", "seeds": [4], "per_class_subjects": None, "steps": 300, "lr": 1e-3, "ct_window": [-250.0, 250.0], "classifier_augment": ["flip", "translation", "scaling", "rotation"], "synthetic_share": None}
    # liver-centred crops (the synthesize pipeline's items): their window and the benchmark's learning rate
    assert main(["augment-eval", "r.csv", "s.csv", "--heldout", "h.csv", "--ct-window", "-200", "300", "--lr", "0.002"]) == 0
    assert calls[-1]["ct_window"] == [-200.0, 300.0] and calls[-1]["lr"] == 0.002
    # the weaker peer of before: flips only
    assert main(["augment-eval", "r.csv", "s.csv", "--heldout", "h.csv", "--classifier-augment", "flip"]) == 0
    assert calls[-1]["classifier_augment"] == ["flip"]
    assert main(["augment-eval", "r.csv", "s.csv", "--heldout", "h.csv", "--synthetic-share", "0.5"]) == 0
    assert calls[-1]["synthetic_share"] == 0.5


def test_the_input_arguments_of_the_step_kinds() -> None:
    inputs = {kind: action.inputs for kind, action in STEP_KINDS.items() if action.inputs}
    assert inputs == {
        "select": ("source",),
        "train": ("config",),
        "export": ("model",),
        "encode": ("model", "input"),
        "sample": ("model",),
        "latent": ("model", "data"),
        "interpolate": ("model",),
        "arithmetic": ("model",),
        "translate": ("model", "input"),
        "fid": ("real", "fake"),
        "probe": ("encoder", "data"),
        "evaluate_translation": ("model", "source"),
        "classify": ("model", "input"),
    }


def test_an_actions_signature_is_its_arguments_for_the_python_api() -> None:
    signature = ACTIONS["sample"].signature
    assert list(signature.parameters) == ["model", "n", "out", "label", "seed", "overwrite", "code", "device"]
    assert signature.parameters["n"].default is inspect.Parameter.empty and signature.parameters["seed"].default is None


def test_an_action_refuses_an_unknown_argument() -> None:
    with pytest.raises(TypeError, match="unknown argument.*nn.*valid: out, n, shape"):
        ACTIONS["phantoms"](out="x", nn=3)


def test_every_shipped_pipeline_and_the_demo_pass_the_step_check() -> None:
    from udl_med.demo import demo_steps
    from udl_med.pipeline import PipelineConfig

    for name in shipped_files("pipelines"):
        assert load_pipeline(name).steps
    check_steps(PipelineConfig(name="demo", steps=demo_steps()), "demo")


def _pipeline(tmp_path: Path, steps: list[dict[str, Any]]) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "steps": steps}))
    return path


def test_step_arguments_are_checked_when_a_pipeline_loads(tmp_path: Path) -> None:
    path = _pipeline(tmp_path, [{"name": "a", "run": "phantoms", "with": {"out": "x", "shpe": [8, 8, 4]}}])
    with pytest.raises(ConfigError, match=r"p\.yaml: steps\.a\.with\.shpe: unknown argument of step kind 'phantoms'; did you mean steps\.a\.with\.shape\?"):
        load_pipeline(path)
    path = _pipeline(tmp_path, [{"name": "a", "run": "sample", "with": {"model": "m", "out": "o"}}])
    with pytest.raises(ConfigError, match=r"steps\.a\.with\.n: required by step kind 'sample'"):
        load_pipeline(path)
    path = _pipeline(tmp_path, [{"name": "a", "run": "phantom", "with": {"out": "x"}}])
    with pytest.raises(ConfigError, match=r"steps\.a\.run: unknown step kind 'phantom'; did you mean phantoms\?"):
        load_pipeline(path)
    path = _pipeline(tmp_path, [{"name": "a", "run": "phantoms", "wiht": {"out": "x"}}])
    with pytest.raises(ConfigError, match=r"steps\.a\.wiht: unknown key; did you mean with\?"):
        load_pipeline(path)


def test_a_bad_pipeline_override_is_blamed_on_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _pipeline(tmp_path, [{"name": "a", "run": "phantoms", "with": {"out": "x"}}])
    with pytest.raises(ConfigError) as err:
        load_pipeline(path, ["steps.a.with.sed=3"])
    assert err.value.source == f"--set on {path}" and err.value.key == "steps.a.with.sed" and "did you mean steps.a.with.seed?" in str(err.value)
    assert main(["pipeline", str(path), "--set", "workdri=x"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"udl-med pipeline: error: --set on {path}: workdri: unknown key; did you mean workdir?")
