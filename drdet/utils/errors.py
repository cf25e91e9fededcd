"""Errors about the user's input, and the `main` wrapper of the command-line tools.

An error drdet raises about what the user gave it (a config key or value, a missing file, a
class count that does not fit, an unknown dataset, a damaged checkpoint) is a
:class:`UserInputError`. The tools run their ``main`` through :func:`run_main`, which prints such
an error's message alone on stderr and exits with status 2 (as argparse does for a bad flag);
``--debug`` or ``DRDET_DEBUG=1`` shows its traceback. Any other exception is a bug and keeps its
traceback (exit status 1).

The subclasses also derive from the builtin type the code raised before (ValueError, KeyError,
FileNotFoundError, RuntimeError), so ``except ValueError`` in callers keeps working.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_USER_ERROR = 2
DEBUG_FLAG = "--debug"
DEBUG_ENV = "DRDET_DEBUG"


class UserInputError(Exception):
    """Base of the errors about the user's input: the message names the key, file or id."""


class UserValueError(UserInputError, ValueError):
    """A value of the user's (config value, class count, file content) that does not fit."""


class UserKeyError(UserInputError, KeyError):
    """A name of the user's (config key, dataset name) that drdet does not know."""


class UserFileNotFoundError(UserInputError, FileNotFoundError):
    """A path of the user's that does not exist."""


class UserFileExistsError(UserInputError, FileExistsError):
    """A path of the user's that exists where drdet would create it."""


class CheckpointError(UserInputError, RuntimeError):
    """A checkpoint file that cannot be loaded: not a checkpoint, damaged, or a legacy pickle
    given without allow_pickle."""


def as_user_error(err: Exception) -> UserInputError:
    """`err` (FileNotFoundError, KeyError, ValueError or other) as the matching UserInputError
    subclass, with the same arguments (hence the same message). Raise it ``from err``."""
    if isinstance(err, UserInputError):
        return err
    if isinstance(err, OSError) and err.filename is not None:  # keep the path in the message
        err = type(err)(str(err))
    for builtin, user in (
        (FileNotFoundError, UserFileNotFoundError),
        (KeyError, UserKeyError),
        (ValueError, UserValueError),
        (RuntimeError, CheckpointError),
    ):
        if isinstance(err, builtin):
            return user(*err.args)
    return UserInputError(*err.args)


def error_message(err: BaseException) -> str:
    """The message of `err` as written (a KeyError's str() would add quotes)."""
    if len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]
    return str(err)


def debug_requested(argv: Sequence[str]) -> bool:
    """True when `argv` holds --debug or DRDET_DEBUG is set (to anything but "" or "0")."""
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_main(
    main: Callable[[list], Any], argv: Sequence[str] | None = None, prog: str | None = None
) -> int:
    """Call ``main(argv)`` (default: sys.argv[1:], without --debug) and return the exit status:
    0 when it returns, 2 after printing "<prog>: error: <message>" on stderr for a
    UserInputError. With --debug or DRDET_DEBUG=1 the UserInputError propagates (traceback).
    Other exceptions and SystemExit propagate unchanged. Use as
    ``sys.exit(run_main(main))`` under ``if __name__ == "__main__"``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        main(argv)
    except UserInputError as err:
        if debug:
            raise
        name = prog or os.path.basename(sys.argv[0] or "drdet")
        print(f"{name}: error: {error_message(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
