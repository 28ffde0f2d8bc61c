"""A small typed schema for recipe sections: every key has a kind, checked before it is used.

A recipe is YAML written by people, so ``force: "false"``, ``seed: abc`` or
``pattern: 123`` are mistakes to name, not values to coerce with ``bool()``,
``int()`` or ``str()`` (``bool("false")`` is True).  A section is described
by one table ``key -> Kind``; :func:`check_fields` checks the keys (unknown,
missing) and each value's kind, and the error names the key, its value and
the expected kind (exit 2).

Example::

    check_fields("recipe.yaml: edit", section, {"source": PATH, "rules": LIST}, required=("source", "rules"))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..errors import UsageError
from ..options import short_repr


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # bool is an int in Python


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Kind:
    """What a value must be: a check, and the phrase an error uses for it."""

    expected: str
    accepts: Callable[[Any], bool]
    nullable: bool = False  # ``key: ~`` means the same as leaving the key out

    def or_null(self) -> Kind:
        return Kind(self.expected + " (or null)", self.accepts, nullable=True)


def _shape(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, list) and bool(value) and all(
        (_is_int(d) and d >= 0) or d == "*" for d in value)


def _string_pairs(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


STRING = Kind("a string", lambda v: isinstance(v, str))
PATTERN = Kind("a regular expression (a string; quote it, e.g. '123')", lambda v: isinstance(v, str))
PATTERNS = Kind("a regular expression or a list of them (strings)",
                lambda v: isinstance(v, str) or (isinstance(v, list) and bool(v) and all(isinstance(p, str) for p in v)))
PATH = Kind("a path (a non-empty string)", lambda v: isinstance(v, str) and bool(v.strip()) and "\0" not in v)
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
NON_NEGATIVE_INT = Kind("an integer in [0, 2**63)", lambda v: _is_int(v) and 0 <= v < 2**63)
POSITIVE = Kind("a positive integer", lambda v: _is_int(v) and 0 < v < 2**31)
NUMBER = Kind("a finite number", _is_number)
NUMBERS = Kind("a list of finite numbers", lambda v: isinstance(v, list) and all(_is_number(x) for x in v))
LIST = Kind("a list", lambda v: isinstance(v, list))
MAPPING = Kind("a mapping", lambda v: isinstance(v, dict))
SHAPE = Kind("a shape: a string such as '30600,*' or a list of sizes and '*'", _shape)
NAME_MAP = Kind("a file path, or a mapping of old name -> new name (strings)",
                lambda v: (isinstance(v, str) and bool(v)) or _string_pairs(v))
RENAMES = Kind("a list of {pattern, replacement} or [pattern, replacement], or a mapping pattern -> replacement",
               lambda v: isinstance(v, list) or _string_pairs(v))


def check_value(where: str, value: Any, kind: Kind) -> Any:
    """Return ``value`` if it is of ``kind``, else raise :class:`UsageError` naming it."""
    if value is None and kind.nullable:
        return None
    if not kind.accepts(value):
        raise UsageError(f"{where}: expected {kind.expected}, got {short_repr(value)}")
    return value


def check_mapping(where: str, data: Any) -> dict:
    """``data`` must be a mapping with string keys."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping, got {type(data).__name__} {short_repr(data)}")
    for key in data:
        if not isinstance(key, str):
            raise UsageError(f"{where}: key {short_repr(key)} is not a string")
    return data


def check_fields(where: str, data: Any, table: Mapping[str, Kind], required: Sequence[str] = ()) -> dict:
    """Check a section against ``table``: keys known, required ones present, values of their kind.

    Returns the section as a dict without its null optional values (``key: ~``
    for a nullable key means the key is left out).
    """
    check_mapping(where, data)
    unknown = sorted(set(data) - set(table))
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(table))}")
    for key in required:
        if key not in data:
            raise UsageError(f"{where}: missing key {key!r}")
    out = {}
    for key, value in data.items():
        if check_value(f"{where}.{key}", value, table[key]) is not None:
            out[key] = value
    return out
