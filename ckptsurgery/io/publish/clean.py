"""Recovery after crashed runs: ``ckptsurgery clean``, and the next run writing the same destination."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import remote
from ..fs import dirname, filesystem, is_remote, join, normalize
from ..fs.gfile_names import TMP_INFIX
from .journal import JOURNAL, roll_back, RollBack, ROLLBACK_FAILED
from .liveness import older_than, pid_alive
from .lock import DestinationLock, LOCK_SUFFIX
from .staging import is_our_staging, staging_owner
from .store_staging import store_stagings
from .statefile import remove_free_state_lock, stale_state_tmp, STATE_FILE, state_file_lock, STATE_LOCK, STATE_TMP_PREFIX, update_state_file_locked
from ..protos import checkpoint_state_class
from ...errors import OutputError


@dataclass
class CleanAction:
    """One thing :func:`clean` or :func:`recover_destination` did (or left)."""

    action: str  # "removed-staging", "rolled-back", "rolled-forward", "state-file-updated", "removed-lock",
    #              "removed-temp", "removed-journal",
    #              "skipped-live", "kept-previous"
    path: str
    detail: str = ""

    def to_json(self) -> dict:
        return {"action": self.action, "path": self.path, "detail": self.detail}

    def __str__(self) -> str:
        return f"{self.action}: {self.path}" + (f" ({self.detail})" if self.detail else "")


def _recover_staging(entry: Path) -> list[CleanAction]:
    """Roll back (if needed) and remove one dead run's staging folder."""
    actions: list[CleanAction] = []
    rb = roll_back(entry)
    if rb is ROLLBACK_FAILED:
        return [CleanAction("kept-previous", str(entry),
                            "could not move the previous checkpoint back; it is in previous/ inside this folder")]
    if isinstance(rb, RollBack) and rb.committed and _complete_state_file(entry, rb.destination):
        actions.append(CleanAction("state-file-updated", rb.destination,
                                   "the run died between publishing and updating the 'checkpoint' state file"))
    if isinstance(rb, RollBack) and rb.changed:
        detail = f"previous checkpoint restored ({len(rb.restored)} files)" if rb.restored else "destination left absent"
        if rb.removed:
            detail += f", {len(rb.removed)} unpublished data shards removed"
        actions.append(CleanAction("rolled-back", rb.destination, detail))
    shutil.rmtree(entry, ignore_errors=True)
    actions.append(CleanAction("removed-staging", str(entry)))
    return actions


def _complete_state_file(staging_path: Path, destination: str) -> bool:
    """Finish a dead run's publish that stopped before the state file was written.

    The checkpoint is whole (its index is in place), so it is rolled forward,
    not deleted: it is added to the ``checkpoint`` file as the run would
    have.  Only if no one wrote that file since the run's journal (else a
    newer checkpoint is the latest, and ours stays unlisted, like one saved
    with ``tf.train.Checkpoint.write``).  Returns whether it wrote the file.
    """
    from google.protobuf import text_format

    folder = Path(destination).parent
    state_path = folder / STATE_FILE
    try:
        with state_file_lock(folder):
            journal_time = (staging_path / JOURNAL).stat().st_mtime
            state = checkpoint_state_class()()
            if state_path.exists():
                if state_path.stat().st_mtime > journal_time:
                    return False
                text_format.Merge(state_path.read_text(), state)
            if any(os.path.abspath(os.path.join(folder, p)) == os.path.abspath(destination)
                   for p in state.all_model_checkpoint_paths):
                return False
            update_state_file_locked(str(folder), destination, None)
    except (OSError, UnicodeDecodeError, text_format.ParseError):
        return False
    return True


