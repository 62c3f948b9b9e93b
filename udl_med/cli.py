"""The ``udl-med`` command.

The subcommands come from the one table of actions (:mod:`udl_med.actions`): each parses
its arguments, calls its action's library function and prints the result. Heavy modules
(torch, monai, mlflow) are imported only when an action runs, so ``udl-med --help`` is
instant. A :class:`udl_med.errors.UserError` becomes one line
on stderr and exit code 2, and so does an error of the file system a user fixes (a
read-only folder, a full disk, a path under a file: :data:`udl_med.io_utils.WRITE_ERRNOS`)
should one get past the checks made before the work; Ctrl-C (SIGINT) and SIGTERM exit
with 130 (128 + SIGINT, as shells do), a run interrupted in ``train`` after writing its
checkpoint too; any other exception exits with code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from udl_med.actions import Action, Arg, commands
from udl_med.errors import Interrupted, RunError, UserError
from udl_med.io_utils import WRITE_ERRNOS, target_of, terminate_as_interrupt

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    """Print a result: human-readable lines, or exactly one JSON object on the last line."""
    if as_json:
        print(json.dumps(result, default=str, sort_keys=True))
        return
    for key, value in result.items():
        if isinstance(value, dict) and value and all(isinstance(v, str | int | float) for v in value.values()):
            print(f"{key}:")  # a table, e.g. `udl-med configs`
            width = max(len(str(k)) for k in value)
            for name, text in value.items():
                print(f"  {str(name):<{width}}  {text}")
            continue
        print(f"{key}: {value}")


# --- parser: one subcommand per command of udl_med.actions.ACTIONS ---------------------


def _shown(value: Any) -> str:
    return " ".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)


def _help(arg: Arg) -> str:
    """The argument's help with its default (flags, required arguments and None defaults show none)."""
    text = arg.help.replace("%", "%%")
    if arg.required or arg.kind == "flag" or arg.default is None or arg.default in ((), ""):
        return text
    return f"{text} (default: {_shown(arg.default).replace('%', '%%')})"


def _add_argument(parser: Any, arg: Arg) -> None:
    options: dict[str, Any] = {"help": _help(arg)}
    if arg.positional:
        names = [arg.name]
        if arg.flag:
            options["metavar"] = arg.flag
    else:
        names = [arg.flag or "--" + arg.name.replace("_", "-")]
        options["dest"] = arg.name
        if arg.required and not arg.group:
            options["required"] = True
    if arg.kind == "flag":
        options["action"] = "store_true"
    else:
        options["type"] = arg.type
        if not arg.required:
            options["default"] = list(arg.default) if isinstance(arg.default, tuple) else arg.default
        if arg.kind == "append":
            options["action"] = "append"
        for key in ("nargs", "choices", "metavar"):
            if getattr(arg, key) is not None:
                options[key] = getattr(arg, key)
    parser.add_argument(*names, **options)


def _run(action: Action, args: argparse.Namespace) -> dict[str, Any]:
    """Call the action with the command line's values of its arguments."""
    kwargs = {}
    for arg in action.args:
        if arg.cli:
            value = getattr(args, arg.name)
            kwargs[arg.name] = arg.parse(value) if arg.parse and value is not None else value
    return action(**kwargs)


def add_command(sub: Any, name: str, action: Action) -> argparse.ArgumentParser:
    """The subcommand ``name`` of ``action``: its arguments, ``--json``, and the call."""
    p = sub.add_parser(name, help=action.help, description=action.help)
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    groups: dict[str, Any] = {}
    for arg in action.args:
        if arg.cli and arg.group and arg.group not in groups:
            groups[arg.group] = p.add_mutually_exclusive_group(required=True)
        if arg.cli:
            _add_argument(groups[arg.group] if arg.group else p, arg)
    p.set_defaults(func=partial(_run, action))
    return p


def _version() -> str:
    """The installed distribution's version (the source tree's when not installed)."""
    try:
        return version("udl-med")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="udl-med",
        description="Unsupervised deep learning for CT/MR: RBM/DBN, autoencoders, VAEs, GANs, on MONAI.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"udl-med {_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, action in commands().items():
        add_command(sub, name, action)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,  # each call logs to the current stderr (main() may be called several times in one process)
    )

    terminate_as_interrupt()  # SIGTERM cleans up half-written files as Ctrl-C does
    try:
        result = args.func(args)
    except UserError as err:
        print(f"udl-med {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Interrupted as err:
        print(f"udl-med {args.command}: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunError as err:
        print(f"udl-med {args.command}: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"udl-med {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        if err.errno not in WRITE_ERRNOS or not err.filename:
            raise
        print(f"udl-med {args.command}: error: {target_of(err.filename)}: {err.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _print_result(result or {}, args.json)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
