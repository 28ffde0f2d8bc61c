"""Human byte sizes: parse ``512MB`` for flags, format totals for tables."""

from __future__ import annotations

import re

from ..errors import UsageError

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse ``"512MB"``, ``"1.5GiB"`` or ``1048576`` into a byte count.

    >>> parse_size("512MB")
    512000000
    >>> parse_size("2GiB")
    2147483648
    """
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise UsageError(f"invalid size {text!r}: use a number with an optional unit, e.g. 512MB or 2GiB")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise UsageError(f"invalid size {text!r}: must be positive")
    return value


def format_size(nbytes: int) -> str:
    """Format a byte count for people: ``1.5 MB`` (decimal units, like ``du -h --si``)."""
    value = float(nbytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
