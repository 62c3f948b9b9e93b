"""One way to write files: killed writers leave no partial file, and every writer uses the helper."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from udl_med.io_utils import TEMP_MARK, atomic_folder, atomic_write, atomic_write_text, stale_temporaries, temporary_name

PACKAGE = Path(__file__).resolve().parents[1] / "udl_med"
EXIT_WAIT_S = 120  # generous: on a loaded machine an interpreter is slow to exit after a signal

SLOW_WRITER = r"""
import sys, time
from pathlib import Path
from udl_med.io_utils import atomic_write, terminate_as_interrupt
terminate_as_interrupt()
def write(tmp):
    with open(tmp, "wb") as handle:
        handle.write(b"x" * 100_000)  # half the file
        handle.flush()
        print("half", flush=True)
        time.sleep(60)
        handle.write(b"y" * 100_000)
atomic_write(Path(sys.argv[1]), write)
"""


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if TEMP_MARK in p.name]


def start_slow_writer(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half"  # the writer is mid-way
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_terminated_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path, sig: int) -> None:
    target = tmp_path / "manifest.csv"
    target.write_text("old\n")
    proc = start_slow_writer(target)
    assert len(temporaries(tmp_path)) == 1  # the half-written file is a temporary, not the target
    proc.send_signal(sig)
    proc.wait(timeout=EXIT_WAIT_S)
    assert proc.returncode != 0
    assert target.read_text() == "old\n"
    assert temporaries(tmp_path) == []


def test_a_killed_writer_leaves_no_partial_file_and_its_temporary_is_swept(tmp_path: Path) -> None:
    target = tmp_path / "volume.nii.gz"
    proc = start_slow_writer(target)
    proc.kill()  # SIGKILL: no clean-up can run in the writer
    proc.wait(timeout=EXIT_WAIT_S)
    assert not target.exists()  # never half a file under the real name
    left = temporaries(tmp_path)
    assert len(left) == 1 and left[0].name.startswith(".volume.nii.gz.tmp-") and left[0].name.endswith(".nii.gz")
    assert stale_temporaries(target) == left  # its process is gone
    atomic_write_text(target, "new")  # the next write of the target removes it
    assert target.read_text() == "new"
    assert temporaries(tmp_path) == []


def test_a_live_writers_temporary_is_not_swept(tmp_path: Path) -> None:
    target = tmp_path / "grid.png"
    proc = start_slow_writer(target)
    try:
        assert stale_temporaries(target) == []
        atomic_write_text(tmp_path / "other.txt", "x")
        assert len(temporaries(tmp_path)) == 1
    finally:
        proc.kill()
        proc.wait(timeout=EXIT_WAIT_S)


def test_a_failing_writer_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "features.npz"
    np.savez(target, a=np.zeros(3))

    def failing(tmp: Path) -> None:
        np.savez(tmp, a=np.ones(3))
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert np.load(target)["a"].tolist() == [0.0, 0.0, 0.0]
    assert temporaries(tmp_path) == []


def test_the_temporary_keeps_the_suffix_and_the_writer_must_write_it(tmp_path: Path) -> None:
    assert temporary_name(tmp_path / "ct.nii.gz").name.endswith(".nii.gz")
    assert temporary_name(tmp_path / "a.png").name.startswith(f".a.png{TEMP_MARK}{os.getpid()}-")
    atomic_write(tmp_path / "s.npz", lambda tmp: np.savez(tmp, x=np.arange(2)))  # NumPy keeps a name ending in .npz
    assert np.load(tmp_path / "s.npz")["x"].tolist() == [0, 1]
    with pytest.raises(RuntimeError, match="did not create"):
        atomic_write(tmp_path / "none.txt", lambda tmp: None)
    assert temporaries(tmp_path) == []


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    atomic_folder(folder, lambda tmp: (tmp / "IM1.dcm").write_bytes(b"1"))

    def half(tmp: Path) -> None:
        (tmp / "IM1.dcm").write_bytes(b"2")
        raise RuntimeError("pixel data")

    with pytest.raises(RuntimeError):
        atomic_folder(folder, half)
    assert (folder / "IM1.dcm").read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]
    atomic_folder(folder, lambda tmp: (tmp / "IM2.dcm").write_bytes(b"3"))
    assert sorted(p.name for p in folder.iterdir()) == ["IM2.dcm"]
    time.sleep(0)  # nothing else is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


# --- every writer in the package goes through the helper --------------------------------

WRITING_METHODS = {"save", "save_as", "savez", "savez_compressed", "write_text", "write_bytes", "WriteImage", "to_csv"}
HELPERS = {"atomic_write", "atomic_folder", "atomic_write_text", "atomic_write_bytes", "atomic_torch_save"}
# Writes that are not outputs of udl-med, each with its reason.
ALLOWED = {
    ("engine/tracking.py", "write_text"): "config.yaml in a TemporaryDirectory, handed to mlflow.log_artifact (MLflow copies it)",
    ("data/readers.py", "open"): "os.devnull, opened to silence ITK's stderr while it reads",
}


def _is_write_open(call: ast.Call) -> bool:
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    if isinstance(call.func, ast.Attribute) and call.func.attr == "open":  # Path.open(mode)
        mode = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and any(c in mode.value for c in "wax+")


def raw_writes(source: str) -> list[tuple[int, str]]:
    """(line, call) of every file-writing call that is not inside a callback given to the helper."""
    tree = ast.parse(source)
    inside: set[int] = set()
    passed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in HELPERS:
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if isinstance(arg, ast.Lambda):
                    inside.update(id(n) for n in ast.walk(arg))
                elif isinstance(arg, ast.Name):
                    passed.add(arg.id)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in passed:
            inside.update(id(n) for n in ast.walk(node))
    in_memory = {  # names bound to io.BytesIO() / io.StringIO(): writing there is no file
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "attr", getattr(node.value.func, "id", "")) in ("BytesIO", "StringIO")
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in inside:
            continue
        if any(isinstance(arg, ast.Name) and arg.id in in_memory for arg in node.args):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in WRITING_METHODS and not (name == "save" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "mlflow"):
            found.append((node.lineno, name))
        elif name in ("replace", "rename") and len(node.args) == 1 and not node.keywords:  # os.replace / Path.replace(target)
            found.append((node.lineno, name))
        elif name in ("replace", "rename") and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "os":
            found.append((node.lineno, f"os.{name}"))
        elif name == "open" and _is_write_open(node):
            found.append((node.lineno, "open"))
    return sorted(found)


def test_the_call_site_scan_finds_raw_writes() -> None:
    source = (
        "import io, os\ndef f(p, t):\n    p.write_text('x')\n    os.replace(t, p)\n    open(p, 'w')\n"
        "    atomic_write(p, lambda q: q.write_text('ok'))\n    buffer = io.BytesIO()\n    torch.save({}, buffer)\n"
    )
    assert raw_writes(source) == [(3, "write_text"), (4, "os.replace"), (5, "open")]


def test_every_writer_in_the_package_goes_through_the_helper() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "io_utils.py":
            continue
        for line, name in raw_writes(path.read_text()):
            if (rel, name) not in ALLOWED:
                offenders.append(f"udl_med/{rel}:{line}: {name}")
    assert offenders == [], "write through udl_med.io_utils.atomic_write:\n" + "\n".join(offenders)


def test_the_helper_is_used_at_the_known_call_sites() -> None:
    users = sorted(
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "io_utils.py" and "udl_med.io_utils import" in path.read_text()
    )
    for expected in (
        "data/dicom.py", "data/manifest.py", "data/preview.py", "data/writers.py", "engine/checkpoint.py",
        "inference/encode.py", "inference/export_encoder.py", "inference/export_translator.py", "metrics/statistics.py",
    ):
        assert expected in users
