"""Outputs: checked before any work, one line and exit 2 when they cannot be written, nothing half-written left.

Also ``sample``'s folder rules: a non-empty ``--out`` is refused, ``--overwrite`` replaces only
an earlier sample output, and ``--seed`` (a fresh, reported seed without it).
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from udl_med.actions import ACTIONS
from udl_med.cli import main
from udl_med.errors import OutputError
from udl_med.io_utils import TEMP_MARK, atomic_folder, atomic_write, check_writable

# every command that writes, with OUT where its output goes (the inputs need not exist: the check comes first)
WRITERS = {
    "phantoms": ["phantoms", "OUT"],
    "sample": ["sample", "MODEL", "--n", "2", "--out", "OUT"],
    "synthesize": ["synthesize", "MODEL", "--out", "OUT", "--n", "2"],
    "translate": ["translate", "MODEL", "in.nii.gz", "OUT"],
    "fid": ["fid", "real", "fake", "--save-stats", "OUT"],
    "encode": ["encode", "MODEL", "in.nii.gz", "--out", "OUT"],
    "classify": ["classify", "MODEL", "in.nii.gz", "--out", "OUT"],
    "export": ["export", "MODEL", "OUT"],
    "convert": ["convert", "in.nii.gz", "OUT"],
    "memorization": ["memorization", "s", "t", "--holdout", "h", "--figure", "OUT"],
    "demo": ["demo", "--out", "OUT"],
}
SUFFIX = {"fid": "stats.npz", "encode": "f.npz", "classify": "p.csv", "translate": "sct.nii.gz", "convert": "x.nii.gz"}


def _tiny_model(folder: Path, manifest: Path) -> Path:
    """An untrained tiny 2D LAPGAN on CT (sampling needs no training)."""
    from udl_med.data.datasets import build_dataset, data_spec
    from udl_med.engine.config import validate_config
    from udl_med.engine.model_io import save_model
    from udl_med.methods.lapgan import LAPGAN, LAPGANConfig

    model = {"levels": 2, "latent_dim": 8, "coarse_channels": [8], "fine_channels": 4, "fine_blocks": 1, "disc_channels": [4], "conditional": False}
    data = {"source": str(manifest), "layout": "2d", "size": [8, 8], "modality": "CT"}
    run = validate_config({"method": "lapgan", "data": data, "model": model})
    spec = data_spec(run.data, build_dataset(run.data, run.data.split))
    torch.manual_seed(0)
    method = LAPGAN(LAPGANConfig(**model), spec).eval()
    save_model(folder, method, run.to_dict(), method.state_dict(), step=1)
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, phantom_manifest: Path) -> str:
    return str(_tiny_model(tmp_path_factory.mktemp("outputs") / "model", phantom_manifest))


def _no_work(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace every action's library function by one that records that the work started."""
    started: list[str] = []

    def function_of(name: str):
        def work(**kwargs):
            started.append(name)
            raise AssertionError(f"{name} started its work")

        return lambda: work

    for name, action in list(ACTIONS.items()):
        monkeypatch.setitem(ACTIONS, name, replace(action, function=function_of(name)))
    return started


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_an_output_under_a_file_is_refused_before_any_work(command: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """``--out afile/synth``: a path under a file cannot be written, not even by root."""
    started = _no_work(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    out = f"afile/{SUFFIX.get(command, 'synth')}"
    argv = [out if a == "OUT" else a for a in WRITERS[command]]
    assert main(argv) == 2
    line = _one_line(capsys)
    assert line.startswith(f"udl-med {command}: error: {out}: ") and "afile is a file" in line, line
    assert started == [] and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_every_argument_that_names_an_output_is_checked() -> None:
    names = {"out", "output", "out_dir", "save_real_stats"}
    unchecked = [f"{a.name}.{arg.name}" for a in ACTIONS.values() for arg in a.args if arg.name in names and not arg.output]
    assert unchecked == []


def test_a_read_only_folder_is_refused_before_any_work(model: str, tmp_path: Path, capsys) -> None:
    """A real ``sample`` into a folder with mode 0o555: refused, unless the writer (root) may write there anyway."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        probe = ro / "probe"
        try:
            probe.write_text("x")
            probe.unlink()
            writable = True  # root: the permission bits do not stop it, so the check must not either
        except PermissionError:
            writable = False
        code = main(["sample", model, "--n", "2", "--out", str(ro / "synth"), "--seed", "1"])
        if writable:
            assert os.getuid() == 0 and code == 0 and (ro / "synth" / "sample_0000.nii.gz").is_file()
        else:
            assert code == 2
            assert f"{ro / 'synth'}: cannot be written" in _one_line(capsys)
            assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_a_read_only_file_system_is_refused_before_any_work(model: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """EROFS (a read-only mount; root cannot write there either) for the probe: exit 2 before the model is read."""
    import udl_med.engine.model_io as model_io

    ro = tmp_path / "mnt"
    ro.mkdir()
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(ro)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    monkeypatch.setattr(model_io, "load_model", lambda *a, **k: pytest.fail("the model was read before the output was checked"))
    for argv in (
        ["sample", model, "--n", "2", "--out", str(ro / "synth")],
        ["translate", model, "in.nii.gz", str(ro / "sct.nii.gz")],
        ["phantoms", str(ro / "ph")],
        ["fid", "real", "fake", "--save-stats", str(ro / "stats.npz")],
    ):
        assert main(argv) == 2
        line = _one_line(capsys)
        assert f"{argv[-1]}: cannot be written: {ro}: Read-only file system" in line, line
    assert list(ro.iterdir()) == []


def test_check_writable_kinds(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    assert check_writable(tmp_path / "new" / "deeper" / "x.nii.gz") == tmp_path / "new" / "deeper" / "x.nii.gz"
    check_writable(tmp_path / "d", "folder")
    check_writable(tmp_path / "d", "path")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable(tmp_path / "f", "folder")
    with pytest.raises(OutputError, match="is a folder; give a file name"):
        check_writable(tmp_path / "d", "file")
    with pytest.raises(OutputError, match="f is a file, not a folder"):
        check_writable(tmp_path / "f" / "a" / "b.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]  # nothing created, no probe left


def test_a_failing_clean_up_never_hides_the_writers_error(tmp_path: Path, monkeypatch) -> None:
    def writer(tmp: Path) -> None:
        tmp.write_text("half")
        raise ValueError("the writer's own error")

    real_unlink, real_rmtree = Path.unlink, __import__("shutil").rmtree

    def unlink(self, missing_ok=False):
        if TEMP_MARK in self.name:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(ValueError, match="the writer's own error"):
        atomic_write(tmp_path / "x.txt", writer)

    def folder_writer(tmp: Path) -> None:
        raise KeyError("the folder writer's own error")

    def rmtree(path, ignore_errors=False, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("udl_med.io_utils.shutil.rmtree", rmtree)
    with pytest.raises(KeyError, match="the folder writer's own error"):
        atomic_folder(tmp_path / "folder", folder_writer)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    monkeypatch.setattr("udl_med.io_utils.shutil.rmtree", real_rmtree)


def test_a_write_that_fails_after_the_checks_is_one_line_and_leaves_nothing(model: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """A disk that fills up (or turns read-only) half-way: exit 2 naming the target, no folder, no temporary."""
    import udl_med.data.writers as writers
    import udl_med.inference.sample as sample_module

    real_write, calls = writers.write_image, []

    def failing_write(image, path):
        calls.append(path)
        if len(calls) == 2:
            tmp = Path(path).with_name(f".{Path(path).name}{TEMP_MARK}{os.getpid()}-0123abcd.nii.gz")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        return real_write(image, path)

    monkeypatch.setattr(sample_module, "write_image", failing_write)  # the name sample writes through
    assert main(["sample", model, "--n", "3", "--out", str(tmp_path / "synth"), "--seed", "0"]) == 2
    line = _one_line(capsys)
    assert line.startswith("udl-med sample: error: ") and "sample_0001.nii.gz: No space left on device" in line and TEMP_MARK not in line
    assert list(tmp_path.iterdir()) == []  # the first sample was written into a hidden folder that is gone


# --- sample's folder -------------------------------------------------------------------------


def test_sample_refuses_a_folder_with_other_files(model: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth"
    out.mkdir()
    for i in range(5):
        (out / f"old_{i}.nii.gz").write_bytes(b"earlier")
    assert main(["sample", model, "--n", "2", "--out", str(out)]) == 2
    assert "exists and is not an empty folder" in _one_line(capsys)
    assert main(["sample", model, "--n", "2", "--out", str(out), "--overwrite"]) == 2  # not an earlier sample output
    assert "has none" in _one_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == [f"old_{i}.nii.gz" for i in range(5)]


def test_sample_overwrite_replaces_only_its_own_earlier_output(model: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth"
    assert main(["sample", model, "--n", "4", "--out", str(out), "--seed", "3"]) == 0
    capsys.readouterr()
    record = json.loads((out / "sample.json").read_text())
    assert record["kind"] == "images" and record["seed"] == 3 and len([f for f in record["files"] if f.endswith(".nii.gz")]) == 4
    assert main(["sample", model, "--n", "2", "--out", str(out), "--seed", "4"]) == 2  # no silent mixing
    assert "--overwrite" in _one_line(capsys)
    assert main(["sample", model, "--n", "2", "--out", str(out), "--seed", "4", "--overwrite"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["sample_0000.nii.gz", "sample_0001.nii.gz"]  # the folder holds what the manifest lists
    assert len((out / "manifest.csv").read_text().strip().splitlines()) == 3
    (out / "mine.txt").write_text("a file of the user's")
    assert main(["sample", model, "--n", "2", "--out", str(out), "--overwrite"]) == 2
    assert "mine.txt" in _one_line(capsys)
    assert (out / "mine.txt").is_file()


def test_sample_seed_repeats_and_no_seed_is_fresh_and_reported(model: str, tmp_path: Path, capsys) -> None:
    from udl_med.data.io import read_image

    def run(out: str, *extra: str) -> dict:
        assert main(["sample", model, "--n", "2", "--out", str(tmp_path / out), "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    a, b = run("a", "--seed", "5"), run("b", "--seed", "5")
    assert a["seed"] == b["seed"] == 5
    volume = read_image(tmp_path / "a" / "sample_0000.nii.gz").numpy()
    np.testing.assert_array_equal(volume, read_image(tmp_path / "b" / "sample_0000.nii.gz").numpy())
    c, d = run("c"), run("d")
    assert isinstance(c["seed"], int) and c["seed"] != d["seed"]  # not always 0 (the training previews' seed)
    assert not np.array_equal(read_image(tmp_path / "c" / "sample_0000.nii.gz").numpy(), read_image(tmp_path / "d" / "sample_0000.nii.gz").numpy())
    e = run("e", "--seed", str(c["seed"]))  # the reported seed repeats the samples
    np.testing.assert_array_equal(read_image(tmp_path / "e" / "sample_0000.nii.gz").numpy(), read_image(tmp_path / "c" / "sample_0000.nii.gz").numpy())
    assert e["seed"] == c["seed"]

