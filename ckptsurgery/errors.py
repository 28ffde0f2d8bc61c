"""Errors that reach the user as one line and a documented exit code.

Every failure a user can cause (a bad path, a rule that matches nothing, a
corrupt shard) is raised as a :class:`CkptSurgeryError` subclass.  The CLI
prints ``str(error)`` on one line and exits with ``error.exit_code``; only
``--debug`` shows a traceback.  Library callers catch the same classes.

Exit codes (also in README):

====  ==========================================================
0     success
1     differences found (``diff``, ``verify --against``)
2     usage error: bad flag, bad rule, rule that matches nothing,
      a result with NaN/Inf without ``--allow-nonfinite``
3     bad input: not a checkpoint, corrupt or truncated file
4     I/O error: cannot write destination, disk full, lost a race;
      the destination is as it was (publish.py undoes even a publish
      whose state-file write failed); a message saying otherwise
      names what is left and how to recover
5     internal error: an unexpected exception (a bug); one line,
      ``--debug`` shows the traceback
130   interrupted (Ctrl-C); nothing was published
====  ==========================================================
"""

from __future__ import annotations

import sys
from typing import TextIO

from .text.display import display_text

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_IO = 4
EXIT_INTERNAL = 5
EXIT_INTERRUPTED = 130

# The one short table (``--help`` epilogs); the long one is this module's doc and the README.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "ok",
    EXIT_DIFFERENT: "differences found",
    EXIT_USAGE: "usage error",
    EXIT_BAD_INPUT: "bad input",
    EXIT_IO: "I/O error",
    EXIT_INTERNAL: "internal error (a bug: rerun with --debug and report it)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_codes_epilog() -> str:
    """``exit codes: 0 ok, 1 differences found, ...`` on two lines, for ``--help``."""
    items = [f"{code} {meaning}" for code, meaning in EXIT_CODES.items()]
    return "exit codes: " + ", ".join(items[:5]) + ",\n" + ", ".join(items[5:])


def first_line(message: object, fallback: str) -> str:
    """The first non-blank line of a multi-line message (TensorFlow's are), stripped; ``fallback`` if none."""
    return next((line.strip() for line in str(message).splitlines() if line.strip()), fallback)


def error_line(message: object) -> str:
    """The one-line form of every error the CLI prints; control characters escaped (names are input)."""
    return f"ckptsurgery: error: {display_text(message)}"


def print_error(message: object, *, after_output: bool = False, file: TextIO | None = None) -> None:
    """Print :func:`error_line` to stderr; ``after_output`` flushes stdout first, so a report and its error keep their order."""
    if after_output:
        sys.stdout.flush()
    print(error_line(message), file=file or sys.stderr)


class CkptSurgeryError(Exception):
    """Base class: a user-facing error with a one-line message."""

    exit_code = EXIT_USAGE


class UsageError(CkptSurgeryError):
    """The request itself is wrong: a flag, a rule, a recipe key, a size."""

    exit_code = EXIT_USAGE


class RuleError(UsageError):
    """A rule is invalid or matches nothing; names the rule at fault."""


class PlanError(UsageError):
    """The rules are valid one by one but produce an impossible output."""


class BadCheckpointError(CkptSurgeryError):
    """An input is not a readable checkpoint; names the file (and tensor)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: str, message: str, tensor: str | None = None):
        self.path = str(path)
        self.tensor = tensor
        self.detail = message
        where = f"{self.path}"
        if tensor is not None:
            where += f" [tensor {tensor!r}]"
        super().__init__(f"{where}: {message}")


class OutputError(CkptSurgeryError):
    """The destination cannot be written: exists, is an input, disk full."""

    exit_code = EXIT_IO


class NonFiniteError(CkptSurgeryError):
    """A transform or merge produced NaN or Inf in a tensor.

    A usage error, not bad input: the inputs read correctly; what the user
    asked for yields values TF would load but training would not survive, and
    ``--allow-nonfinite`` is the way to ask for them anyway."""

    exit_code = EXIT_USAGE
