"""User-facing errors.

Anything the user can fix (a bad file, a bad config key, a bad argument) raises a
subclass of :class:`UserError`. The CLI prints its message as one line and exits
with code 2; every other exception exits with code 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class UserError(Exception):
    """An error caused by the user's input; the message is one line."""


class _PathError(UserError):
    """A user error about one path: the message is ``<path>: <problem>``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # rebuilt from its own arguments, so it crosses a process pool intact
        return type(self), (self.path, self.problem)


class InputError(_PathError):
    """A file or folder that cannot be used; the message names the path and the problem."""


class OutputError(_PathError):
    """An output that cannot be written; the message names the path and why (found before any work)."""


class ConfigError(UserError):
    """A bad configuration; the message names the file and the dotted key."""

    def __init__(self, source: str | Path, key: str, problem: str) -> None:
        self.source = str(source)
        self.key = key
        self.problem = problem
        super().__init__(f"{self.source}: {key}: {problem}")

    def __reduce__(self):
        return type(self), (self.source, self.key, self.problem)


def did_you_mean(name: str, known: Iterable[str], prefix: str = "") -> str:
    """``"; did you mean a or b?"`` with the known names closest to ``name`` (``prefix`` before each), or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=3)
    return f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else ""


class RunError(Exception):
    """A run stopped for a reason that is not bad input (NaN loss, interrupted); exit code 1.

    The message is one line that says what happened and what was kept.
    """


class Interrupted(RunError):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM after saving what it can; the command exits with 130."""
