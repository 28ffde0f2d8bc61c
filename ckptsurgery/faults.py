"""Named fault-injection points, for the crash-safety test suite.

Production code calls :func:`at` at the moments that matter for crash
safety (a group saved, before the merge, halfway through the publish).
Normally it does nothing.  With ``CKPTSURGERY_FAULT=POINT`` (or
``POINT:N`` for the N-th time that point is reached, counting from 1) the
process kills itself with SIGKILL there, or, for ``enospc@POINT``, raises
the ``OSError(ENOSPC)`` a full disk would.  Tests use it to prove that no
instant of a run can leave a half-written checkpoint at the destination.

Points: ``group-saved``, ``before-merge``, ``after-merge``,
``publish-old-moved``, ``publish-data-moved``, ``after-publish``.
"""

from __future__ import annotations

import errno
import os
import signal
import threading

_counts: dict[str, int] = {}
_lock = threading.Lock()


def at(point: str) -> None:
    spec = os.environ.get("CKPTSURGERY_FAULT")
    if not spec:
        return
    action = "kill"
    if spec.startswith("enospc@"):
        action, spec = "enospc", spec[len("enospc@"):]
    name, _, nth = spec.partition(":")
    if name != point:
        return
    with _lock:
        _counts[point] = _counts.get(point, 0) + 1
        count = _counts[point]
    if count != int(nth or 1):
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), signal.SIGKILL)
