"""The ``learngn`` command line: ``main(argv)`` and the registry of subcommands.

Adding a subcommand
-------------------
Write a module ``learngn/cli/<name>.py`` with two functions and list ``<name>`` in ``SUBCOMMANDS``:

``add_parser(subparsers) -> argparse.ArgumentParser``
    Calls ``subparsers.add_parser("<name>", help=..., description=...)`` and adds its options (reuse
    ``cli.options.add_settings_options`` / ``add_output_options`` instead of redefining shared ones).
``run(args: argparse.Namespace) -> int``
    Does the work and returns the exit code (``cli.errors``: 0 ok, 1 failure, 2 bad input, 130 cancelled).

Names in ``SUBCOMMANDS`` whose module does not exist are skipped, so a module can be listed before it
is written.  ``run`` does not print its own errors: it raises ``learngn.InputError`` for input the user
can fix (exit 2), ``learngn.RegistrationCancelled`` when cancelled (exit 130) and anything else for bugs
(exit 1); ``main`` turns the exception into one ``learngn: error: ...`` line on stderr and, when the
command was given ``--progress jsonl``, the contract's ``{"event": "error", ...}`` line on stdout.
``args.command_line`` holds the command as typed, for summaries.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator, List, NoReturn, Optional, Sequence

from .. import __version__
from .errors import EXIT_BAD_INPUT, EXIT_CANCELLED, UsageError, classify
from .progress import emit_json

#: Subcommand modules, in the order ``learngn --help`` lists them.
SUBCOMMANDS = ("register", "batch", "demo", "presets", "train", "evaluate")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions, so ``main`` reports them like any other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)


def _load(name: str) -> Optional[ModuleType]:
    """The subcommand module, or None when it does not exist (yet)."""
    qualified = f"{__name__}.{name}"
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as error:
        if error.name == qualified:
            return None
        raise


def build_parser() -> Parser:
    parser = Parser(prog="learngn", description="LearnGN: learned Gauss-Newton registration of 3D medical images.",
                    epilog="Run 'learngn COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"learngn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of unexpected errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in SUBCOMMANDS:
        module = _load(name)
        if module is None:
            continue
        before = set(subparsers.choices)
        module.add_parser(subparsers)
        for added in set(subparsers.choices) - before:
            subparsers.choices[added].set_defaults(_run=module.run)
    return parser


def _wants_jsonl(args: Optional[argparse.Namespace], argv: Sequence[str]) -> bool:
    """Whether errors must also be a JSON event (read from the raw argv when parsing itself failed)."""
    if args is not None and hasattr(args, "progress"):
        return args.progress == "jsonl"
    text = list(argv)
    return "--progress=jsonl" in text or any(a == "--progress" and b == "jsonl" for a, b in zip(text, text[1:]))


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Warnings (engine fallbacks, a DICOM folder with several series) as ``learngn: warning:`` lines."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        stream = file or sys.stderr
        stream.write(f"learngn: warning: {' '.join(str(message).split())}\n")
        stream.flush()

    with warnings.catch_warnings():  # the filters stay Python's: library deprecations are not for users
        warnings.showwarning = show
        yield


def _tolerate_narrow_terminals() -> None:
    """A terminal or pipe that is not UTF-8 (an ASCII locale) gets escapes instead of a crash on a '±'."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (the console script and ``python -m learngn`` exit with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _tolerate_narrow_terminals()
    args: Optional[argparse.Namespace] = None
    debug = bool(os.environ.get("LEARNGN_DEBUG"))
    try:
        with _warnings_as_lines():
            parser = build_parser()
            args = parser.parse_args(argv)
            if getattr(args, "_run", None) is None:
                parser.print_help(sys.stderr)
                raise UsageError("choose a command", parser.prog)
            args.command_line = ["learngn", *argv]
            return int(args._run(args) or 0)
    except (Exception, KeyboardInterrupt) as error:
        code, message = classify(error)
        debug = debug or bool(getattr(args, "debug", False))
        if debug and code not in (EXIT_BAD_INPUT, EXIT_CANCELLED):
            traceback.print_exc()
        if _wants_jsonl(args, argv):
            emit_json({"event": "error", "message": message, "exit_code": code})
        sys.stderr.write(f"learngn: error: {message}\n")
        sys.stderr.flush()
        return code


def run_and_exit() -> None:
    """The console script and ``python -m learngn``: :func:`main`, then exit without the interpreter's
    teardown.  Every output file is closed by then; what the teardown would still do (freeing torch's thread
    pools and collecting its modules) took about a second of a two-second-shorter demo on the 2-core CPU."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (``| head``) or a closed stream
            pass
    os._exit(code)


__all__: List[str] = ["main", "run_and_exit", "build_parser", "SUBCOMMANDS", "Parser"]
