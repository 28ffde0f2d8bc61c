"""Errors that reach the user as one line and a documented exit code.

Every failure a user can cause (a bad path, a rule that matches nothing, a
corrupt shard) is raised as a :class:`CkptSurgeryError` subclass.  The CLI
prints ``str(error)`` on one line and exits with ``error.exit_code``; only
``--debug`` shows a traceback.  Library callers catch the same classes.

Exit codes (also in README):

====  ==========================================================
0     success
1     differences found (``diff``, ``verify --against``)
2     usage error: bad flag, bad rule, rule that matches nothing
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

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_IO = 4
EXIT_INTERNAL = 5
EXIT_INTERRUPTED = 130


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
    """A transform or merge produced NaN or Inf in a tensor."""

    exit_code = EXIT_BAD_INPUT
