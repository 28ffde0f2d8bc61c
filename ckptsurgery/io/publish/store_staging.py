"""Staging on the destination's own store, for cluster runs to a remote destination (``gs://``, ``ram://``...).

A single-process run to a remote destination builds the checkpoint in a
local staging folder and uploads it once (:mod:`.remote`).  A cluster run
cannot: its workers, on other machines, write the groups, and they do not
see the coordinator's temp folder.  So the staging folder goes beside the
destination, on the store itself, named and marked as a local one is
(``.ckptsurgery-staging-NAME-HEX/CKPTSURGERY_STAGING``), so ``clean`` finds
it.  Tasks write their attempt folders inside it (``SaveV2`` writes gfile
URLs natively; raw groups go through :class:`StoreShardOutput`); the
coordinator's merge moves the data files into ``merged/`` and writes the
index there, and :func:`~.remote.publish_remote` moves them into place with
the store's own rename (server-side: no byte goes through the coordinator),
in the order and with the guarantees that module documents.

What the store must offer: every worker and the coordinator reach it under
the same URL, a file written and closed is visible to every other client
(Cloud Storage: strong read-after-write), and ``tf.io.gfile`` rename/copy.

Liveness: the marker records the owner id of the run's lock object
(:class:`~.remote.RemoteLock`); the folder belongs to a live run only while
that lock names the same owner with an unexpired lease.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

from ..fs import basename, dirname, filesystem, join
from .remote import LOCK_SUFFIX, lock_alive, names_in, read_lock
from .staging import MARKER, STAGING_PREFIX
from ...errors import OutputError


class StoreStaging:
    """A marked staging folder beside a remote destination, on its store (same interface as
    :class:`~.staging.Staging`; ``path`` is a URL string)."""

    def __init__(self, dest_prefix: str, owner: str):
        self.dest_prefix = dest_prefix
        self.owner = owner  # the run's lock owner id: its liveness is this folder's
        self.path = join(dirname(dest_prefix), f"{STAGING_PREFIX}{basename(dest_prefix)}-{uuid.uuid4().hex[:8]}")

    def create(self) -> "StoreStaging":
        fs = filesystem(self.path)
        try:
            fs.makedirs(self.path)
            fs.write_bytes(join(self.path, MARKER), json.dumps({
                "owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "created": time.time(),
                "destination": self.dest_prefix,
            }).encode())
        except OSError as exc:
            fs.rmtree(self.path)
            raise OutputError(f"{self.path}: cannot create the staging folder on the destination's store: "
                              f"{exc.strerror or exc}") from None
        return self

    def group_prefix(self, index: int) -> str:
        return f"{self.path}/group-{index:05d}/part"

    @property
    def merged_prefix(self) -> str:
        return f"{self.path}/merged/{basename(self.dest_prefix)}"

    def remove(self) -> None:
        """Delete the folder with every task attempt (a publish never needs it for recovery:
        its journal and the destination's files are enough)."""
        filesystem(self.path).rmtree(self.path)


def staging_visible(path: str) -> bool:
    """Can this process see the run's staging folder (its marker) on whatever filesystem holds it?"""
    try:
        return filesystem(path).isfile(join(path, MARKER))
    except OSError:
        return False


def store_stagings(folder: str, destination: str | None, *, only_dead: bool,
                   locked: bool = False) -> list[tuple[str, str]]:
    """Our staging folders in remote ``folder`` (for ``destination`` only, if given): ``(path, "live"|"dead")``.

    Folders named like ours without our marker are not listed.  With
    ``locked`` the caller holds ``destination``'s lock, so its stagings are
    dead runs'; with ``only_dead`` False every one counts as dead.
    """
    fs = filesystem(folder)
    found = []
    for name in names_in(folder):
        if not name.startswith(STAGING_PREFIX):
            continue
        path = join(folder, name)
        try:
            marker = json.loads(fs.read_bytes(join(path, MARKER)))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if not isinstance(marker, dict) or not isinstance(marker.get("destination"), str):
            continue
        dest = marker["destination"]
        if dirname(dest) != folder or (destination is not None and dest != destination):
            continue
        held = read_lock(dest + LOCK_SUFFIX)
        live = (only_dead and not locked and held is not None and held.get("owner") == marker.get("owner")
                and lock_alive(held))
        found.append((path, "live" if live else "dead"))
    return found