def _dead_stagings(root: Path, destination: str | None, only_dead: bool) -> list[tuple[Path, dict]]:
    found = []
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise OutputError(f"{root}: cannot list folder: {exc.strerror}") from None
    for entry in entries:
        if not is_our_staging(entry):
            continue
        marker, pid, start = staging_owner(entry)
        if destination is not None and marker.get("destination") != destination:
            continue
        if only_dead and pid and (pid == os.getpid() or pid_alive(pid, start)):
            continue  # a live run (possibly in this process): not ours to touch
        found.append((entry, marker))
    return found


def recover_destination(dest_prefix: str, *, locked: bool = False) -> list[CleanAction]:
    """Recover ``dest_prefix`` from dead runs before writing it again.

    Rolls back unfinished publishes (the previous checkpoint comes back,
    orphan new data shards recorded in the journal go) and removes their
    staging folders.  Takes the destination lock unless ``locked``; raises
    :class:`OutputError` if a live run holds it.
    """
    if is_remote(dest_prefix):
        return _recover_remote(dirname(dest_prefix), dest_prefix, locked=locked)
    root = Path(dest_prefix).parent
    if not root.is_dir():
        return []
    stagings = _dead_stagings(root, str(Path(dest_prefix)), only_dead=True)
    if not stagings:
        return []
    lock = None if locked else DestinationLock(str(dest_prefix))
    if lock is not None:
        lock.acquire()
    try:
        actions: list[CleanAction] = []
        for entry, _ in stagings:
            actions += _recover_staging(entry)
        return actions
    finally:
        if lock is not None:
            lock.release()


def clean_actions(folder: str | os.PathLike, *, only_dead: bool = True) -> list[CleanAction]:
    """Recover ``folder`` after crashed runs; returns what was done.

    Removes lock files left by dead processes; then, for each staging folder
    carrying our marker whose process is dead, undoes its unfinished publish
    (see :func:`roll_back`) and removes it.  Nothing else is touched: a folder
    named like ours without the marker stays.  A destination locked by a live
    run is skipped (that run recovers it itself).  A ``checkpoint`` state
    file a dead run was writing (``checkpoint.ckptsurgery-tmp-PID-*``) goes.
    """
    folder = normalize(folder)
    if is_remote(folder):
        return _clean_remote(folder.rstrip("/"), only_dead)
    root = Path(folder)
    if not root.is_dir():
        raise OutputError(f"{root}: not a folder")
    actions: list[CleanAction] = []
    for lock_path in sorted(root.glob("*" + LOCK_SUFFIX)):
        pid, start = DestinationLock.read_owner(lock_path)
        if pid and not pid_alive(pid, start):
            lock_path.unlink(missing_ok=True)
            actions.append(CleanAction("removed-lock", str(lock_path)))
    for entry, marker in _dead_stagings(root, None, only_dead):
        dest = marker.get("destination")
        in_root = isinstance(dest, str) and dest and Path(dest).parent.resolve() == root.resolve()
        lock = DestinationLock(dest) if in_root else None
        if lock is not None:
            try:
                lock.acquire()
            except OutputError:
                actions.append(CleanAction("skipped-live", str(entry), "its destination is locked by a live run"))
                continue
        try:
            actions += _recover_staging(entry)
        finally:
            if lock is not None:
                lock.release()
    if remove_free_state_lock(root):
        actions.append(CleanAction("removed-lock", str(root / STATE_LOCK)))
    for tmp in sorted(root.glob(STATE_TMP_PREFIX + "*")):
        if tmp.is_file() and stale_state_tmp(tmp):
            tmp.unlink(missing_ok=True)
            actions.append(CleanAction("removed-temp", str(tmp), "a 'checkpoint' state file a dead run was writing"))
    for aside in sorted(root.glob("*" + LOCK_SUFFIX + ".*")):
        # leftovers of a lock being created or taken over by a run that died right then
        if aside.name.split(LOCK_SUFFIX + ".", 1)[1].startswith(("stale-", "tmp-")) and older_than(aside, 60):
            aside.unlink(missing_ok=True)
    return actions


