"""Command-line conventions: --version, a help text with its default for every argument, whole
config descriptions, progress bars that honour TQDM_DISABLE and log lines that are not glued to them."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from udl_med.actions import ACTIONS
from udl_med.cli import _help, build_parser, main
from udl_med.shipped import description, shipped_files

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"udl-med {version('udl-med')}"


def test_every_argument_has_a_help_text_that_says_its_default() -> None:
    missing = []
    for action in ACTIONS.values():
        for arg in action.args:
            if not arg.help.strip():
                missing.append(f"{action.name}.{arg.name}: no help")
            elif not (arg.required or arg.kind == "flag" or arg.group or "default" in _help(arg)):
                missing.append(f"{action.name}.{arg.name}: {_help(arg)!r} says no default")
    assert missing == []


@pytest.mark.parametrize("command,flag,shown", [("phantoms", "--shape", "(default: 48 48 24)"), ("phantoms", "--seed", "(default: 0)"),
                                                ("phantoms", "--format", "(default: nifti)"), ("export", "--format", "(default: encoder)"),
                                                ("translate", "--direction", "(default: from each input's modality"), ("sample", "--seed", "(default: a fresh seed")])  # fmt: skip
def test_help_shows_the_defaults(command: str, flag: str, shown: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert re.search(re.escape(flag) + r"[^-]*" + re.escape(shown), text), text


def test_config_descriptions_are_whole_sentences() -> None:
    for kind in ("configs", "pipelines"):
        for name, path in shipped_files(kind).items():
            text = description(path)
            assert text and text[-1] in ".!?)" and "udl-med train" not in text, (name, text)
    first = description(shipped_files("configs")["gan-ring-best"])
    assert first.endswith("k = 3.") and "Gurumurthy et al. 2017" in first  # cut mid-sentence before


TINY_GAN = """method: gan
data: {kind: points, points: {mixture: ring, n_train: 256, n_eval: 64}}
model: {architecture: mlp, latent_dim: 4, g_hidden: [8], d_hidden: [8], loss: non-saturating}
train: {steps: 40, batch_size: 16, log_every: 1000, eval_every: 1000, eval_items: 16, checkpoint_every: 1000}
tracking: {enabled: false}
"""


def _train_tiny(tmp_path: Path, name: str, monkeypatch, capsys) -> str:
    import udl_med.engine.train as engine

    config = tmp_path / f"{name}.yaml"
    config.write_text(TINY_GAN + f"output_dir: {tmp_path / name}\n")
    real_scalars, calls = engine.scalars, []

    def scalars(losses):
        calls.append(1)
        if len(calls) == 20:
            logging.getLogger("udl_med.engine.train").warning("MARK half-way")
        return real_scalars(losses)

    monkeypatch.setattr(engine, "scalars", scalars)
    monkeypatch.setattr(engine.tqdm, "monitor_interval", 0)
    assert main(["train", str(config), "--set", "train.steps=40"]) == 0
    return capsys.readouterr().err


def test_progress_bar_honours_tqdm_disable_and_log_lines_are_not_glued(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    err = _train_tiny(tmp_path, "shown", monkeypatch, capsys)
    assert "40/40" in err  # the bar
    (mark,) = [line for line in err.split("\n") if "MARK" in line]
    assert mark.split("\r")[-1].startswith("WARNING udl_med.engine.train: MARK half-way"), repr(mark)  # on a line of its own
    monkeypatch.setenv("TQDM_DISABLE", "1")
    err = _train_tiny(tmp_path, "hidden", monkeypatch, capsys)
    assert "MARK half-way" in err and "40/40" not in err and "it/s" not in err and "\r" not in err
