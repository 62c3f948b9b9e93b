"""Sweep of the shipped configs: each trains for a few steps on fresh phantoms, then samples.

Not a benchmark against a peer: a smoke run of every ``configs/*.yaml`` through the
command line, as a user runs it, too slow for the test suite (about a minute per config
on two loaded cores). In a fresh working folder it writes the data the configs name
(``udl-med phantoms data/phantoms``; ``data/lesion-slices``, ``data/liver-crops`` and
``data/liver-crops-16`` with :func:`udl_med.evaluation.utility.lesion_slices`, as the
configs' headers say), then per config::

    udl-med train NAME --set train.steps=3 ... --json
    udl-med sample runs/NAME/model --n 4 --out samples/NAME --seed 0 --json

A config passes when training exits 0 and ``sample`` exits 0, or refuses with exit 2
and one line on stderr (a method that cannot sample); a config whose training refuses
its data with exit 2 and one line is reported as ``train-refused`` with that line
(judge whether it tells the user what to do). Anything else (exit 1, a traceback, a
multi-line refusal) is ``FAIL``. One JSON object per config on stdout, then a summary.

    .venv/bin/python benchmarks/config_sweep.py [--from pix2pix2d-phantom] [--configs A B] [--n 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
UDL_MED = [sys.executable, "-c", "import sys; from udl_med.cli import main; sys.exit(main())"]  # this checkout's udl-med
FAST = ["train.steps=3", "train.batch_size=2", "train.log_every=1", "train.eval_every=3", "train.checkpoint_every=3", "train.eval_items=4", "train.threads=1"]
# method -> overrides that keep its inner loops to a few steps (as tests/engine/test_mlflow_every_method.py)
EXTRA = {
    "denoising_autoencoder": ["model.chain_steps=2"],
    "stacked_autoencoder": ["model.layer_steps=1"],
    "rbm": ["model.sample_steps=3"],
    "dbn": ["model.layer_steps=1", "model.sample_steps=3"],
    "two_stage_gan": ["model.stage1_steps=1"],
}


def _run(cmd: list[str], cwd: Path, timeout: float) -> tuple[int, str, str, float]:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout:.0f} s", time.perf_counter() - start
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - start


def _one_line(rc: int, err: str) -> bool:
    """A clean refusal: exit 2 and one line on stderr (log lines at WARNING and above aside)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith(("WARNING", "INFO", "udl_med"))]
    return rc == 2 and len(errors) <= 1 and "Traceback" not in err


def make_data(work: Path, n: int, shape: list[int]) -> None:
    rc, _, err, _ = _run([*UDL_MED, "phantoms", "data/phantoms", "--n", str(n), "--shape", *map(str, shape), "--seed", "0"], work, 600)
    if rc != 0:
        raise SystemExit(f"phantoms failed: {err.strip().splitlines()[-1:]}")
    code = (
        "from udl_med.evaluation.utility import lesion_slices\n"
        "lesion_slices('data/phantoms/manifest.csv', 'data/lesion-slices')\n"
        "lesion_slices('data/phantoms/manifest.csv', 'data/liver-crops', window=(-200.0, 300.0), crop=[32, 32])\n"
        "lesion_slices('data/phantoms/manifest.csv', 'data/liver-crops-16', window=(-200.0, 300.0), crop=[16, 16])\n"
    )
    rc, _, err, _ = _run([sys.executable, "-c", code], work, 600)
    if rc != 0:
        raise SystemExit(f"lesion_slices failed: {err.strip().splitlines()[-1:]}")


def sweep_one(name: str, work: Path, timeout: float) -> dict:
    method = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text()).get("method", "")
    sets = [*FAST, *EXTRA.get(method, []), f"tracking.uri=sqlite:///{work / 'mlflow.db'}", f"tracking.run_name={name}", f"output_dir=runs/{name}"]
    cmd = [*UDL_MED, "train", name, "--json"] + [a for s in sets for a in ("--set", s)]
    row: dict = {"benchmark": "config_sweep", "case": name, "method": method}
    rc, out, err, secs = _run(cmd, work, timeout)
    row.update(train_rc=rc, train_s=round(secs, 1))
    if rc != 0:
        row["status"] = "train-refused" if _one_line(rc, err) else "FAIL"
        row["message"] = (err.strip().splitlines() or [""])[-1][:400]
        return row
    rc, out, err, secs = _run([*UDL_MED, "sample", f"runs/{name}/model", "--n", "4", "--out", f"samples/{name}", "--seed", "0", "--json"], work, timeout)
    row.update(sample_rc=rc, sample_s=round(secs, 1))
    if rc == 0:
        row["status"] = "ok"
        report = json.loads(out.strip().splitlines()[-1])
        row["sampled"] = report.get("n", report.get("files") and len(report["files"]))
    elif _one_line(rc, err):
        row["status"] = "sample-refused"
        row["message"] = err.strip().splitlines()[-1][:400]
    else:
        row["status"] = "FAIL"
        row["message"] = (err.strip().splitlines() or [""])[-1][:400]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", help="these configs (default: every shipped one)")
    parser.add_argument("--from", dest="start", help="start at this config (alphabetical order, as `udl-med configs`)")
    parser.add_argument("--n", type=int, default=8, help="phantom subjects (default: 8)")
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 32, 16], help="phantom shape (default: 32 32 16)")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per command (default: 900)")
    args = parser.parse_args()
    names = args.configs or sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    if args.start:
        names = [n for n in names if n >= args.start]
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        make_data(work, args.n, args.shape)
        rows = []
        for name in names:
            row = sweep_one(name, work, args.timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    print(json.dumps({"benchmark": "config_sweep", "case": "summary", "n_configs": len(rows), **counts, "failed": [r["case"] for r in rows if r["status"] == "FAIL"]}))


if __name__ == "__main__":
    main()
