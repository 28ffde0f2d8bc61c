"""Publishing to a filesystem without atomic renames (``gs://``, ``ram://``, any ``tf.io.gfile`` scheme).

On an object store a rename is a copy and a delete, so the local recipe
(build beside the destination, rename into place) does not apply.  What
does hold everywhere: a V2 checkpoint without its ``.index`` is invisible
to every reader, and one object write appears whole or not at all.  So the
checkpoint is built in a *local* staging folder (the temp folder: every byte
is then uploaded exactly once, with no server-side copies of data shards),
and published by uploads in this order (a cluster run stages on the store
itself, :mod:`.store_staging`, and each "upload" is then a server-side rename):

0. a *journal* object ``.ckptsurgery-publish-NAME-HEX.json`` beside the
   destination (our marker: ``clean`` touches nothing without one) names the
   destination and the files about to appear;
1. the data shards, then 2. the index (the commit point), then 3. the
   folder's ``checkpoint`` state file; 4. the journal goes.

With ``--force`` over an existing checkpoint ``P`` the new one is first
uploaded whole under a fresh name ``P.ckptsurgery-new.HEX`` (steps 1-2), the
state file is switched to it, ``P``'s index is deleted (``P`` is now
absent, never a mix), its data replaced by copies of the fresh one's, its
index copied last, the state file switched back to ``P`` and the fresh copy
deleted.  Recovery (``clean``, or the next run writing ``P``) decides from
what the store holds: the state file naming the fresh copy means roll
forward, else roll back.  README ("Checkpoints on gs:// and other
filesystems") lists what a reader can see after a crash at each step.

One writer per destination: a lock object ``P.ckptsurgery-lock`` holding a
unique owner id and a lease (renewed while the run lives; see
:class:`RemoteLock` for the exact guarantee).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import faults
from ..fs import basename, dirname, filesystem, is_remote, join
from ..protos import checkpoint_state_class
from ..resolve import checkpoint_files
from ...errors import OutputError

JOURNAL_PREFIX = ".ckptsurgery-publish-"
JOURNAL_MARKER = "CKPTSURGERY_PUBLISH"
LOCK_SUFFIX = ".ckptsurgery-lock"
FRESH_INFIX = ".ckptsurgery-new."
STATE_FILE = "checkpoint"
#: Seconds a lock stays valid without renewal; the holder renews it every third of that.
LEASE_SECONDS = 120.0
#: Seconds between writing our lock object and reading it back (another writer's write lands by then).
SETTLE_SECONDS = 0.2
#: Bytes per write when uploading a staged file.
UPLOAD_CHUNK = 8 << 20

_HOST = socket.gethostname()


# -- the lock -------------------------------------------------------------------------------------
class RemoteLock:
    """One writer per remote destination: a lock object with a unique owner and a lease.

    Object stores have no advisory locks and ``tf.io.gfile`` no conditional
    (create-if-absent) write, so: a lock held by someone else whose lease has
    not expired refuses the run; else we write ours, wait
    :data:`SETTLE_SECONDS` and read it back: another owner's id there means
    it won, and we refuse.  The publish reads it back again before the
    commit point (:func:`publish_remote`).  Guarantee: runs that start more
    than ``SETTLE_SECONDS`` apart never both publish; two that write the lock
    within that window may both proceed, and then the last lock writer
    publishes while the other fails at its check before committing (only a
    race inside the final check itself is unguarded).  A lock whose holder
    died is free once its lease expires (at once if the holder ran on this
    host and its pid is gone); a holder paused longer than the lease (a
    suspended VM) loses it.
    """

    _held_here: set[str] = set()  # lock paths held by this process
    _owners_here: set[str] = set()  # and their owner ids

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.path = prefix + LOCK_SUFFIX
        self.owner = uuid.uuid4().hex
        self._fs = filesystem(prefix)
        self._stop: threading.Event | None = None

    def read(self) -> dict | None:
        return read_lock(self.path)

    def check_held(self) -> None:
        """Raise unless the lock object still names us (another run took it over: do not commit)."""
        held = self.read()
        if held is None or held.get("owner") != self.owner:
            raise OutputError(f"{self.prefix}: lost the destination lock to another run; nothing was published")

    def _record(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": _HOST, "pid": os.getpid(),
                           "expires": time.time() + LEASE_SECONDS}).encode()

    def acquire(self) -> None:
        if self.path in self._held_here:
            raise OutputError(f"{self.prefix}: another ckptsurgery writer in this process is writing this destination")
        held = self.read()
        if held is not None and lock_alive(held):
            raise OutputError(f"{self.prefix}: another ckptsurgery run (host {held.get('host')}, pid {held.get('pid')}) "
                              f"is writing this destination (its lease ends within {LEASE_SECONDS:.0f} s of its death)")
        try:
            self._fs.write_bytes(self.path, self._record())
            time.sleep(SETTLE_SECONDS)
            held = self.read()
        except OSError as exc:
            raise OutputError(f"{self.prefix}: cannot write destination lock: {exc.strerror or exc}") from None
        if held is None or held.get("owner") != self.owner:
            raise OutputError(f"{self.prefix}: another ckptsurgery run took the destination lock at the same moment")
        self._held_here.add(self.path)
        self._owners_here.add(self.owner)
        self._stop = threading.Event()
        threading.Thread(target=self._renew, args=(self._stop,), daemon=True, name="ckptsurgery-lease").start()

    def _renew(self, stop: threading.Event) -> None:
        while not stop.wait(LEASE_SECONDS / 3):
            try:
                self._fs.write_bytes(self.path, self._record())
            except OSError:
                pass  # retried at the next tick; the lease lasts three ticks

    def release(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        self._stop = None
        self._held_here.discard(self.path)
        self._owners_here.discard(self.owner)
        held = self.read()
        if held is not None and held.get("owner") == self.owner:
            self._fs.remove(self.path)

    def __enter__(self) -> "RemoteLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read_lock(path: str) -> dict | None:
    try:
        record = json.loads(filesystem(path).read_bytes(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError):
        return {}  # unreadable: treated as held by nobody alive once its lease could have run out
    return record if isinstance(record, dict) else {}


def lock_alive(record: dict) -> bool:
    """Is the run that wrote this lock record (possibly) still writing?"""
    from .liveness import pid_alive

    try:
        expires = float(record.get("expires", 0))
    except (TypeError, ValueError):
        expires = 0.0
    if expires < time.time():
        return False
    if record.get("host") == _HOST and isinstance(record.get("pid"), int):
        if record["pid"] == os.getpid():
            return record.get("owner") in RemoteLock._owners_here
        return pid_alive(record["pid"])
    return True


# -- the journal ------------------------------------------------------------------------------------
@dataclass
class Journal:
    path: str
    owner: str
    destination: str
    fresh: str | None
    data: list[str]  # base names of the new data shards (under the destination's or the fresh name)

    def write(self) -> None:
        filesystem(self.path).write_bytes(self.path, json.dumps({
            "marker": JOURNAL_MARKER, "owner": self.owner, "host": _HOST, "pid": os.getpid(), "created": time.time(),
            "destination": self.destination, "fresh": self.fresh, "data": self.data,
        }).encode())

    @staticmethod
    def read(path: str) -> "Journal | None":
        try:
            record = json.loads(filesystem(path).read_bytes(path))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(record, dict) or record.get("marker") != JOURNAL_MARKER:
            return None
        dest, fresh, data = record.get("destination"), record.get("fresh"), record.get("data")
        folder = dirname(path)
        if not isinstance(dest, str) or dirname(dest) != folder or not isinstance(data, list):
            return None  # only ever touch files in the journal's own folder
        if fresh is not None and (not isinstance(fresh, str) or not fresh.startswith(dest + FRESH_INFIX)):
            return None
        names = [n for n in data if isinstance(n, str) and "/" not in n and ".data-" in n]
        return Journal(path, str(record.get("owner", "")), dest, fresh, names)


# -- the state file -----------------------------------------------------------------------------------
def _read_state(folder: str):
    from google.protobuf import text_format

    state = checkpoint_state_class()()
    path = join(folder, STATE_FILE)
    try:
        text_format.Merge(filesystem(path).read_bytes(path).decode("utf-8"), state)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError, text_format.ParseError):
        state = checkpoint_state_class()()  # unreadable: TF would ignore it too; start afresh
    return state


def _listed(folder: str, entry: str) -> str:
    return entry if "://" in entry else join(folder, entry)


def state_names(folder: str, prefix: str) -> bool:
    """Does the folder's state file list ``prefix`` (as latest or in its history)?"""
    state = _read_state(folder)
    return any(_listed(folder, p) == prefix for p in [state.model_checkpoint_path, *state.all_model_checkpoint_paths])


