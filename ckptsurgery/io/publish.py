"""Staging folders and the atomic publish of a finished checkpoint.

A checkpoint is several files (``P.index``, ``P.data-*``), so no single
rename publishes it.  TensorFlow only sees a checkpoint through its
``.index`` file, which makes the index the commit point: everything is
built in a staging folder beside the destination (same filesystem, so
renames are atomic), then

0. a *journal* (``PUBLISH.json`` in the staging folder) records the file
   names about to move, before anything moves;
1. the previous checkpoint at the destination, if any (``--force``), is
   moved into the staging folder's ``previous/``, index first, so from that
   instant the destination reads as absent rather than as a mix;
2. the new data shards are renamed into place;
3. the new index is renamed into place: the checkpoint now exists, whole;
4. the folder's ``checkpoint`` state file is updated atomically; if that
   fails (a full disk), steps 3-1 are undone, so a failed run never leaves a
   published checkpoint that the state file does not list.  A run killed
   between 3 and 4 is rolled forward by recovery: it writes the state file.

A crash anywhere leaves the destination absent, the complete old
checkpoint, or the complete new one.  A crash in steps 1-2 leaves the
previous checkpoint in ``previous/``; recovery (``ckptsurgery clean``, or the
next run writing the same destination) reads the journal, removes the new
data shards the dead run had moved in and moves the previous checkpoint back,
index last.  Staging folders carry a marker file, so recovery touches ours
and nothing else, and only those whose process is dead.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import faults
from .protos import checkpoint_state_class
from ..errors import OutputError

STAGING_PREFIX = ".ckptsurgery-staging-"
MARKER = "CKPTSURGERY_STAGING"
JOURNAL = "PUBLISH.json"
LOCK_SUFFIX = ".ckptsurgery-lock"


def checkpoint_files(prefix: str) -> list[Path]:
    """The files of the checkpoint at ``prefix``: its index and data shards."""
    path = Path(prefix)
    if not path.parent.is_dir():
        return []
    base = path.name
    return sorted(
        f for f in path.parent.iterdir()
        if f.name == base + ".index" or (f.name.startswith(base + ".data-") and "-of-" in f.name)
    )


# -- who is alive ------------------------------------------------------------
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


def _pid_alive(pid: int, start: str | None = None) -> bool:
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


def _owner_record() -> dict:
    return {"pid": os.getpid(), "start": _proc_start(os.getpid())}


class DestinationLock:
    """An exclusive lock file beside the destination prefix.

    Two runs writing one destination would otherwise race at publish time;
    the second one fails at once with a clear message instead.  A lock left
    by a dead process (SIGKILL) is taken over.  The file holds ``PID`` or
    ``PID START`` (START tells a reused pid from its original owner).
    """

    _held_here: set[str] = set()  # lock paths held by this process (any thread)

    def __init__(self, prefix: str):
        self.path = Path(prefix + LOCK_SUFFIX)
        self._held = False

    @staticmethod
    def read_owner(path: Path) -> tuple[int, str | None]:
        try:
            parts = path.read_text().split()
            return int(parts[0]) if parts else 0, (parts[1] if len(parts) > 1 else None)
        except (OSError, ValueError, UnicodeDecodeError):
            return 0, None

    def acquire(self) -> None:
        key = str(self.path.absolute())
        for _ in range(3):
            try:
                self._create()
            except FileExistsError:
                owner, start = self.read_owner(self.path)
                if owner == os.getpid() and key in self._held_here:
                    raise OutputError(
                        f"{self.path.with_suffix('')}: another ckptsurgery writer in this process is writing this destination"
                    ) from None
                if owner and owner != os.getpid() and _pid_alive(owner, start):
                    raise OutputError(
                        f"{self.path.with_suffix('')}: another ckptsurgery run (pid {owner}) is writing this destination"
                    ) from None
                self._unlink_stale()  # its owner died (or the file is not a lock we can read)
                continue
            except OSError as exc:
                raise OutputError(f"{self.path.parent}: cannot write destination lock: {exc.strerror}") from None
            self._held = True
            self._held_here.add(key)
            return
        raise OutputError(f"{self.path.with_suffix('')}: could not take the destination lock (another run keeps taking it)")

    def _create(self) -> None:
        """Create the lock file with its content in one step: write a temp file,
        then hard-link it to the lock name (fails if the lock exists)."""
        rec = _owner_record()
        text = f"{rec['pid']} {rec['start']}" if rec["start"] else str(rec["pid"])
        tmp = self.path.with_name(f"{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_text(text)
            try:
                os.link(tmp, self.path)
                return
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links
                pass
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        finally:
            tmp.unlink(missing_ok=True)

    def _unlink_stale(self) -> None:
        """Remove a dead owner's lock, atomically: rename it aside first, so two
        runs taking over the same stale lock cannot both remove a fresh one."""
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        except OSError:
            return
        owner, start = self.read_owner(aside)
        if owner and owner != os.getpid() and _pid_alive(owner, start):
            # Lost a race: a live run re-created the lock just now; put it back.
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False
            self._held_here.discard(str(self.path.absolute()))

    def __enter__(self) -> "DestinationLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Staging:
    """A marked staging folder beside the destination prefix."""

    def __init__(self, dest_prefix: str):
        dest = Path(dest_prefix)
        self.dest_prefix = str(dest)
        self.path = dest.parent / f"{STAGING_PREFIX}{dest.name}-{uuid.uuid4().hex[:8]}"

    def create(self) -> "Staging":
        try:
            self.path.mkdir()
            (self.path / MARKER).write_text(json.dumps(
                {**_owner_record(), "created": time.time(), "destination": self.dest_prefix}
            ))
        except OSError as exc:
            shutil.rmtree(self.path, ignore_errors=True)
            raise OutputError(f"{self.path.parent}: cannot create staging folder: {exc.strerror}") from None
        return self

    def group_prefix(self, index: int) -> str:
        return str(self.path / f"group-{index:05d}" / "part")

    @property
    def merged_prefix(self) -> str:
        return str(self.path / "merged" / Path(self.dest_prefix).name)

    def remove(self) -> None:
        """Discard the staging folder; if a publish had begun and not committed,
        first put the previous checkpoint back (never delete a user's checkpoint)."""
        if not self.path.exists():
            return
        if roll_back(self.path) is _ROLLBACK_FAILED:
            return  # keep previous/ on disk; `ckptsurgery clean` retries
        shutil.rmtree(self.path, ignore_errors=True)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_durably(path: Path, obj: dict, durable: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        _fsync_path(path.parent)


def publish(staging: Staging, *, durable: bool = True, replace: bool = False) -> str:
    """Move the merged checkpoint from ``staging`` to its destination (see module doc).

    ``replace`` (``--force``) allows replacing a checkpoint found at the
    destination.  Without it, the destination is checked again here, under
    the destination lock the caller holds: a run that found nothing at the
    start and then spent minutes reading and planning must not move aside a
    checkpoint that another run (or a training job) published meanwhile.

    The publish includes the folder's ``checkpoint`` state file: if a step
    fails (an ``OSError``), including that last write (a full disk), the
    publish is undone (the new checkpoint leaves, the previous one comes
    back) before the error propagates, so the destination is as it was and
    the error's exit code always means "nothing changed".
    """
    dest = Path(staging.dest_prefix)
    new_files = checkpoint_files(staging.merged_prefix)
    new_index = Path(staging.merged_prefix + ".index")
    if new_index not in new_files:
        raise OutputError(f"{staging.path}: merged checkpoint has no index; nothing published")
    old_files = checkpoint_files(str(dest))
    if old_files and not replace:
        raise OutputError(f"{dest}: a checkpoint appeared here while this run was working (another run published "
                          f"it); nothing was published; pass --force to replace it")
    if durable:
        for f in new_files:
            _fsync_path(f)
    new_data = [f for f in new_files if f != new_index]
    old_dir = staging.path / "previous"
    old_dir.mkdir(exist_ok=True)
    old_files.sort(key=lambda f: not f.name.endswith(".index"))  # index first: dest reads as absent
    _write_json_durably(staging.path / JOURNAL, {
        "destination": str(dest),
        "new_index": new_index.name,
        "new_data": [f.name for f in new_data],
        "previous": [f.name for f in old_files],
    }, durable)
    try:
        for f in old_files:
            os.replace(f, old_dir / f.name)
        faults.at("publish-old-moved")
        for f in new_data:
            os.replace(f, dest.parent / f.name)
        faults.at("publish-data-moved")
        os.replace(new_index, dest.parent / new_index.name)  # the commit point
    except BaseException:
        roll_back(staging.path)
        raise
    try:
        if durable:
            _fsync_path(dest.parent)
        update_state_file(str(dest))
    except OSError as exc:
        # A checkpoint published with a stale state file loads, but TF's tools then see the
        # wrong latest checkpoint and a CheckpointManager the wrong history: undo instead.
        undone = _unpublish(staging)
        why = "disk full (no space left on device)" if is_disk_full(exc) else (exc.strerror or str(exc))
        failed = f"{dest}: updating the folder's 'checkpoint' state file failed: {why}"
        if undone is True:
            raise OutputError(f"{failed}; the publish was undone, nothing was published") from None
        if undone is None:
            raise OutputError(f"{failed}; the new checkpoint stays published (it could not be moved back) but "
                              f"the state file does not list it") from None
        raise OutputError(f"{failed}; undoing the publish failed too: run `ckptsurgery clean {dest.parent}` "
                          f"to put the previous checkpoint back") from None
    return str(dest)


def _unpublish(staging: Staging) -> bool | None:
    """Undo a committed publish whose state file could not be written.

    Moving the new index back into the staging folder turns the publish into
    an uncommitted one (the destination reads as absent again); the journal's
    roll-back then removes the new data shards and restores the previous
    checkpoint, index last.  A crash in here is recovered the same way.
    Returns True when undone, None when the new index could not be moved
    (still committed), False when the roll-back left the previous checkpoint
    in the staging folder (``clean`` retries).
    """
    dest = Path(staging.dest_prefix)
    new_index = Path(staging.merged_prefix + ".index")
    try:
        os.replace(dest.parent / new_index.name, new_index)
    except OSError:
        return None
    return roll_back(staging.path) is not _ROLLBACK_FAILED


# -- recovery ------------------------------------------------------------------
_ROLLBACK_FAILED = "failed"


@dataclass
class RollBack:
    """What :func:`roll_back` did to a destination."""

    destination: str
    committed: bool  # the dead run had published: nothing to undo
    removed: list[str]  # new data shards the run had moved in, now removed
    restored: list[str]  # previous checkpoint files moved back

    @property
    def changed(self) -> bool:
        return bool(self.removed or self.restored)


def _read_journal(staging_path: Path) -> dict | None:
    try:
        journal = json.loads((staging_path / JOURNAL).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(journal, dict) or not isinstance(journal.get("destination"), str):
        return None
    return journal


def _plain_names(value) -> list[str]:
    """Journal file names, refusing anything that is not a bare file name."""
    if not isinstance(value, list):
        return []
    return [n for n in value if isinstance(n, str) and n and "/" not in n and n not in (".", "..")]


def roll_back(staging_path: str | os.PathLike) -> RollBack | str | None:
    """Undo an unfinished publish recorded in ``staging_path``'s journal.

    Returns None when no publish had started (the destination was never
    touched), a :class:`RollBack` otherwise, or ``_ROLLBACK_FAILED`` when the
    previous checkpoint could not be put back (it is then left in
    ``previous/``).  Idempotent: safe to call again after a crash in here.
    """
    staging_path = Path(staging_path)
    journal = _read_journal(staging_path)
    if journal is None:
        return None
    dest = Path(journal["destination"])
    folder = dest.parent
    try:
        if folder.resolve() != staging_path.parent.resolve():
            return _ROLLBACK_FAILED  # a journal naming another folder is not ours to act on
    except OSError:
        return _ROLLBACK_FAILED
    merged = staging_path / "merged"
    new_index = journal.get("new_index")
    if not (isinstance(new_index, str) and _plain_names([new_index])):
        new_index = dest.name + ".index"
    dest_index = folder / (dest.name + ".index")
    result = RollBack(str(dest), False, [], [])
    if not (merged / new_index).exists() and dest_index.exists():
        result.committed = True  # the new index is in place: the new checkpoint is whole
        return result
    previous = staging_path / "previous"
    try:
        for name in _plain_names(journal.get("new_data")):
            # Moved in by the run iff it has left the staging folder: all previous files left
            # the destination before any new one arrived, so a same-named file still at the
            # destination while the new one is staged belongs to the previous checkpoint.
            # Moved back (not deleted), so a second roll-back (after a crash in this one, or
            # the abort after an in-process one) never mistakes a restored previous file for it.
            if not (merged / name).exists() and (folder / name).is_file():
                os.replace(folder / name, merged / name)
                result.removed.append(str(folder / name))
        if previous.is_dir():
            files = sorted(previous.iterdir(), key=lambda f: (f.name.endswith(".index"), f.name))  # index last
            for f in files:
                target = folder / f.name
                if target.exists():
                    continue  # never overwrite; left in previous/
                os.replace(f, target)
                result.restored.append(str(target))
        if result.changed:
            try:
                _fsync_path(folder)
            except OSError:
                pass
    except OSError:
        return _ROLLBACK_FAILED
    if previous.is_dir() and any(previous.iterdir()):
        return _ROLLBACK_FAILED
    (staging_path / JOURNAL).unlink(missing_ok=True)  # done: the destination is as it was
    return result


def _staging_owner(entry: Path) -> tuple[dict, int, str | None]:
    try:
        marker = json.loads((entry / MARKER).read_text())
        if not isinstance(marker, dict):
            marker = {}
    except (OSError, ValueError, UnicodeDecodeError):
        marker = {}
    try:
        pid = int(marker.get("pid", 0))
    except (TypeError, ValueError):
        pid = 0
    start = marker.get("start")
    return marker, pid, start if isinstance(start, str) else None


@dataclass
class CleanAction:
    """One thing :func:`clean` or :func:`recover_destination` did (or left)."""

    action: str  # "removed-staging", "rolled-back", "state-file-updated", "removed-lock", "removed-temp",
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
    if rb is _ROLLBACK_FAILED:
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
            _update_state_file(str(folder), destination, None)
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
        marker, pid, start = _staging_owner(entry)
        if destination is not None and marker.get("destination") != destination:
            continue
        if only_dead and pid and (pid == os.getpid() or _pid_alive(pid, start)):
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
        _update_state_file(folder, prefix, now)


def _update_state_file(folder: str, prefix: str, now: float | None) -> None:
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


def _remove_free_state_lock(folder: Path) -> bool:
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


def _stale_state_tmp(path: Path) -> bool:
    """Is ``path`` a temp state file whose writer is gone?"""
    pid_text = path.name[len(STATE_TMP_PREFIX):].split("-", 1)[0]
    if pid_text.isdigit():
        return int(pid_text) != os.getpid() and not _pid_alive(int(pid_text))
    return _older_than(path, 60)  # no pid in the name (an older version): a live writer takes milliseconds


def is_our_staging(folder: Path) -> bool:
    return folder.is_dir() and folder.name.startswith(STAGING_PREFIX) and (folder / MARKER).is_file()


def clean_actions(folder: str | os.PathLike, *, only_dead: bool = True) -> list[CleanAction]:
    """Recover ``folder`` after crashed runs; returns what was done.

    Removes lock files left by dead processes; then, for each staging folder
    carrying our marker whose process is dead, undoes its unfinished publish
    (see :func:`roll_back`) and removes it.  Nothing else is touched: a folder
    named like ours without the marker stays.  A destination locked by a live
    run is skipped (that run recovers it itself).  A ``checkpoint`` state
    file a dead run was writing (``checkpoint.ckptsurgery-tmp-PID-*``) goes.
    """
    root = Path(folder)
    if not root.is_dir():
        raise OutputError(f"{root}: not a folder")
    actions: list[CleanAction] = []
    for lock_path in sorted(root.glob("*" + LOCK_SUFFIX)):
        pid, start = DestinationLock.read_owner(lock_path)
        if pid and not _pid_alive(pid, start):
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
    if _remove_free_state_lock(root):
        actions.append(CleanAction("removed-lock", str(root / STATE_LOCK)))
    for tmp in sorted(root.glob(STATE_TMP_PREFIX + "*")):
        if tmp.is_file() and _stale_state_tmp(tmp):
            tmp.unlink(missing_ok=True)
            actions.append(CleanAction("removed-temp", str(tmp), "a 'checkpoint' state file a dead run was writing"))
    for aside in sorted(root.glob("*" + LOCK_SUFFIX + ".*")):
        # leftovers of a lock being created or taken over by a run that died right then
        if aside.name.split(LOCK_SUFFIX + ".", 1)[1].startswith(("stale-", "tmp-")) and _older_than(aside, 60):
            aside.unlink(missing_ok=True)
    return actions


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def clean(folder: str | os.PathLike, *, only_dead: bool = True) -> list[str]:
    """Remove staging folders that ckptsurgery left in ``folder`` after a crash.

    Only folders carrying our marker are touched; with ``only_dead`` those
    whose process is still running are left alone.  An unfinished publish is
    rolled back first, so a ``--force`` run killed mid-publish gets its
    previous checkpoint back.  Returns the paths removed (see
    :func:`clean_actions` for the full account).
    """
    return [a.path for a in clean_actions(folder, only_dead=only_dead) if a.action.startswith("removed")]


def is_disk_full(exc: BaseException) -> bool:
    text = str(exc)
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text
