"""Raw groups on a remote store: a data shard written in order through :mod:`ckptsurgery.io.fs`.

The byte path's :class:`~ckptsurgery.io.bytecopy.ShardOutput` is a local file
descriptor (``pwrite``, ``copy_file_range``).  A cluster run to a remote
destination stages on the destination's store (see
:mod:`ckptsurgery.io.publish.store_staging`), so a task's raw groups are
written there: appended chunk by chunk to one object, which appears whole
when closed.  No ``copy_file_range`` (``device`` is None), so the byte copier
streams the bytes through the task and checks their CRC32C on the way.
"""

from __future__ import annotations

import os
from pathlib import Path

from .bytecopy import ShardOutput
from .fs import dirname, filesystem, is_remote


class StoreShardOutput:
    """One output data shard on a remote store, appended to in order (what an object write allows)."""

    device = None  # never copy_file_range: the bytes stream through and are checked on the way
    fd = -1

    def __init__(self, path: str):
        self.path = path
        fs = filesystem(path)
        fs.makedirs(dirname(path))
        self._writer = fs.open_writer(path)
        self.size = 0

    def write(self, data: bytes) -> None:
        self._writer.write(bytes(data))
        self.size += len(data)

    def read(self, offset: int, size: int) -> bytes:
        raise OSError(f"{self.path}: a remote shard being written cannot be read back")

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()  # the object appears now, whole


def open_shard_output(path: str) -> "ShardOutput | StoreShardOutput":
    """A data shard opened for appending, local or on a remote store; its folder is created first."""
    if is_remote(path):
        return StoreShardOutput(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return ShardOutput(os.fspath(path))