def update_state(folder: str, latest: str, *, drop: tuple[str, ...] = ()) -> None:
    """Make ``latest`` the newest entry of the folder's ``checkpoint`` file (as TF does; see
    :func:`~ckptsurgery.io.publish.statefile.update_state_file`), removing ``drop`` and any
    earlier listing of ``latest``.  One object write: a reader sees the old file or the new."""
    from google.protobuf import text_format

    CheckpointState = checkpoint_state_class()
    state = _read_state(folder)
    paths = list(state.all_model_checkpoint_paths)
    stamps = list(state.all_model_checkpoint_timestamps)
    if len(stamps) != len(paths):
        stamps = (stamps + [state.last_preserved_timestamp] * len(paths))[:len(paths)]
    gone = {latest, *drop}
    kept = [(p, t) for p, t in zip(paths, stamps) if _listed(folder, p) not in gone]
    base = basename(latest)
    new = CheckpointState(
        model_checkpoint_path=base,
        all_model_checkpoint_paths=[p for p, _ in kept] + [base],
        all_model_checkpoint_timestamps=[t for _, t in kept] + [time.time()],
        last_preserved_timestamp=state.last_preserved_timestamp,
    )
    path = join(folder, STATE_FILE)
    filesystem(path).write_bytes(path, text_format.MessageToString(new).encode())


