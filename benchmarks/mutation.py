"""Mutation testing: the fraction of mutmut's mutants that the tests kill, one row per package.

A test that stays green when the code it tests is changed tests nothing. mutmut
(https://github.com/boxed/mutmut, version 3) changes one thing at a time in the code
(``+`` to ``-``, ``<`` to ``<=``, a constant, a keyword argument dropped, a string, a
returned value to None, ...) and runs the tests that call the changed function; a
mutant is *killed* when one of them fails (or times out). The packages and the tests
each may use are ``[tool.mutmut.packages.*]`` in ``pyproject.toml``; each runs in its own
scratch copy, ``build/mutation/PACKAGE/`` (mutmut works in ``mutants/`` under the copy),
with mutmut's shared keys from ``[tool.mutmut]`` plus the package's globs
(``only_mutate``) and tests (its test selection).

Row: ``ours`` is ``(killed + timed out) / (mutants - skipped)``: a survivor, and a
mutant no selected test reaches, count against us. The peer is the goal of issue 26,
0.9. The survivors and their diffs go to ``build/mutation/PACKAGE/survivors.txt``; the
README (Mutation testing) lists those that are equivalent, with why.

Not part of CI: it takes tens of minutes per package on two cores (``elapsed_s`` in
each row).

    .venv/bin/python benchmarks/mutation.py                  # run every package, print rows
    .venv/bin/python benchmarks/mutation.py --package losses # one package
    .venv/bin/python benchmarks/mutation.py --report         # rows of the last runs, no rerun
    .venv/bin/python benchmarks/mutation.py --resume         # new tests: rerun only what was not killed

``--resume`` keeps a package's scratch copy and its verdicts, copies the repository's
current ``tests/`` into it, and reruns only the mutants that survived, had no tests, or
never ran (a run cut off). That is sound while the mutated source and ``[tool.mutmut]``
are unchanged and tests are only added or sharpened: a killed mutant stays killed.
Its seconds are added to the row as ``resume_s``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "mutation"
GOAL = 0.9
PENDING = ("survived", "no tests", "not checked", "check was interrupted by user")  # what --resume reruns


def packages() -> dict[str, dict]:
    """``{name: {"mutate": globs, "tests": pytest arguments[, "sample": N]}}`` from ``pyproject.toml``."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return config["packages"]


def _mutmut() -> str:
    """The mutmut of this interpreter's environment."""
    exe = Path(sys.executable).with_name("mutmut")
    if not exe.exists():
        raise SystemExit("mutmut is not installed: pip install -e '.[dev]'")
    return str(exe)


def prepare(name: str, spec: dict[str, list[str]]) -> Path:
    """A fresh scratch copy of the repository's files whose [tool.mutmut] selects package ``name``."""
    work = BUILD / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    _configure(work, spec)
    return work


def _configure(work: Path, spec: dict) -> None:
    """The scratch copy's pyproject.toml: the repository's, with the package's globs and tests in [tool.mutmut]."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    extra = f"only_mutate = {json.dumps(spec['mutate'])}\npytest_add_cli_args_test_selection = {json.dumps(spec['tests'])}\n"
    (work / "pyproject.toml").write_text(pyproject.replace("[tool.mutmut]\n", "[tool.mutmut]\n" + extra, 1))


def _env() -> dict[str, str]:
    env = {**os.environ, "MPLBACKEND": "Agg", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # mutmut puts mutants/ first itself
    return env


_SHOW = """
import sys
import mutmut.__main__ as m
for name in sys.argv[1:]:
    found = m.find_mutant(name)
    print(f"### {name}: {m.status_by_exit_code[found.exit_code_by_key[name]]}")
    print(m.get_diff_for_mutant(name, path=found.path))
