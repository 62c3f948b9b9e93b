"""Installed use: build the wheel, install it into a fresh virtual environment outside the repository, use it there.

No network: the wheel is built with the running environment's setuptools
(``--no-build-isolation``), installed with ``--no-deps``, and the fresh environment
sees the running environment's packages (torch, MONAI, MLflow ...) through a ``.pth``
file, so only udl-med itself comes from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "udl_med", "configs", "pipelines")


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("installed")
    assert ROOT not in base.parents
    src = base / "src"
    src.mkdir()
    for name in SOURCES:  # build from a copy: nothing is written into the checkout
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(item, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(base / "dist"), str(src)], base, env)
    (wheel,) = (base / "dist").glob("udl_med-*.whl")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, env)
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base, env).stdout.strip())
    (site / "_udl_med_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, monai, mlflow ... (appended after the venv's own)
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)], base, env)
    work = base / "work"
    work.mkdir()
    env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}"}
    return {"src": src, "venv": venv, "python": python, "udl_med": venv / "bin" / "udl-med", "work": work, "env": env, "wheel": wheel}


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: dict) -> None:
    out = run([str(installed["python"]), "-c", "import udl_med, udl_med.shipped as s; print(udl_med.__file__); print(s.shipped_folder('configs'))"], installed["work"], installed["env"])
    module, configs = out.stdout.strip().splitlines()
    assert Path(module).is_relative_to(installed["venv"]) and Path(configs).is_relative_to(installed["venv"])


@pytest.mark.slow
def test_configs_train_by_name_and_a_shipped_pipeline_by_name(installed: dict) -> None:
    udl, work, env = str(installed["udl_med"]), installed["work"], installed["env"]
    listed = last_json(run([udl, "configs", "--json"], work, env))
    assert sorted(listed["configs"]) == sorted(p.stem for p in (installed["src"] / "configs").glob("*.yaml"))
    assert sorted(listed["pipelines"]) == sorted(p.stem for p in (installed["src"] / "pipelines").glob("*.yaml"))
    assert all(listed["configs"].values()) and all(listed["pipelines"].values())

    run([udl, "phantoms", "data/phantoms", "--n", "6", "--shape", "32", "32", "8"], work, env)
    small = ["--set", "train.batch_size=4", "--set", "train.eval_items=4", "--set", "train.threads=1", "--set", "tracking.log_model=false"]
    report = last_json(run([udl, "train", "ae2d-phantom", "--set", "train.steps=5", *small, "--json"], work, env))
    assert report["steps"] == 5 and (work / report["model_dir"] / "udl_med_model.pt").is_file()
    assert Path(report["run_dir"]).parts[0] == "runs"  # outputs relative to the working directory

    # The shipped pipeline by name, scaled down; its train step's config is a shipped name.
    train_set = json.dumps(["data.source=${steps.phantoms.manifest}", "output_dir=${workdir}/runs/train", "train.steps=5", *small[1::2]])
    result = last_json(
        run(
            [
                udl, "pipeline", "pretrain-encoder",
                "--set", "steps.phantoms.with.n=6", "--set", "steps.phantoms.with.shape=[32,32,8]",
                "--set", "steps.heldout.with.n=12", "--set", "steps.heldout.with.shape=[32,32,8]",
                "--set", f"steps.train.with.set={train_set}",
                "--set", "steps.probe.with.quick=true", "--set", "steps.probe.with.label_fraction=0.5",
                "--json",
            ],
            work,
            env,
        )
    )
    assert result["workdir"] == str(Path("runs") / "pretrain-encoder")
    assert (work / "runs" / "pretrain-encoder" / "encoder" / "encoder.json").is_file()
    assert 0.0 <= result["probe.linear_probe/pretrained"] <= 1.0
