"""Staging folders and the atomic publish of a finished checkpoint.

A checkpoint is several files (``P.index``, ``P.data-*``), so no single
rename publishes it.  TensorFlow only sees a checkpoint through its
``.index`` file, which makes the index the commit point: everything is
built in a staging folder beside the destination (same filesystem, so
renames are atomic), then

1. the previous checkpoint at the destination, if any (``--force``), is
   moved into the staging folder, index first, so from that instant the
   destination reads as absent rather than as a mix;
2. the new data shards are renamed into place;
3. the new index is renamed into place: the checkpoint now exists, whole;
4. the folder's ``checkpoint`` state file is updated atomically.

A crash anywhere leaves the destination absent, the complete old
checkpoint, or the complete new one.  Staging folders carry a marker file,
so ``ckptsurgery clean`` (or the next run) removes ours and nothing else.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from . import faults
from .errors import OutputError

STAGING_PREFIX = ".ckptsurgery-staging-"
MARKER = "CKPTSURGERY_STAGING"
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DestinationLock:
    """An exclusive lock file beside the destination prefix.

    Two runs writing one destination would otherwise race at publish time;
    the second one fails at once with a clear message instead.  A lock left
    by a dead process (SIGKILL) is taken over.
    """

    def __init__(self, prefix: str):
        self.path = Path(prefix + LOCK_SUFFIX)
        self._held = False

    def acquire(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    owner = 0
                if owner and _pid_alive(owner) and owner != os.getpid():
                    raise OutputError(
                        f"{self.path.with_suffix('')}: another ckptsurgery run (pid {owner}) is writing this destination"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner died
                continue
            except OSError as exc:
                raise OutputError(f"{self.path.parent}: cannot write destination folder: {exc.strerror}") from None
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self._held = True
            return
        raise OutputError(f"{self.path}: could not take the destination lock")

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False


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
                {"pid": os.getpid(), "created": time.time(), "destination": self.dest_prefix}
            ))
        except OSError as exc:
            raise OutputError(f"{self.path.parent}: cannot create staging folder: {exc.strerror}") from None
        return self

    def group_prefix(self, index: int) -> str:
        return str(self.path / f"group-{index:05d}" / "part")

    @property
    def merged_prefix(self) -> str:
        return str(self.path / "merged" / Path(self.dest_prefix).name)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staging: Staging, *, durable: bool = True) -> str:
    """Move the merged checkpoint from ``staging`` to its destination (see module doc)."""
    dest = Path(staging.dest_prefix)
    new_files = checkpoint_files(staging.merged_prefix)
    new_index = Path(staging.merged_prefix + ".index")
    if new_index not in new_files:
        raise OutputError(f"{staging.path}: merged checkpoint has no index; nothing published")
    if durable:
        for f in new_files:
            _fsync_path(f)
    old_dir = staging.path / "previous"
    old_dir.mkdir(exist_ok=True)
    old_files = checkpoint_files(str(dest))
    old_files.sort(key=lambda f: not f.name.endswith(".index"))  # index first: dest reads as absent
    for f in old_files:
        os.replace(f, old_dir / f.name)
    faults.at("publish-old-moved")
    for f in new_files:
        if f != new_index:
            os.replace(f, dest.parent / f.name)
    faults.at("publish-data-moved")
    os.replace(new_index, dest.parent / new_index.name)  # the commit point
    if durable:
        _fsync_path(dest.parent)
    update_state_file(str(dest))
    return str(dest)


def update_state_file(prefix: str) -> None:
    """Make ``prefix`` the latest checkpoint in its folder's ``checkpoint`` file.

    Keeps the folder's other listed checkpoints that still exist, so a
    training folder's history is not lost.  TF writes the file atomically.
    """
    from ._tf import tf

    folder = os.path.dirname(prefix) or "."
    base = os.path.basename(prefix)
    tf_ = tf()
    existing: list[str] = []
    try:
        state = tf_.train.get_checkpoint_state(folder)
    except Exception:
        state = None
    if state is not None:
        for p in state.all_model_checkpoint_paths:
            full = p if os.path.isabs(p) else os.path.join(folder, p)
            if os.path.exists(full + ".index") and os.path.basename(p) != base:
                existing.append(os.path.relpath(full, folder))
    _write_state_file(folder, base, existing + [base])


def _write_state_file(folder: str, latest: str, all_paths: list[str]) -> None:
    """Write the ``checkpoint`` text proto atomically (temp file, then rename)."""
    from google.protobuf import text_format
    from tensorflow.python.checkpoint import checkpoint_management  # noqa: F401 - registers the proto
    from tensorflow.python.training import checkpoint_state_pb2

    state = checkpoint_state_pb2.CheckpointState(model_checkpoint_path=latest, all_model_checkpoint_paths=all_paths)
    target = os.path.join(folder, "checkpoint")
    tmp = f"{target}.ckptsurgery-tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        f.write(text_format.MessageToString(state))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def is_our_staging(folder: Path) -> bool:
    return folder.is_dir() and folder.name.startswith(STAGING_PREFIX) and (folder / MARKER).is_file()


def clean(folder: str | os.PathLike, *, only_dead: bool = True) -> list[str]:
    """Remove staging folders that ckptsurgery left in ``folder`` after a crash.

    Only folders carrying our marker are touched; with ``only_dead`` those
    whose process is still running are left alone.
    """
    removed = []
    root = Path(folder)
    if not root.is_dir():
        raise OutputError(f"{root}: not a folder")
    for entry in sorted(root.iterdir()):
        if not is_our_staging(entry):
            continue
        try:
            pid = int(json.loads((entry / MARKER).read_text()).get("pid", 0))
        except (OSError, ValueError, AttributeError):
            pid = 0
        if only_dead and pid and pid != os.getpid() and _pid_alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(str(entry))
    for lock in root.glob("*" + LOCK_SUFFIX):
        try:
            pid = int(lock.read_text().strip() or "0")
        except (OSError, ValueError):
            continue
        if not _pid_alive(pid):
            lock.unlink(missing_ok=True)
            removed.append(str(lock))
    return removed


def is_disk_full(exc: BaseException) -> bool:
    text = str(exc)
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text
