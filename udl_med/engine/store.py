"""The MLflow store, created and migrated once even when many runs start together.

A sweep starts several ``udl-med train`` processes at once, often in a fresh working
directory whose default SQLite store (``mlflow.db``) does not exist yet. MLflow creates
the tables and runs its Alembic migrations when a process first opens the store; two
processes doing so together collide (``table _alembic_tmp_latest_metrics already
exists``). :func:`prepare_store` opens the store under a file lock beside the database
(``mlflow.db.lock``, :mod:`filelock`, the lock torch itself depends on), so that one
process creates and migrates it while the others wait and then find it ready. Once it
exists, SQLite's own locking serves parallel runs.

A store that still cannot be opened (a read-only folder, a database of a newer MLflow,
an unreachable server) is a :class:`StoreError`: one line naming the store, exit 2.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import unquote, urlparse

from udl_med.errors import UserError
from udl_med.io_utils import check_writable

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 600.0  # a migration of a large store takes seconds; a lock held this long is a stuck process
_prepared: set[str] = set()

__all__ = ["StoreError", "sqlite_path", "store_lock", "prepare_store", "store_errors"]


class StoreError(UserError):
    """The MLflow store cannot be opened; the message names it and says why, in one line."""

    def __init__(self, uri: str, problem: str) -> None:
        self.uri = uri
        self.problem = problem
        super().__init__(f"MLflow store {uri}: {problem}")

    def __reduce__(self):  # rebuilt from its own arguments, so it crosses a process pool intact
        return type(self), (self.uri, self.problem)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:"):
        return None
    path = unquote(urlparse(uri).path)
    if uri.startswith("sqlite:////"):  # four slashes: an absolute path
        path = "/" + path.lstrip("/")
    else:
        path = path[1:] if path.startswith("/") else path  # three slashes: relative to the working directory
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold the store's file lock (``<db>.lock``) for a SQLite store; nothing for other stores."""
    path = sqlite_path(uri)
    if path is None:
        with nullcontext():
            yield
        return
    from filelock import FileLock, Timeout  # lazy: only training and the commands that read runs need it

    lock = FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise StoreError(uri, f"{path}.lock held for {LOCK_TIMEOUT_S:.0f} s by another process; remove it if no udl-med runs") from None
    try:
        yield
    finally:
        lock.release()


def _one_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def prepare_store(uri: str) -> None:
    """Create and migrate the store at ``uri`` once (under :func:`store_lock`); later calls return at once.

    Raises:
        StoreError: the store's folder cannot be written, or MLflow cannot open it.
    """
    if uri in _prepared:
        return
    import mlflow  # lazy: the engine's tracking imports it anyway; keeps this module light

    path = sqlite_path(uri)
    locked = path is not None
    if path is not None:
        try:
            check_writable(path)
        except UserError as err:
            if not path.is_file():
                raise StoreError(uri, str(err)) from None
            locked = False  # an existing store in a read-only folder: read models from it, nobody can be creating it there
    try:
        with store_lock(uri) if locked else nullcontext():
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # opens it: tables and migrations
    except StoreError:
        raise
    except Exception as err:  # sqlalchemy, alembic, MlflowException, requests: all one line
        raise StoreError(uri, _one_line(err)) from None
    _prepared.add(uri)


def _is_store_error(err: BaseException) -> bool:
    from mlflow.exceptions import MlflowException  # lazy: MLflow takes seconds to import; only this path logs

    root = type(err).__module__.split(".", 1)[0]
    return isinstance(err, MlflowException) or root in ("sqlalchemy", "alembic", "sqlite3")


@contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """Turn an error of the MLflow store (MLflow, SQLAlchemy, Alembic, SQLite) raised inside into a :class:`StoreError`."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        if _is_store_error(err):
            raise StoreError(uri, _one_line(err)) from None
        raise
