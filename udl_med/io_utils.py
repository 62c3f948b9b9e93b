"""One way to write files: a temporary name beside the target, fsync, then one rename.

Every file udl-med writes (checkpoints, model files, volumes, manifests, PNG grids,
feature files, statistics, exported encoders, bundles, TorchScript files) goes through
:func:`atomic_write`, and every folder written as a whole (a DICOM series) through
:func:`atomic_folder`. A writer that fails or is killed part-way leaves the old file
(or none) and, where it can still run its clean-up, no temporary: a temporary of a
process killed with SIGKILL has a name that starts with ``.`` and contains ``.tmp-``,
beside its target, and is never mistaken for an output (readers skip hidden names).

A writer killed with SIGKILL (or by a power cut) cannot clean up: its temporary,
``.NAME.tmp-<pid>-<random>SUFFIX`` beside the target, names the process that wrote it,
and the next :func:`atomic_write` of the same target removes the temporaries of
processes that no longer run. The ``udl-med`` command turns SIGTERM into the same
clean-up path as Ctrl-C (:func:`terminate_as_interrupt`).

Outputs are checked before any work (:func:`check_writable`, called by
:meth:`udl_med.actions.Action.__call__` for every argument marked ``output``): a
read-only folder, a path under a file, or a file where a folder is needed is refused
with one line naming the path, so that no command computes for minutes and then fails.

The temporary keeps the target's suffix (``.nii.gz``, ``.png``, ``.npz`` ...), since
SimpleITK, Pillow and NumPy choose the format from the name.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from udl_med.errors import OutputError

TEMP_MARK = ".tmp-"
_DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz")

__all__ = [
    "TEMP_MARK",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_folder",
    "temporary_name",
    "stale_temporaries",
    "terminate_as_interrupt",
    "check_writable",
    "target_of",
    "progress_disabled",
    "WRITE_ERRNOS",
]

# errors of the file system that a user fixes (a read-only or full disk, a path under a file)
WRITE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOSPC, errno.EDQUOT}
)
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)" + re.escape(TEMP_MARK) + r"\d+-[0-9a-f]{8}")


def _suffix(name: str) -> str:
    lower = name.lower()
    for double in _DOUBLE_SUFFIXES:
        if lower.endswith(double):
            return name[-len(double) :]
    return Path(name).suffix


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside ``path`` with the same suffix: ``.NAME.tmp-<pid>-<random>SUFFIX``."""
    suffix = _suffix(path.name)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def target_of(path: str | Path) -> Path:
    """The path a temporary (``.NAME.tmp-<pid>-<random>SUFFIX``, or a file in a temporary folder) stands for."""
    parts = []
    for part in Path(path).parts:
        match = _TEMPORARY.match(part)
        parts.append(match.group("name") if match else part)
    return Path(*parts)


def check_writable(path: str | Path, kind: Literal["file", "folder", "path"] = "file") -> Path:
    """Raise :class:`~udl_med.errors.OutputError` now if ``path`` could not be written later.

    Args:
        path: the output: a file (its folder is created when written), a folder (created),
            or ``path``: either (e.g. a ``.nii.gz`` name or a DICOM series folder name).
        kind: ``file``, ``folder`` or ``path``.

    Checks that no part of the path above it is a file, that a ``folder`` output is not
    a file and a ``file`` output not a folder, and writes (and removes) a hidden probe
    file in the nearest existing folder: the one test a read-only mount, missing
    permissions (also under ACLs) and a full quota all answer. Nothing is created.

    Returns:
        ``path``.
    """
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OutputError(path, "exists and is a file, not a folder")
    if kind == "file" and path.is_dir():
        raise OutputError(path, "is a folder; give a file name")
    folder = path if kind != "file" and path.is_dir() else path.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(path, f"cannot be written: {folder} is a file, not a folder")
    probe = folder / f".{path.name or 'out'}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}.probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        raise OutputError(path, f"cannot be written: {folder}: {err.strerror or err}") from None
    os.close(fd)
    try:
        probe.unlink()
    except OSError:
        pass
    return path


def progress_disabled(off: bool = False) -> bool:
    """Whether a progress bar is hidden: ``off`` (the caller's reason), or ``TQDM_DISABLE`` set true.

    tqdm reads ``TQDM_DISABLE`` only when the caller passes no ``disable=``; udl-med's
    bars pass one, so they ask here (as tqdm parses it: ``1``, ``true``, ``yes``, ``on``).
    """
    return off or os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_temporaries(path: Path) -> list[Path]:
    """Temporaries of ``path`` (files or folders) left by writers that no longer run."""
    pattern = re.compile(re.escape(f".{path.name}{TEMP_MARK}") + r"(\d+)-[0-9a-f]{8}")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return []
    found = []
    for sibling in siblings:
        match = pattern.match(sibling.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            found.append(sibling)
    return found


def _sweep(path: Path) -> None:
    for stale in stale_temporaries(path):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def terminate_as_interrupt() -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, so writers clean up as on Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"terminated by {signal.Signals(signum).name}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(tmp: Path) -> None:
    """Remove a temporary if it can be removed; a failing clean-up never hides the error that caused it."""
    try:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    except OSError:
        pass


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path``, fsync it, rename it over ``path``.

    Args:
        path: the file to (re)place; its folder is created.
        write: writes the whole file to the path it is given (e.g.
            ``lambda p: torch.save(obj, p)``); it must write exactly that path.

    Returns:
        ``path``. On any failure, including KeyboardInterrupt, the temporary is removed
        and the old ``path`` (if any) is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        if not tmp.is_file():
            raise RuntimeError(f"atomic_write: the writer did not create {tmp}")
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)  # never raises: the writer's own error is the one to see
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_folder(folder: str | Path, write: Callable[[Path], Any], replace: Callable[[Path], None] | None = None) -> Path:
    """Fill a temporary folder beside ``folder`` with ``write(tmp)``, then rename it to ``folder``.

    Args:
        folder: the folder to (re)place.
        write: fills the (empty, existing) folder it is given.
        replace: called with ``folder`` before an existing one is swapped out; raise
            there to refuse (e.g. a folder that holds files of another kind).

    Returns:
        ``folder``. On failure the temporary folder is removed; an existing ``folder``
        is swapped out only once the new one is complete.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _sweep(folder)
    tmp = folder.with_name(f".{folder.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        write(tmp)
        for child in tmp.iterdir():
            if child.is_file():
                _fsync_file(child)
        _fsync_dir(tmp)
        if folder.exists():
            if replace is not None:
                replace(folder)
            trash = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(folder, trash)
            os.rename(tmp, folder)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, folder)
    except BaseException:
        _discard(tmp)
        raise
    _fsync_dir(folder.parent)
    return folder
