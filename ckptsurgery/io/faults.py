"""Named fault-injection points, for the crash-safety test suite.

Production code calls :func:`at` at the moments that matter for crash
safety (a group saved, before the merge, halfway through the publish).
Normally it does nothing.  With ``CKPTSURGERY_FAULT=POINT`` (or
``POINT:N`` for the N-th time that point is reached, counting from 1) the
process kills itself with SIGKILL there, or, for ``enospc@POINT``, raises
the ``OSError(ENOSPC)`` a full disk would, or, for ``pause@POINT``, sleeps
``CKPTSURGERY_FAULT_PAUSE`` seconds (default 3; to make two runs overlap),
or, for ``wait@POINT``, creates ``$CKPTSURGERY_FAULT_GATE.reached`` and waits
until the file ``$CKPTSURGERY_FAULT_GATE`` exists (at most 120 s): a test
then runs something else at exactly that instant, with no timing guesswork.
For filesystems that live in the process (``ram://``), where a kill would
take the evidence with it: ``fail@POINT`` raises ``OSError(EIO)`` (a store
error the run handles), ``crash@POINT`` raises :class:`SimulatedCrash`, which
no recovery code catches, so the store is left as a killed run leaves it.
Tests use it to prove that no instant of a run can leave a half-written
checkpoint at the destination.

Points: ``destination-checked`` (the destination was judged, before the
lock is taken), ``group-saved``, ``before-merge``, ``after-merge``,
``publish-old-moved``, ``publish-data-moved``, ``state-file-written`` (the
temp state file is written, not yet renamed), ``after-publish``; on a remote
store (:mod:`ckptsurgery.io.publish.remote`): ``remote-write`` (each write to
a remote file), ``remote-copy`` (each remote rename or copy),
``remote-data-uploaded``, ``remote-index-uploaded``, ``remote-state-switched``
and ``remote-moved-into-place`` (``--force``).
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time

_counts: dict[str, int] = {}
_lock = threading.Lock()


def at(point: str) -> None:
    spec = os.environ.get("CKPTSURGERY_FAULT")
    if not spec:
        return
    action = "kill"
    for prefix in ("enospc@", "pause@", "wait@", "fail@", "crash@"):
        if spec.startswith(prefix):
            action, spec = prefix[:-1], spec[len(prefix):]
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
    if action == "fail":
        raise OSError(errno.EIO, f"injected failure at {point}")
    if action == "crash":
        raise SimulatedCrash(point)
    if action == "wait":
        _wait_at_gate(os.environ.get("CKPTSURGERY_FAULT_GATE", ""))
        return
    if action == "pause":
        time.sleep(float(os.environ.get("CKPTSURGERY_FAULT_PAUSE", "3")))
        return
    os.kill(os.getpid(), signal.SIGKILL)


class SimulatedCrash(BaseException):
    """The process "dies" here (``crash@POINT``): a BaseException, so no ``except Exception`` cleans up."""


def _wait_at_gate(gate: str) -> None:
    if not gate:
        return
    with open(gate + ".reached", "w"):
        pass
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)


def reset() -> None:
    """Forget how often each point was reached (for in-process tests)."""
    with _lock:
        _counts.clear()
