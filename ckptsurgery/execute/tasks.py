"""The executor's unit of work as a value: one group task, runnable anywhere that sees the staging folder.

A :class:`GroupTask` is one batch of the plan (output entries whose inputs
add up to at most the memory budget), the prefixes of the sources it reads,
the budget and the run's staging folder.  It is a plain picklable value, so
it runs the same in this process, in a thread, or as a Dask task on another
machine (:mod:`ckptsurgery.execute.cluster`).

:func:`run_group_task` reopens the sources with :func:`open_checkpoint`,
computes and copies the entries with the same code as the single-process
executor (:func:`~ckptsurgery.execute.executor.produce`, the byte path's
:func:`~ckptsurgery.plan.byte_path.raw_tensor` + bytecopy, ``SaveV2``), and
writes them into a folder of its own inside the staging folder, named
per attempt (``task-00007-<uuid>``; for a remote destination the staging
folder is on its store, :mod:`ckptsurgery.io.publish.store_staging`, and the
groups are written there through gfile): a worker killed halfway leaves a
half-written attempt that never collides with its retry, and that goes
away with the staging folder.  It returns a :class:`GroupManifest` (each
written data file with the index entries of what it holds: names, dtypes,
shapes, sizes, CRC32C); the coordinator merges the manifests and
publishes.  A task never takes the destination lock and never publishes.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..errors import OutputError
from ..io.index import IndexEntry, read_index
from ..io.fs import filesystem, is_remote, join
from ..io.publish.store_staging import staging_visible
from ..io.reader import Checkpoint, open_checkpoint
from ..io.shard_writer import ShardWriter
from ..plan.byte_path import chunk_plans, raw_tensor
from ..plan.entries import OutputEntry, Plan

if TYPE_CHECKING:
    from ..io.bytecopy import RawTensor


#: Seconds between two checks, while copying tensors, that a remote staging folder still exists.
STORE_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class GroupTask:
    """One batch of the plan as a self-contained, picklable unit of work."""

    number: int  # the batch's place in the plan: manifests are merged in this order
    sources: dict[str, str]  # alias -> checkpoint prefix, reopened where the task runs
    entries: tuple[OutputEntry, ...]
    staging: str  # the run's staging folder (on storage every worker reaches)
    memory_budget: int
    byte_path: bool = True
    crc_check: bool = True
    allow_nonfinite: bool = True
    fsync: bool = True

    @property
    def nbytes_out(self) -> int:
        return sum(e.nbytes_out for e in self.entries)


@dataclass
class GroupManifest:
    """What one task wrote: per group, its data file's prefix and index entries (no tensor data)."""

    number: int
    groups: list[tuple[str, list[IndexEntry]]] = field(default_factory=list)
    metadata: list[IndexEntry] = field(default_factory=list)  # partitioned variables' full entries
    nbytes: int = 0
    where: str = ""  # host:pid that ran the attempt, for messages

    @property
    def data_files(self) -> list[str]:
        return [prefix + ".data-00000-of-00001" for prefix, _ in self.groups]


class _AttemptFolder:
    """Stands in for :class:`~ckptsurgery.io.publish.staging.Staging` inside a task: group prefixes
    under the attempt's own folder (a local path, or a URL on the destination's store); removed
    when the attempt fails."""

    def __init__(self, path: str):
        self.path = path

    def group_prefix(self, index: int) -> str:
        return join(join(self.path, f"group-{index:05d}"), "part")

    def remove(self) -> None:
        filesystem(self.path).rmtree(self.path)