# -- publish ----------------------------------------------------------------------------------------------
def _upload(local: Path, remote: str) -> None:
    writer = filesystem(remote).open_writer(remote)
    try:
        with open(local, "rb") as f:
            while chunk := f.read(UPLOAD_CHUNK):
                writer.write(chunk)
    finally:
        writer.close()


def _put(staged: str, remote: str) -> None:
    """Put a staged file at ``remote``: uploaded from local staging, or moved by the store's own
    rename when a cluster run staged it on the same store (server-side: no bytes through us)."""
    if is_remote(staged):
        filesystem(remote).rename(staged, remote)
    else:
        _upload(Path(staged), remote)


def _renamed(name: str, old_base: str, new_base: str) -> str:
    return new_base + name[len(old_base):]


def publish_remote(staging, lock: RemoteLock, *, replace: bool) -> str:
    """Upload the checkpoint merged in ``staging`` to its remote destination (see module doc)."""
    dest = staging.dest_prefix
    fs = filesystem(dest)
    folder = dirname(dest)
    merged = staging.merged_prefix
    staged = [str(f) for f in checkpoint_files(merged)]  # local; or on this store (a cluster run's staging)
    index = merged + ".index"
    if index not in staged:
        raise OutputError(f"{staging.path}: merged checkpoint has no index; nothing published")
    data = [f for f in staged if f != index]
    if checkpoint_files(dest) and not replace:
        raise OutputError(f"{dest}: a checkpoint appeared here while this run was working (another run published "
                          f"it); nothing was published; pass --force to replace it")
    replacing = bool(checkpoint_files(dest))
    fresh = f"{dest}{FRESH_INFIX}{uuid.uuid4().hex[:8]}" if replacing else None
    target = fresh or dest
    local_base = basename(merged)
    journal = Journal(join(folder, f"{JOURNAL_PREFIX}{basename(dest)}-{uuid.uuid4().hex[:8]}.json"), lock.owner,
                      dest, fresh, [_renamed(basename(f), local_base, basename(dest)) for f in data])
    journal.write()
    try:
        for f in data:
            _put(f, join(folder, _renamed(basename(f), local_base, basename(target))))
        faults.at("remote-data-uploaded")
        lock.check_held()
        _put(index, target + ".index")  # the commit point of `target`
        faults.at("remote-index-uploaded")
        if fresh is not None:
            update_state(folder, fresh, drop=(dest,))  # readers going by the state file now see the new one
            faults.at("remote-state-switched")
            _move_into_place(fresh, dest, journal.data)
            faults.at("remote-moved-into-place")
            update_state(folder, dest, drop=(fresh,))
            _remove_checkpoint(fresh)
        else:
            update_state(folder, dest)
    except Exception as exc:
        # Undo (or, once the state file named the new checkpoint, finish) what this run started.
        try:
            outcome = recover_journal(journal)
        except Exception:
            raise OutputError(f"{dest}: publishing failed ({_reason(exc)}) and so did undoing it: run "
                              f"`ckptsurgery clean {folder}`; readers see a whole checkpoint meanwhile") from None
        if outcome == "rolled-forward":
            return dest  # the failed step was redone: the new checkpoint is published, whole
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{dest}: publishing failed ({_reason(exc)}); it was undone, nothing was published") from None
    fs.remove(journal.path)
    return dest


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _move_into_place(fresh: str, dest: str, data_names: list[str]) -> None:
    """Replace ``dest`` by copies of ``fresh``: ``dest``'s index goes first, so it is absent, never a mix."""
    fs = filesystem(dest)
    folder = dirname(dest)
    fs.remove(dest + ".index")
    for old in checkpoint_files(dest):
        fs.remove(old)
    for name in data_names:
        fs.copy(join(folder, _renamed(name, basename(dest), basename(fresh))), join(folder, name))
    fs.copy(fresh + ".index", dest + ".index")


