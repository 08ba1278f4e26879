"""Exit codes of the command line and the one-line error messages behind them (docs/ENGINE_API.md)."""
from __future__ import annotations

from typing import Tuple

from ..errors import InputError, RegistrationCancelled

EXIT_OK = 0
EXIT_FAILURE = 1        # a bug or an environment problem (disk full, GPU driver crash)
EXIT_BAD_INPUT = 2      # the user can fix it: the message says how
EXIT_CANCELLED = 130    # SIGINT/SIGTERM

#: File errors that mean the user named a wrong path or a folder they cannot write.
USER_FILE_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


class UsageError(InputError):
    """A malformed command line (argparse's errors are raised as this instead of exiting)."""

    def __init__(self, message: str, prog: str = "learngn") -> None:
        super().__init__(f"{message} (see '{prog} --help')")


class CommandFailed(Exception):
    """A command that ran but did not fully succeed (a batch with failed pairs); not a bug."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def classify(error: BaseException) -> Tuple[int, str]:
    """Exit code and one-line message for an exception that ended a command."""
    if isinstance(error, (RegistrationCancelled, KeyboardInterrupt)):
        return EXIT_CANCELLED, "cancelled; the unfinished result was not written"
    if isinstance(error, CommandFailed):
        return error.exit_code, one_line(str(error))
    if isinstance(error, InputError):
        return EXIT_BAD_INPUT, one_line(str(error))
    if isinstance(error, USER_FILE_ERRORS):
        return EXIT_BAD_INPUT, one_line(_file_error(error))
    if isinstance(error, OSError):
        return EXIT_FAILURE, one_line(_file_error(error))
    return EXIT_FAILURE, one_line(f"unexpected {type(error).__name__}: {error}. This is probably a bug; run "
                                  "again with 'learngn --debug ...' for the traceback and report it")


def _file_error(error: OSError) -> str:
    if error.filename is not None and error.strerror:
        return f"{error.strerror}: {error.filename!s}"
    return str(error)


def one_line(text: str) -> str:
    return " ".join(text.split())
