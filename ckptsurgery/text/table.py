"""The one plain-text table: columns padded to their widest cell, two spaces apart."""

from __future__ import annotations

from typing import Collection, Sequence


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> list[str]:
    """The header line, then one line per row; columns in ``right`` are right-aligned.

    The header is left-aligned throughout; a left-aligned last column is not
    padded, and no line ends in spaces.
    """
    widths = [max(map(len, column), default=0) for column in zip(*rows, header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    last = len(header) - 1
    # One format string for every row (200k rows in a big checkpoint's inspect).
    line = "  ".join("{:>%d}" % w if i in right else ("{}" if i == last else "{:<%d}" % w)
                     for i, w in enumerate(widths)).format
    lines += [line(*row).rstrip() for row in rows]
    return lines
