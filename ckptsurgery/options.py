"""The write options, in one typed table shared by the API, the CLI and recipes.

Every command that writes a checkpoint takes the same options.  They have
one name everywhere (``fsync`` is ``fsync=`` in the API, ``--fsync`` /
``--no-fsync`` on the command line and ``fsync:`` in a recipe), and one type,
checked here, so a recipe's ``force: "false"`` or an API caller's
``memory_budget=True`` is an error naming the option instead of a silent
``bool("false") == True`` or a one-byte budget.

:func:`check_write_options` is what every entry point calls before anything
is read or written, dry runs included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import UsageError


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so an error stays one line."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    # bool is a subclass of int in Python: ``memory_budget: true`` must not become 1 byte.
    return isinstance(value, int) and not isinstance(value, bool)


def _size(value: Any) -> bool:
    if _is_int(value):
        return value > 0
    if isinstance(value, str):
        from .text.sizes import parse_size

        try:
            parse_size(value)
        except UsageError:
            return False
        return True
    return False


def _cluster_spec(value: Any) -> bool:
    # ``local`` or ``local:N``; a running cluster is named by ``scheduler`` instead.
    import re

    if value is None:
        return True
    match = re.fullmatch(r"local(?::([1-9][0-9]*))?", value) if isinstance(value, str) else None
    # bounded: local:100000 would start that many processes on this machine
    return match is not None and int(match.group(1) or 1) <= MAX_LOCAL_WORKERS


#: Each worker holds a budget-sized group in flight, so the count bounds memory too.
MAX_WORKERS = 64
#: worker processes a ``--cluster local:N`` may start on this one machine
MAX_LOCAL_WORKERS = 256


@dataclass(frozen=True)
class WriteOption:
    """One write option: its name, the type it accepts (as a check and a phrase), its default."""

    name: str
    expected: str  # e.g. "true or false", for the error message
    accepts: Callable[[Any], bool]
    default: Any
    help: str


DEFAULT_MEMORY_BUDGET = "128MB"  # the one default budget: flags, API signatures and the writer use it

WRITE_OPTIONS: dict[str, WriteOption] = {o.name: o for o in (
    WriteOption("memory_budget", "a positive size such as 512MB, 2GiB or a byte count", _size, DEFAULT_MEMORY_BUDGET,
                "bytes of tensors held per shard group"),
    WriteOption("workers", f"an integer from 1 to {MAX_WORKERS}", lambda v: _is_int(v) and 1 <= v <= MAX_WORKERS, 1,
                "shard groups saved in parallel (each holds up to a memory budget)"),
    WriteOption("force", "true or false", lambda v: isinstance(v, bool), False,
                "replace an existing checkpoint at the destination"),
    WriteOption("verify", "true or false", lambda v: isinstance(v, bool), False,
                "re-read every written value and compare before publishing"),
    WriteOption("fsync", "true or false", lambda v: isinstance(v, bool), True,
                "fsync before publishing"),
    WriteOption("progress", "true, false or null (a bar when stderr is a terminal)",
                lambda v: v is None or isinstance(v, bool), None, "show a progress bar"),
    WriteOption("crc_check", "true or false", lambda v: isinstance(v, bool), True,
                "check the CRC32C of every byte copied unchanged"),
    WriteOption("byte_path", "true, false or null (on unless CKPTSURGERY_BYTE_PATH=0)",
                lambda v: v is None or isinstance(v, bool), None,
                "copy unchanged tensors as bytes; false decodes every tensor through TensorFlow"),
    WriteOption("cluster", f"null, local or local:N (N worker processes, 1 to {MAX_LOCAL_WORKERS})", _cluster_spec,
                None,
                "run the shard groups as tasks on an embedded Dask cluster (needs ckptsurgery[dask])"),
    WriteOption("scheduler", "null or a Dask scheduler address (empty: $DASK_SCHEDULER_ADDRESS)",
                lambda v: v is None or isinstance(v, str), None,
                "run the shard groups as tasks on a running Dask cluster (needs ckptsurgery[dask])"),
)}


def check_write_option(name: str, value: Any, where: str = "") -> Any:
    """Return ``value`` if it has ``name``'s type, else raise :class:`UsageError` naming both."""
    option = WRITE_OPTIONS.get(name)
    prefix = f"{where}: " if where else ""
    if option is None:
        raise UsageError(f"{prefix}unknown option {name!r}; options: {', '.join(WRITE_OPTIONS)}")
    if not option.accepts(value):
        raise UsageError(f"{prefix}option {name!r}: expected {option.expected}, got {short_repr(value)}")
    return value


def check_write_options(options: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Check every name and value of ``options`` (see :data:`WRITE_OPTIONS`); returns a plain dict.

    Raises :class:`UsageError` for the first unknown name or wrong type, naming
    the option, the value and the expected type.
    """
    for name, value in options.items():
        if not isinstance(name, str):
            raise UsageError(f"{where + ': ' if where else ''}unknown option {short_repr(name)}; "
                             f"options: {', '.join(WRITE_OPTIONS)}")
        check_write_option(name, value, where)
    return dict(options)