def _recover_remote(folder: str, destination: str | None, *, locked: bool, only_dead: bool = True) -> list[CleanAction]:
    """Finish or undo dead runs' publishes on a remote store, from their journals (see :mod:`.remote`).

    A journal is dead when the destination's lock object no longer names its
    run with a live lease.  With ``locked`` the caller holds the destination
    lock, so any journal there is a dead run's.
    """
    actions: list[CleanAction] = []
    for journal, liveness in remote.dead_journals(folder, destination):
        if liveness == "live" and not locked:
            actions.append(CleanAction("skipped-live", journal.path, "its destination is locked by a live run"))
            continue
        lock = None if locked else remote.RemoteLock(journal.destination)
        if lock is not None:
            try:
                lock.acquire()
            except OutputError:
                actions.append(CleanAction("skipped-live", journal.path, "its destination is locked by a live run"))
                continue
        try:
            outcome = remote.recover_journal(journal)
        except OSError as exc:
            actions.append(CleanAction("kept-previous", journal.path, f"recovery failed: {exc.strerror or exc}"))
            continue
        finally:
            if lock is not None:
                lock.release()
        actions.append(CleanAction(outcome, journal.destination,
                                   "new checkpoint completed" if outcome == "rolled-forward" else
                                   "unpublished files removed, destination as before"))
        actions.append(CleanAction("removed-journal", journal.path))
    for path, liveness in store_stagings(folder, destination, only_dead=only_dead, locked=locked):
        # a cluster run's staging on the store, with every task attempt (no publish needs it to recover)
        if liveness == "live":
            actions.append(CleanAction("skipped-live", path, "its destination is locked by a live run"))
            continue
        filesystem(path).rmtree(path)
        actions.append(CleanAction("removed-staging", path))
    return actions


def _clean_remote(folder: str, only_dead: bool) -> list[CleanAction]:
    """:func:`clean_actions` for a remote folder: expired lock objects, dead runs' journals (rolled
    back or forward), and this machine's local staging folders of runs that wrote there."""
    fs = filesystem(folder)
    try:
        if not fs.isdir(folder):
            raise OutputError(f"{folder}: not a folder")
    except OSError as exc:
        raise OutputError(f"{folder}: cannot list folder: {exc.strerror or exc}") from None
    actions: list[CleanAction] = []
    try:
        for lock_path in remote.stale_locks(folder):
            fs.remove(lock_path)
            actions.append(CleanAction("removed-lock", lock_path))
        actions += _recover_remote(folder, None, locked=False, only_dead=only_dead)
        for name in sorted(fs.listdir(folder)):
            # a small file a run was replacing (write_bytes) when it died; a live writer takes milliseconds
            if TMP_INFIX in name and time.time() - fs.mtime(join(folder, name)) > 60:
                fs.remove(join(folder, name))
                actions.append(CleanAction("removed-temp", join(folder, name)))
    except OSError as exc:
        raise OutputError(f"{folder}: cleaning failed: {exc.strerror or exc}") from None
    tmp = Path(tempfile.gettempdir())
    for entry, marker in _dead_stagings(tmp, None, only_dead):
        dest = marker.get("destination")
        if isinstance(dest, str) and dirname(dest) == folder:
            shutil.rmtree(entry, ignore_errors=True)
            actions.append(CleanAction("removed-staging", str(entry)))
    return actions


def clean(folder: str | os.PathLike, *, only_dead: bool = True) -> list[str]:
    """Remove staging folders that ckptsurgery left in ``folder`` after a crash.

    Only folders carrying our marker are touched; with ``only_dead`` those
    whose process is still running are left alone.  An unfinished publish is
    rolled back first, so a ``--force`` run killed mid-publish gets its
    previous checkpoint back.  Returns the paths removed (see
    :func:`clean_actions` for the full account).
    """
    return [a.path for a in clean_actions(folder, only_dead=only_dead) if a.action.startswith("removed")]
