"""Who is alive: a pid (and its start time, against pid reuse) names the run that owns a lock or a staging folder."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _proc_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot) from /proc, to tell a
    reused pid from the original owner; None where /proc is unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def _proc_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Is ``pid`` a live process (and, when ``start`` is known, the same one)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    if _proc_zombie(pid):  # killed, not yet reaped: it will never write again
        return False
    if start is not None:
        now = _proc_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused by another process
    return True


def owner_record() -> dict:
    return {"pid": os.getpid(), "start": _proc_start(os.getpid())}


def older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False