def _remove_checkpoint(prefix: str) -> list[str]:
    """Delete a checkpoint, index first (it turns invisible before any data shard goes)."""
    fs = filesystem(prefix)
    files = checkpoint_files(prefix)
    files.sort(key=lambda f: not f.endswith(".index"))
    for f in files:
        fs.remove(f)
    return files


def recover_journal(journal: Journal) -> str:
    """Bring a destination left by a dead (or failed) publish to a whole state; returns what was done.

    ``"rolled-back"``: the new checkpoint never committed (or, with a fresh
    name, was never made the latest): its uploaded files go, the destination
    stays as it was.  ``"rolled-forward"``: it had committed: the state file
    (and, for ``--force``, the destination's own files) are completed.
    """
    fs = filesystem(journal.destination)
    folder = dirname(journal.destination)
    dest, fresh = journal.destination, journal.fresh
    if fresh is None:
        if fs.isfile(dest + ".index"):
            if not state_names(folder, dest):
                update_state(folder, dest)
            outcome = "rolled-forward"
        else:
            for name in journal.data:
                fs.remove(join(folder, name))
            outcome = "rolled-back"
    elif state_names(folder, fresh) and fs.isfile(fresh + ".index"):
        _move_into_place(fresh, dest, journal.data)
        update_state(folder, dest, drop=(fresh,))
        _remove_checkpoint(fresh)
        outcome = "rolled-forward"
    else:
        if state_names(folder, fresh):  # named but incomplete: cannot happen in our order; unlist it
            update_state(folder, dest, drop=(fresh,))
        fs.remove(fresh + ".index")
        for name in journal.data:
            fs.remove(join(folder, _renamed(name, basename(dest), basename(fresh))))
        outcome = "rolled-back"
    fs.remove(journal.path)
    return outcome


def names_in(folder: str) -> list[str]:
    """The entries of ``folder`` on its filesystem, sorted; none when it does not exist (nothing to recover)."""
    try:
        return sorted(filesystem(folder).listdir(folder))
    except FileNotFoundError:
        return []


def dead_journals(folder: str, destination: str | None = None) -> list[tuple[Journal | None, str]]:
    """Our journals in ``folder`` (for ``destination`` only, if given), with whether their run is live.

    Returns ``(journal, "live" | "dead")`` pairs; files named like a journal
    without our marker are not ours and are not listed.
    """
    names = names_in(folder)
    found = []
    for name in names:
        if not (name.startswith(JOURNAL_PREFIX) and name.endswith(".json")):
            continue
        journal = Journal.read(join(folder, name))
        if journal is None or (destination is not None and journal.destination != destination):
            continue
        held = read_lock(journal.destination + LOCK_SUFFIX)
        live = held is not None and held.get("owner") == journal.owner and lock_alive(held)
        found.append((journal, "live" if live else "dead"))
    return found


def stale_locks(folder: str) -> list[str]:
    """Lock objects in ``folder`` whose holder is gone (lease expired, or a dead pid on this host)."""
    names = names_in(folder)
    stale = []
    for name in names:
        if name.endswith(LOCK_SUFFIX):
            record = read_lock(join(folder, name))
            if record is not None and not lock_alive(record):
                stale.append(join(folder, name))
    return stale