"""


def verdicts(work: Path) -> dict[str, str]:
    """``{mutant: status}`` of every mutant of the scratch copy ``work`` ("not checked" before it ran)."""
    out = subprocess.run([_mutmut(), "results", "--all", "true"], cwd=work, env=_env(), check=True, capture_output=True, text=True).stdout
    return dict(line.strip().rsplit(": ", 1) for line in out.splitlines() if ": " in line)


def resume(name: str, spec: dict, jobs: int) -> float:
    """Rerun package ``name``'s mutants that were not killed, with the repository's current tests; the seconds.

    The scratch copy takes the repository's [tool.mutmut] again: a changed timeout reruns
    the timed-out mutants too (mutmut resets those verdicts itself); a changed test
    selection makes mutmut start over.
    """
    work = BUILD / name
    if not (work / "mutants").exists():
        raise SystemExit(f"--resume: package {name!r} never ran (build/mutation/{name}/mutants is missing)")
    _configure(work, spec)
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "tests"], cwd=ROOT, check=True, capture_output=True)
    for rel in filter(None, files.stdout.decode().split("\0")):
        if (ROOT / rel).is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, work / rel)
    pending = [m for m, status in verdicts(work).items() if status in PENDING]
    if (work / "sample.json").exists():  # a sampled package: only its sample
        chosen = set(json.loads((work / "sample.json").read_text())["mutants"])
        pending = [m for m in pending if m in chosen]
    start = time.perf_counter()
    if pending:
        with open(work / "mutmut.log", "a") as log:
            subprocess.run([_mutmut(), "run", "--max-children", str(jobs), *pending], cwd=work, env=_env(), stdout=log, stderr=subprocess.STDOUT, check=False)
    elapsed = time.perf_counter() - start
    with open(work / "resume_s", "a") as out:
        out.write(f"{elapsed:.0f}\n")
    return elapsed


def run(name: str, spec: dict[str, list[str]], jobs: int) -> float:
    """Run mutmut on package ``name``; the seconds it took."""
    work = prepare(name, spec)
    start = time.perf_counter()
    with open(work / "mutmut.log", "w") as log:
        subprocess.run([_mutmut(), "run", "--max-children", str(jobs)], cwd=work, env=_env(), stdout=log, stderr=subprocess.STDOUT, check=False)
    elapsed = time.perf_counter() - start
    (work / "elapsed_s").write_text(f"{elapsed:.0f}\n")
    return elapsed


def report(name: str) -> dict | None:
    """The JSON row of package ``name``'s last run (None if it never ran), and its survivors file.

    Counted from mutmut's verdicts: ``mutants`` are those tested (killed, timed out,
    survived, no tests, suspicious, interrupted); a mutant never checked (a sample's
    others, a run cut off) is left out and counted in ``not_checked``.
    """
    work = BUILD / name
    if not (work / "mutants").exists():
        return None
    env = {**os.environ}
    env.pop("PYTHONPATH", None)
    counts = Counter(verdicts(work).values())
    killed, timeout = counts["killed"], counts["timeout"]
    tested = sum(n for status, n in counts.items() if status not in ("not checked", "skipped"))
    fraction = (killed + timeout) / tested if tested else 0.0
    survivors = [m for m, status in verdicts(work).items() if status in ("survived", "no tests")]
    with open(work / "survivors.txt", "w") as out:  # one process: `mutmut show` per mutant takes seconds each
        subprocess.run([sys.executable, "-c", _SHOW, *survivors], cwd=work, env=env, stdout=out, check=True)
    elapsed = (work / "elapsed_s").read_text().strip() if (work / "elapsed_s").exists() else None
    row = {
        "benchmark": "mutation",
        "case": name,
        "metric": "killed_fraction",
        "ours": round(fraction, 4),
        "peer_name": "goal of issue 26",
        "peer": GOAL,
        "ratio": round(fraction / GOAL, 4),
        "goal": f">= {GOAL}",
        "meets_goal": fraction >= GOAL,
        "mutants": tested,
        "killed": killed,
        "timeout": timeout,
        "survived": counts["survived"],
        "no_tests": counts["no tests"],
        "suspicious": counts["suspicious"] + counts["segfault"],
        "interrupted": counts["check was interrupted by user"],
        "not_checked": counts["not checked"],
        "elapsed_s": None if elapsed is None else int(elapsed),
        "resume_s": sum(int(x) for x in (work / "resume_s").read_text().split()) if (work / "resume_s").exists() else 0,
        "tests": packages()[name]["tests"],
    }
    if (work / "sample.json").exists():  # a uniform sample of the mutants: the fraction with a 95% Wilson interval
        sample = json.loads((work / "sample.json").read_text())
        row.update(sampled=sample["size"], of=sample["of"], sample_seed=sample["seed"], ci95=_wilson(killed + timeout, tested))
    return row


def _wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    if n == 0:
        return None
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def sample_run(name: str, spec: dict[str, list[str]], jobs: int, size: int, seed: int) -> float:
    """Generate every mutant of package ``name`` and run a uniform sample of ``size`` of them; the seconds.

    For packages whose tests train networks (an hour per hundred mutants on two cores): the
    row's ``ours`` is then an estimate, with its interval.
    """
    work = prepare(name, spec)
    start = time.perf_counter()
    with open(work / "mutmut.log", "w") as log:  # a filter that matches nothing: mutants and test stats only
        subprocess.run([_mutmut(), "run", "--max-children", str(jobs), "udl_med.no_such_module*"], cwd=work, env=_env(), stdout=log, stderr=subprocess.STDOUT, check=False)
    every = sorted(verdicts(work))
    chosen = random.Random(seed).sample(every, min(size, len(every)))
    (work / "sample.json").write_text(json.dumps({"size": len(chosen), "of": len(every), "seed": seed, "mutants": chosen}))
    with open(work / "mutmut.log", "a") as log:
        subprocess.run([_mutmut(), "run", "--max-children", str(jobs), *chosen], cwd=work, env=_env(), stdout=log, stderr=subprocess.STDOUT, check=False)
    elapsed = time.perf_counter() - start
    (work / "elapsed_s").write_text(f"{elapsed:.0f}\n")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", action="append", help="only these packages (repeatable); default: all of [tool.mutmut.packages]")
    parser.add_argument("--report", action="store_true", help="print the rows of the last runs without running mutmut")
    parser.add_argument("--resume", action="store_true", help="rerun only the mutants not killed, with the current tests (see above)")
    parser.add_argument("--sample", type=int, metavar="N", help="run a uniform sample of N mutants (with --sample-seed), not all of them")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel (default 2)")
    args = parser.parse_args()
    specs = packages()
    names = args.package or list(specs)
    unknown = sorted(set(names) - set(specs))
    if unknown:
        raise SystemExit(f"unknown package {unknown[0]!r}: choose from {', '.join(specs)}")
    for name in names:
        if args.report:
            pass
        elif args.resume:
            resume(name, specs[name], args.jobs)
        elif args.sample or specs[name].get("sample"):
            sample_run(name, specs[name], args.jobs, args.sample or specs[name]["sample"], args.sample_seed)
        else:
            run(name, specs[name], args.jobs)
        row = report(name)
        if row is not None:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
