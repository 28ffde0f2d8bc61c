"""The atomic publish of a finished checkpoint, and its undo when the state file cannot be written."""

from __future__ import annotations

import os
from pathlib import Path

from .journal import fsync_path, JOURNAL, roll_back, ROLLBACK_FAILED, write_json_durably
from .staging import Staging
from .statefile import update_state_file
from .. import faults
from ..fileio import is_disk_full
from ..resolve import checkpoint_files
from ...errors import OutputError


def publish(staging: Staging, *, fsync: bool = True, replace: bool = False) -> str:
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
    if fsync:
        for f in new_files:
            fsync_path(f)
    new_data = [f for f in new_files if f != new_index]
    old_dir = staging.path / "previous"
    old_dir.mkdir(exist_ok=True)
    old_files.sort(key=lambda f: not f.name.endswith(".index"))  # index first: dest reads as absent
    write_json_durably(staging.path / JOURNAL, {
        "destination": str(dest),
        "new_index": new_index.name,
        "new_data": [f.name for f in new_data],
        "previous": [f.name for f in old_files],
    }, fsync)
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
        if fsync:
            fsync_path(dest.parent)
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
    return roll_back(staging.path) is not ROLLBACK_FAILED
