"""The one plain-text table: columns padded to their widest cell, two spaces apart."""

from __future__ import annotations

from typing import Collection, Sequence


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> list[str]:
    """The header line, then one line per row; columns in ``right`` are right-aligned.

    The header is left-aligned throughout; a left-aligned last column is not
    padded, and no line ends in spaces.
    """
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    last = len(header) - 1
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in right else (cell if i == last else cell.ljust(widths[i]))
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return lines
