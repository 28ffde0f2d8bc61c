"""The folder's ``checkpoint`` state file, updated as TensorFlow would, under its own lock."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

from .liveness import older_than, pid_alive
from .. import faults
from ..protos import checkpoint_state_class


STATE_FILE = "checkpoint"


STATE_TMP_PREFIX = STATE_FILE + ".ckptsurgery-tmp-"  # + PID-HEX: a state file being written


STATE_LOCK = STATE_FILE + ".ckptsurgery-state-lock"  # held while the state file is read and rewritten


def update_state_file(prefix: str, *, now: float | None = None) -> None:
    """Record ``prefix`` as the newest checkpoint in its folder's ``checkpoint`` file.

    Does what TensorFlow's ``update_checkpoint_state`` does when a checkpoint
    is saved into the folder: every entry already listed stays, verbatim,
    with its ``all_model_checkpoint_timestamps`` time, and the file keeps its
    ``last_preserved_timestamp``; ``prefix`` (removed first if it was listed,
    a ``--force`` run) is appended with the current time and becomes
    ``model_checkpoint_path``.  The times matter: a ``CheckpointManager``
    reopened on the folder deletes only entries newer than
    ``last_preserved_timestamp``, so a file without them would make it keep
    every old checkpoint forever.  A checkpoint written into a manager's
    folder thus joins its rotation, like one the manager saved itself.
    """
    folder = os.path.dirname(os.path.abspath(prefix))
    with state_file_lock(folder):  # read-modify-write: two runs publishing into one folder must not lose an entry
        update_state_file_locked(folder, prefix, now)


def update_state_file_locked(folder: str, prefix: str, now: float | None) -> None:
    from google.protobuf import text_format

    CheckpointState = checkpoint_state_class()
    base = os.path.basename(prefix)
    state = CheckpointState()
    try:
        with open(os.path.join(folder, STATE_FILE)) as f:
            text_format.Merge(f.read(), state)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError, text_format.ParseError):
        state = CheckpointState()  # unreadable: TF would ignore it too; start afresh
    paths = list(state.all_model_checkpoint_paths)
    stamps = list(state.all_model_checkpoint_timestamps)
    if len(stamps) != len(paths):
        # What CheckpointManager assumes for an entry without a time: preserved (never deleted).
        stamps = (stamps + [state.last_preserved_timestamp] * len(paths))[:len(paths)]
    this = os.path.abspath(prefix)
    kept = [(p, t) for p, t in zip(paths, stamps) if os.path.abspath(os.path.join(folder, p)) != this]
    new = CheckpointState(
        model_checkpoint_path=base,
        all_model_checkpoint_paths=[p for p, _ in kept] + [base],
        all_model_checkpoint_timestamps=[t for _, t in kept] + [time.time() if now is None else now],
        last_preserved_timestamp=state.last_preserved_timestamp,
    )
    _write_state_file(folder, text_format.MessageToString(new))


@contextlib.contextmanager
def state_file_lock(folder: str | os.PathLike):
    """Hold the folder's state-file lock (waits for another holder; a dead one's lock is free).

    An ``flock`` on ``checkpoint.ckptsurgery-state-lock``: the kernel drops it
    when its process dies, so nothing stale is left to take over.  The file
    is removed on release; a waiter that then holds the lock on the removed
    file notices (its inode is no longer at the path) and tries again.
    """
    try:
        import fcntl
    except ImportError:  # no flock (not POSIX): run unlocked, as before
        yield
        return
    path = os.path.join(folder, STATE_LOCK)
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed that file as we waited: lock the new one
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)


def remove_free_state_lock(folder: Path) -> bool:
    """Remove a state-file lock file nobody holds (its run was killed holding it)."""
    path = folder / STATE_LOCK
    try:
        import fcntl

        fd = os.open(path, os.O_RDWR)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            return False
        os.unlink(path)
        return True
    except OSError:  # held by a live run, or gone meanwhile
        return False
    finally:
        os.close(fd)


def _write_state_file(folder: str, text: str) -> None:
    """Write the ``checkpoint`` text proto atomically (temp file, then rename).

    The temp file carries our pid, so ``clean`` removes it once that process
    is dead; a failed write removes it at once.
    """
    target = os.path.join(folder, STATE_FILE)
    tmp = os.path.join(folder, f"{STATE_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            faults.at("state-file-written")
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def stale_state_tmp(path: Path) -> bool:
    """Is ``path`` a temp state file whose writer is gone?"""
    pid_text = path.name[len(STATE_TMP_PREFIX):].split("-", 1)[0]
    if pid_text.isdigit():
        return int(pid_text) != os.getpid() and not pid_alive(int(pid_text))
    return older_than(path, 60)  # no pid in the name (an older version): a live writer takes milliseconds
