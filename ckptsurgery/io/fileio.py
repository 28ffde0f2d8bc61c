"""Kernel page-cache hints for the files we read and write.

Reading the next batch ahead and starting writeback of a saved group early
let disk I/O overlap with TensorFlow's work.  Both are hints: nothing is
read into this process, and a failure changes nothing but speed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable


def advise(path: str | os.PathLike, advice: int, ranges: Iterable[tuple[int, int]] = ((0, 0),)) -> None:
    """``posix_fadvise`` each ``(offset, length)`` range of ``path`` (length 0: to the end); errors ignored."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        for offset, length in ranges:
            os.posix_fadvise(fd, offset, length, advice)
    except OSError:
        pass
    finally:
        os.close(fd)


WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", 3)
DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", 4)


def is_disk_full(exc: BaseException) -> bool:
    text = str(exc)
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text