class TaskWriter(ShardWriter):
    """A :class:`ShardWriter` that writes one task's groups into its attempt folder and, instead of
    merging and publishing, hands back their index entries (:meth:`manifest`).  No lock: the
    coordinator holds the destination lock for the whole run."""

    def __init__(self, attempt: str, staging: str, **options: Any):
        super().__init__(join(attempt, "part"), own_index=True, **options)
        self.attempt = attempt
        self.staging_path = staging
        self._checked = float("-inf")  # when check_staging last passed

    def open(self) -> None:
        self.check_staging()
        try:
            if is_remote(self.attempt):
                filesystem(self.attempt).makedirs(self.attempt)  # on the destination's store
            else:
                os.mkdir(self.attempt)  # not makedirs: never re-create a staging folder that went away
        except OSError as exc:
            raise OutputError(f"{self.attempt}: cannot create the task's folder in the staging folder: "
                              f"{exc.strerror or exc}") from None
        self._staging = _AttemptFolder(self.attempt)  # type: ignore[assignment]
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ckptsurgery-save")

    def check_staging(self) -> None:
        """Fail with one line when this worker cannot see the run's staging folder (or it is gone:
        the run ended), so no task writes outside a folder the coordinator and ``clean`` own."""
        if not staging_visible(self.staging_path):
            raise OutputError(f"{self.staging_path}: the staging folder is not visible from worker "
                              f"{socket.gethostname()} (pid {os.getpid()}); with a cluster the staging folder goes "
                              "beside the destination, which every worker must reach (a shared mount, or the "
                              "same gs:// bucket)")

    def flush(self) -> None:
        if self._group:
            self.check_staging()
        super().flush()

    def add_raw(self, name: str, raw: "RawTensor") -> None:
        # A stat per tensor (a run that ended meanwhile gets no folders re-created); on a remote store,
        # where a stat is a round trip, at most one per STORE_CHECK_SECONDS.
        now = time.monotonic()
        if not is_remote(self.staging_path) or now - self._checked >= STORE_CHECK_SECONDS:
            self.check_staging()
            self._checked = now
        super().add_raw(name, raw)

    def manifest(self, number: int) -> GroupManifest:
        """Save what is left and describe every group written (read from the groups' own indexes)."""
        self.flush()
        self._wait()
        out = GroupManifest(number, where=f"{socket.gethostname()}:{os.getpid()}")
        if self._raw is not None:
            self._raw.close_group()
            self._raw.close_files()
            out.metadata = list(self._raw.metadata)
        for group, prefix in enumerate(self._prefixes):
            if self._raw is not None and group in self._raw.entries:
                entries = list(self._raw.entries[group])
            else:
                index = read_index(prefix)
                if index.num_shards != 1:
                    raise OutputError(f"{prefix}: a saved group has {index.num_shards} data shards, expected 1")
                entries = list(index.data_entries()) + [e for e in index.entries.values() if not e.has_data]
            out.groups.append((prefix, [replace(e, shard_id=0) for e in entries]))
            out.nbytes += sum(e.size for e in entries if e.has_data)
        self.close()
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._staging = None  # the files stay: the coordinator adopts them

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


@lru_cache(maxsize=64)
def _open_cached(prefix: str, stamp: tuple[int, int]) -> Checkpoint:
    return open_checkpoint(prefix)


def reopen(prefix: str) -> Checkpoint:
    """``open_checkpoint(prefix)``, cached per worker process while the index file is unchanged
    (a worker runs many tasks of the same sources; the index is parsed once)."""
    try:
        st = os.stat(prefix + ".index")
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        return open_checkpoint(prefix)  # not a plain bundle prefix (TF1 V1 file...): let open report
    return _open_cached(prefix, stamp)


def make_tasks(plan: Plan, batches: list[list[OutputEntry]], staging: str, budget: int, *, byte_path: bool,
               crc_check: bool, allow_nonfinite: bool, fsync: bool) -> list[GroupTask]:
    """One task per batch; sources travel as prefixes, never as open readers."""
    prefixes = {alias: ckpt.prefix for alias, ckpt in plan.sources.items()}
    return [GroupTask(number, {a: prefixes[a] for a in {r.source for e in batch for r in e.inputs}}, tuple(batch),
                      staging, budget, byte_path, crc_check, allow_nonfinite, fsync)
            for number, batch in enumerate(batches)]


def run_group_task(task: GroupTask) -> GroupManifest:
    """Run one task where it is called (a Dask worker, a thread, this process); see the module doc."""
    from .chunked import InputShards
    from .executor import write_batch

    plan = Plan({alias: reopen(prefix) for alias, prefix in task.sources.items()}, list(task.entries))
    raw = {e.name: r for e in plan.entries if task.byte_path and (r := raw_tensor(plan, e)) is not None}
    chunked = chunk_plans(plan) if task.byte_path else {}
    attempt = join(task.staging, f"task-{task.number:05d}-{uuid.uuid4().hex[:8]}")
    readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ckptsurgery-read")
    chunk_shards = InputShards()
    try:
        with TaskWriter(attempt, task.staging, memory_budget=task.memory_budget, fsync=task.fsync,
                        crc_check=task.crc_check) as writer:
            write_batch(plan, plan.entries, writer, raw=raw, chunked=chunked, readers=readers,
                        chunk_shards=chunk_shards, allow_nonfinite=task.allow_nonfinite)
            return writer.manifest(task.number)
    finally:
        readers.shutdown(wait=True)
        chunk_shards.close()
