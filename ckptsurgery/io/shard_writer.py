"""The one writer: budget-sized ``SaveV2`` groups, ``MergeV2Checkpoints``, atomic publish.

(Over 400 lines, on purpose: :class:`ShardWriter` is one state machine (groups in flight, raw
groups, the final index, publish); splitting it would spread that state over several modules.)

Tensors arrive one at a time.  They are collected into a *group* until the
group would exceed the memory budget; the full group is handed to a worker
thread that saves it with TensorFlow's ``SaveV2`` op into its own staging
prefix, while the caller goes on reading the next group.  Each group is an
independent unit (its own op call, its own files), so groups can run in
parallel threads now and on separate workers later.  At most ``workers``
groups are in flight, so peak memory is about ``(workers + 1) x budget``
plus the largest single tensor, whatever the model's size.

``finish`` merges the group prefixes into one checkpoint with
``MergeV2Checkpoints`` (a metadata merge: data files are renamed, not
copied), checks the result against what was added, and publishes it
atomically (see :mod:`ckptsurgery.io.publish`).

On the byte path (``own_index=True``) unchanged tensors arrive as byte
ranges of an input shard (:meth:`ShardWriter.add_raw`): they are copied into
*raw groups*, data shards of at most a budget each, written by the caller's
thread in chunks while the ``SaveV2`` groups save in the workers.  ``finish``
then writes the final index itself (:mod:`ckptsurgery.io.index_writer`): the
raw groups' entries and those of the ``SaveV2`` groups' own indexes, every
data file renamed to its final shard number; no ``MergeV2Checkpoints``, and
no TensorFlow at all when every tensor was copied as bytes.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from .._tf import tf
from . import faults
from ..dtypes import dtype_name_of_array
from ..errors import BadCheckpointError, CkptSurgeryError, OutputError, first_line
from .index import IndexEntry, data_filename, encode_slice_key, read_index
from .index_writer import write_index
from .bytecopy import (ChecksumMismatch, DeferredCheckFailure, ReadBackChecks, ShardInput, ShardOutput,
                       SourceReadError, copy_entry_bytes, crc32c_extend)
from .table import mask
from .fileio import DONTNEED, advise
from ..options import DEFAULT_MEMORY_BUDGET
from .fileio import is_disk_full
from .publish.clean import recover_destination
from .publish.commit import publish
from .publish.lock import DestinationLock
from .publish.staging import Staging
from .publish.remote import RemoteLock, publish_remote
from .fs import absolute, basename, dirname, filesystem, is_remote, join, normalize
from .resolve import checkpoint_files
from .store_output import open_shard_output
from .publish.store_staging import StoreStaging
from ..text.sizes import parse_size

if TYPE_CHECKING:
    from .bytecopy import RawTensor



def resolve_destination(dest: str | os.PathLike, source_prefixes: list[str], *, force: bool) -> str:
    """Check the destination prefix before any work starts.

    A folder (existing, or written with a trailing slash) gets the first
    source's base name inside it.  A destination that is one of the inputs
    is refused always; an existing checkpoint is refused unless ``force``.
    """
    text = normalize(dest)
    if is_remote(text):
        return _resolve_remote_destination(text, source_prefixes, force=force)
    if text.endswith(os.sep) or Path(text).is_dir():
        text = os.path.join(text, os.path.basename(source_prefixes[0]) if source_prefixes else "ckpt")
    prefix = os.path.abspath(text)
    for src in source_prefixes:
        if os.path.realpath(src) == os.path.realpath(prefix):
            raise OutputError(f"{prefix}: destination is one of the inputs; write elsewhere (inputs are never modified)")
    # A run killed mid-publish may have left the previous checkpoint in its staging
    # folder, or orphan data shards here: put things back before judging what exists.
    recover_destination(prefix)
    if checkpoint_files(prefix) and not force:
        raise OutputError(f"{prefix}: a checkpoint already exists here; pass --force to replace it")
    parent = Path(prefix).parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{parent}: destination folder is a file")
    faults.at("destination-checked")  # checked without the lock: publish checks again under it
    return prefix


def _resolve_remote_destination(text: str, source_prefixes: list[str], *, force: bool) -> str:
    """:func:`resolve_destination` for a URL (recovery of dead runs happens under the lock, at open)."""
    fs = filesystem(text)
    try:
        if text.endswith("/") or (fs.isdir(text) and not checkpoint_files(text)):
            text = join(text.rstrip("/"), basename(source_prefixes[0]) if source_prefixes else "ckpt")
        exists = fs.isfile(text + ".index")  # data shards without an index are no checkpoint (a dead run's?)
    except OSError as exc:
        raise OutputError(f"{text}: cannot read the destination: {exc.strerror or exc}") from None
    if text in source_prefixes:
        raise OutputError(f"{text}: destination is one of the inputs; write elsewhere (inputs are never modified)")
    if exists and not force:
        raise OutputError(f"{text}: a checkpoint already exists here; pass --force to replace it")
    faults.at("destination-checked")
    return text


class ShardWriter:
    """Write tensors in streaming, budget-sized shards; publish atomically on ``finish``.

    Use as a context manager so a failure removes the staging folder::

        with ShardWriter("out/model.ckpt", memory_budget="256MB") as writer:
            for name, array in tensors:
                writer.add(name, array)
            writer.finish()
    """

    def __init__(
        self,
        dest_prefix: str,
        *,
        memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
        workers: int = 1,
        fsync: bool = True,
        on_written: Callable[[int], None] | None = None,
        check: Callable[[str], None] | None = None,
        force: bool = False,
        own_index: bool = False,
        crc_check: bool = True,
        stage_on_store: bool = False,
    ):
        self.dest_prefix = absolute(dest_prefix)
        # A remote destination's staging goes on its store (not the local temp folder) when other
        # machines write the groups: a cluster run (see :mod:`.publish.store_staging`).
        self.stage_on_store = stage_on_store and is_remote(self.dest_prefix)
        self.force = force  # replace a checkpoint found at the destination when publishing
        self.budget = parse_size(memory_budget)
        self.workers = max(1, int(workers))
        self.fsync = fsync
        self._on_written = on_written or (lambda n: None)
        self._check = check
        self._created_folders: list[str] = []  # by open(), removed again if the run fails
        self._lock = RemoteLock(self.dest_prefix) if is_remote(self.dest_prefix) else DestinationLock(self.dest_prefix)
        self._staging: Staging | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: list[Future] = []
        self._group: list[tuple[str, Any, str]] = []
        self._group_bytes = 0
        self._prefixes: list[str] = []
        self._names: set[tuple[str, str]] = set()
        self.published: str | None = None
        self.own_index = own_index
        self.crc_check = crc_check
        self._raw: RawGroups | None = None

    # -- lifecycle --------------------------------------------------------
    def __enter__(self) -> "ShardWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.published is None:
            self.abort()

    def open(self) -> None:
        folder = dirname(self.dest_prefix)
        try:
            self._created_folders = filesystem(folder).makedirs(folder)
        except OSError as exc:
            raise _write_error(folder, exc) from None
        self._lock.acquire()
        try:
            recover_destination(self.dest_prefix, locked=True)  # dead runs' leftovers (we hold the lock)
            self._staging = (StoreStaging(self.dest_prefix, self._lock.owner) if self.stage_on_store  # type: ignore
                             else Staging(self.dest_prefix)).create()
        except BaseException:
            self._lock.release()
            raise
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ckptsurgery-save")

    def abort(self) -> None:
        """Stop, discard the staging folder, leave the destination as it was."""
        if self._raw is not None:
            self._raw.close_files()
        if self._pool is not None:
            for future in self._in_flight:
                future.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._staging is not None:
            self._staging.remove()
            self._staging = None
        self._lock.release()
        # A failed run leaves the destination as it found it: no empty folders of its own making.
        filesystem(dirname(self.dest_prefix)).remove_empty_folders(self._created_folders)
        self._created_folders = []

    # -- adding tensors -----------------------------------------------------
    def add(self, name: str, array: Any, nbytes: int | None = None, slice_spec: str = "") -> None:
        """Queue one tensor (numpy array or TF tensor); a full group is saved in the background.

        ``nbytes`` (the plan's size) saves counting a string tensor's bytes.
        ``slice_spec`` writes one part of a partitioned variable (TF's
        ``shape_and_slices`` syntax); its parts may land in different groups,
        and ``MergeV2Checkpoints`` joins them under one entry.
        """
        if (name, slice_spec) in self._names:
            raise OutputError(f"{self.dest_prefix}: tensor {name!r} written twice")
        self._names.add((name, slice_spec))
        nbytes = _array_nbytes(array) if nbytes is None else nbytes
        if self._group and self._group_bytes + nbytes > self.budget:
            self.flush()
        self._group.append((name, array, slice_spec))
        self._group_bytes += nbytes

    def add_raw(self, name: str, raw: "RawTensor") -> None:
        """Copy an unchanged tensor's bytes (``raw``, see :mod:`ckptsurgery.plan.byte_path`) under ``name``.

        Its CRC32C is checked while the bytes stream (unless ``crc_check`` is
        off); a mismatch refuses the input, and nothing is published.
        """
        if not self.own_index:
            raise OutputError(f"{self.dest_prefix}: byte copies need a writer that writes its own index")
        self._claim(name)
        self._raw_groups().add(name, raw)

    def add_encoded(self, name: str, entry: "IndexEntry", data: bytes) -> None:
        """Write a tensor we encoded ourselves (``entry`` gives dtype, shape, size and CRC32C)."""
        self._claim(name)
        self._raw_groups().add_encoded(name, entry, data)

    def add_stream(self, name: str, entry: "IndexEntry", chunks: "Iterable[np.ndarray]") -> None:
        """Write a tensor computed chunk by chunk (see :mod:`ckptsurgery.execute.chunked`).

        ``entry`` gives dtype, shape and size; the chunks are C-order pieces of
        the tensor, written as they come, their CRC32C extended chunk by chunk.
        """
        self._claim(name)
        self._raw_groups().add_stream(name, entry, chunks)

    def _claim(self, name: str) -> None:
        if (name, "") in self._names:
            raise OutputError(f"{self.dest_prefix}: tensor {name!r} written twice")
        self._names.add((name, ""))

    def _raw_groups(self) -> "RawGroups":
        assert self._staging is not None, "call open() first"
        if self._raw is None:
            self._raw = RawGroups(self)
        return self._raw

    def _new_group_prefix(self) -> str:
        """Reserve the next group number (raw and ``SaveV2`` groups share the numbering)."""
        assert self._staging is not None
        prefix = self._staging.group_prefix(len(self._prefixes))
        self._prefixes.append(prefix)
        return prefix

    def adopt_groups(self, groups: list[tuple[str, list[IndexEntry]]], metadata: list[IndexEntry] = ()) -> None:
        """Take in groups another process wrote inside our staging folder (a cluster task's manifest:
        each group's prefix, whose data file is ``PREFIX.data-00000-of-00001``, and its index
        entries); ``finish`` merges them like raw groups, in the order adopted."""
        raw = self._raw_groups()
        for prefix, entries in groups:
            self._prefixes.append(prefix)
            number = len(self._prefixes) - 1
            raw.entries[number] = [replace(e, shard_id=number) for e in entries]
            self._names.update((e.name, "") for e in entries if not e.is_slice)
        raw.metadata.extend(metadata)
        self._names.update((e.name, "") for e in metadata)

    @property
    def staging_folder(self) -> str:
        """The run's staging folder (cluster tasks write their groups inside it)."""
        assert self._staging is not None, "call open() first"
        return str(self._staging.path)

    def flush(self) -> None:
        """Hand the current group to a worker now (the caller's batch ends here).

        Called by the executor after each batch it read, so the group being
        saved and the batch being read are the only tensors in memory.
        """
        if not self._group:
            return
        assert self._pool is not None and self._staging is not None
        self._wait(keep=self.workers - 1)  # bound memory: at most `workers` groups in flight
        prefix = self._new_group_prefix()
        group, nbytes = self._group, self._group_bytes
        self._group, self._group_bytes = [], 0
        self._in_flight.append(self._pool.submit(self._save_group, prefix, group, nbytes))

    def _save_group(self, prefix: str, group: list[tuple[str, Any, str]], nbytes: int) -> None:
        tf_ = tf()
        names = [name for name, _, _ in group]
        try:
            # TF tensors (the copy path) go in as they are; numpy arrays are converted once.
            tensors = [array if tf_.is_tensor(array) else tf_.constant(array) for _, array, _ in group]
            tf_.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[spec for _, _, spec in group],
                               tensors=tensors)
            faults.at("group-saved")
        except Exception as exc:
            raise _write_error(self.dest_prefix, exc) from None
        if self.fsync:
            _start_writeback(prefix)
        self._on_written(nbytes)

    def drain(self) -> None:
        """Wait until every group handed to a worker is saved (frees their memory)."""
        self._wait()

    def _wait(self, keep: int = 0) -> None:
        while len(self._in_flight) > keep:
            future = self._in_flight.pop(0)
            future.result()

    # -- finishing ------------------------------------------------------------
    def finish(self) -> str:
        """Save the last group, merge, check, publish; returns the published prefix."""
        assert self._staging is not None, "call open() first"
        if not self._names:
            raise OutputError(f"{self.dest_prefix}: nothing to write")
        self.flush()
        self._wait()
        merged = self._staging.merged_prefix
        try:
            if self._raw is not None:
                self._raw.close_group()
                self._raw.close_files()
            faults.at("before-merge")
            if self.own_index:
                raw_entries, metadata = (self._raw.entries, self._raw.metadata) if self._raw else ({}, [])
                merge_groups(self._prefixes, raw_entries, merged, metadata)
            else:
                tf().raw_ops.MergeV2Checkpoints(
                    checkpoint_prefixes=self._prefixes, destination_prefix=merged, delete_old_dirs=True
                )
            faults.at("after-merge")
        except Exception as exc:
            raise _write_error(self.dest_prefix, exc) from None
        if self._check is not None:
            self._check(merged)
        try:
            if isinstance(self._lock, RemoteLock):
                self.published = publish_remote(self._staging, self._lock, replace=self.force)
            else:
                self.published = publish(self._staging, fsync=self.fsync, replace=self.force)
        except OSError as exc:
            raise _write_error(self.dest_prefix, exc) from None
        # Published: whatever happens now, the staging folder and the lock must go.
        try:
            faults.at("after-publish")
        except OSError as exc:
            raise OutputError(f"{self.published}: published, but cleaning up afterwards failed: "
                              f"{exc.strerror or exc}") from None
        finally:
            self._staging.remove()
            self._staging = None
            self._lock.release()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        return self.published


class RawGroups:
    """The byte path's data shards: unchanged tensors copied in, at most a budget per shard.

    One raw group is open at a time; it closes when the next tensor part would
    take it over the budget (a bigger part gets a group of its own), like a
    ``SaveV2`` group, so the output's shard layout does not depend on the path.
    """

    def __init__(self, writer: ShardWriter):
        self.writer = writer
        #: group number -> the index entries of the bytes copied into it (shard_id = group number)
        self.entries: dict[int, list[IndexEntry]] = {}
        #: entries with no bytes of their own: partitioned variables' full entries
        self.metadata: list[IndexEntry] = []
        self._out: ShardOutput | None = None
        self._group = -1
        self._inputs: dict[str, ShardInput] = {}
        #: read-back CRC32C checks running behind the copies (see copy_entry_bytes); waited for before
        #: a group's shard closes, so nothing unchecked is ever merged or published
        self._checks: ReadBackChecks | None = ReadBackChecks() if writer.crc_check else None

    def _output_for(self, size: int) -> ShardOutput:
        if self._out is not None and self._out.size and self._out.size + size > self.writer.budget:
            self.close_group()
        if self._out is None:
            prefix = self.writer._new_group_prefix()
            self._group = len(self.writer._prefixes) - 1
            self._out = open_shard_output(prefix + ".data-00000-of-00001")  # local, or on a remote store
            self.entries[self._group] = []
        return self._out

    def _input(self, path: str) -> ShardInput:
        if path not in self._inputs:
            self._inputs[path] = ShardInput(path)
        return self._inputs[path]

    def add(self, name: str, raw: "RawTensor") -> None:
        if raw.entry.slices:
            self.metadata.append(replace(raw.entry, name=name, key=name.encode("utf-8")))
        for part in raw.parts:
            key = encode_slice_key(name, part.slices[0]) if part.is_slice else name.encode("utf-8")
            path = raw.index.data_path(part.shard_id)
            try:
                out = self._output_for(part.size)
                offset = copy_entry_bytes(self._input(path), part, out, crc_check=self.writer.crc_check,
                                          checks=self._checks)
            except DeferredCheckFailure as exc:  # an earlier tensor's bytes, checked in the background
                raise self._copy_error(exc.source, exc.entry, exc.error) from None
            except (ChecksumMismatch, EOFError, SourceReadError, OSError) as exc:
                raise self._copy_error(path, part, exc) from None
            self.entries[self._group].append(replace(part, name=name, key=key, shard_id=self._group, offset=offset))
            self.writer._on_written(part.size)

    def _copy_error(self, path: str, part: IndexEntry, exc: BaseException) -> CkptSurgeryError:
        """The error for copying ``part`` from the data shard ``path`` (input at fault, or the destination)."""
        if isinstance(exc, ChecksumMismatch):
            return BadCheckpointError(path, f"tensor bytes fail their CRC32C check ({exc}): the checkpoint "
                                            "is corrupt; nothing was published", part.describe())
        if isinstance(exc, EOFError):
            return BadCheckpointError(path, f"{exc}: the data shard is truncated", part.describe())
        if isinstance(exc, SourceReadError):
            return BadCheckpointError(path, str(exc), part.describe())
        return _write_error(self.writer.dest_prefix, exc)  # writing (or reading back) the destination

    def wait_checks(self) -> None:
        """Wait for the background read-back checks; a failure becomes the error naming its tensor."""
        if self._checks is None:
            return
        try:
            self._checks.wait()
        except DeferredCheckFailure as exc:
            raise self._copy_error(exc.source, exc.entry, exc.error) from None

    def add_encoded(self, name: str, entry: "IndexEntry", data: bytes) -> None:
        try:
            out = self._output_for(len(data))
            offset = out.size
            out.write(data)
        except OSError as exc:
            raise _write_error(self.writer.dest_prefix, exc) from None
        self.entries[self._group].append(replace(entry, name=name, key=name.encode("utf-8"),
                                                 shard_id=self._group, offset=offset, size=len(data)))

    def add_stream(self, name: str, entry: "IndexEntry", chunks: "Iterable[np.ndarray]") -> None:
        out = self._output_for(entry.size)
        offset, crc = out.size, 0
        for chunk in chunks:
            data = np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)
            crc = crc32c_extend(crc, data)
            try:
                out.write(data)
            except OSError as exc:
                raise _write_error(self.writer.dest_prefix, exc) from None
            self.writer._on_written(data.size)
            del chunk, data  # free this chunk before the next is computed
        if out.size - offset != entry.size:
            raise OutputError(f"{self.writer.dest_prefix}: tensor {name!r}: computed {out.size - offset} bytes, "
                              f"expected {entry.size}; nothing published")
        self.entries[self._group].append(replace(entry, name=name, key=name.encode("utf-8"), shard_id=self._group,
                                                 offset=offset, crc32c=mask(crc)))

    def close_group(self) -> None:
        """Finish the open raw group: its shard is complete (the ``group-saved`` moment)."""
        if self._out is None:
            return
        self.wait_checks()
        path = self._out.path
        try:
            self._out.close()
            self._out = None
            faults.at("group-saved")
        except OSError as exc:
            raise _write_error(self.writer.dest_prefix, exc) from None
        if self.writer.fsync:
            advise(path, DONTNEED)

    def close_files(self) -> None:
        """Close every file descriptor (after finishing, or on abort)."""
        if self._checks is not None:  # its thread reads the open output: stop it first
            self._checks.close()
        if self._out is not None:
            self._out.close()
            self._out = None
        for shard in self._inputs.values():
            shard.close()
        self._inputs.clear()


def merge_groups(prefixes: list[str], raw_entries: dict[int, list[IndexEntry]], merged: str,
                 metadata: list[IndexEntry] = ()) -> None:
    """Join raw groups and ``SaveV2`` groups into one bundle at ``merged``, with our own index.

    Group ``i``'s data file becomes shard ``i`` of ``len(prefixes)``; a
    ``SaveV2`` group's entries come from its index (parsed and checked by
    :func:`~ckptsurgery.io.index.read_index`), a raw group's from
    ``raw_entries``.  The full entries of partitioned variables split over
    groups are joined (their slices listed once), as ``MergeV2Checkpoints`` does.
    """
    total = len(prefixes)
    fs = filesystem(merged)  # local; or a cluster run's staging on a remote store (server-side renames)
    fs.makedirs(dirname(merged))
    by_key: dict[bytes, IndexEntry] = {}

    def put(entry: IndexEntry) -> None:
        have = by_key.get(entry.key)
        if have is None:
            by_key[entry.key] = entry
        elif have.slices and entry.slices and not have.is_slice and not entry.is_slice:
            by_key[entry.key] = replace(have, slices=have.slices + tuple(s for s in entry.slices if s not in have.slices))
        else:
            raise OutputError(f"{merged}: tensor {entry.describe()!r} written twice")

    for entry in metadata:
        put(entry)
    for group, prefix in enumerate(prefixes):
        if group in raw_entries:
            entries = raw_entries[group]
        else:
            index = read_index(prefix)
            if index.num_shards != 1:
                raise OutputError(f"{prefix}: a saved group has {index.num_shards} data shards, expected 1")
            entries = [replace(e, shard_id=group) for e in index.data_entries()]
            entries += [e for e in index.entries.values() if not e.has_data]
        for entry in entries:
            put(entry)
        fs.rename(data_filename(prefix, 0, 1), data_filename(merged, group, total))
    write_index(merged, total, by_key.values())
    for prefix in prefixes:
        fs.rmtree(dirname(prefix))


def _start_writeback(prefix: str) -> None:
    """Start writing a saved group's data to disk now, without waiting for it.

    On Linux ``POSIX_FADV_DONTNEED`` starts asynchronous writeback of dirty
    pages (and drops clean ones from the cache), so by the time publish calls
    ``fsync`` most bytes are already on disk and the final wait is short.
    Only a hint: errors are ignored.
    """
    for path in Path(prefix).parent.glob(Path(prefix).name + ".data-*"):
        advise(path, DONTNEED)


def _dtype_name(array: Any) -> str:
    if isinstance(array, np.ndarray):
        return dtype_name_of_array(array)
    return array.dtype.name  # a TF tensor: TF's names are ours


def _array_nbytes(array: Any) -> int:
    if not isinstance(array, np.ndarray):  # a TF tensor
        if array.dtype.name != "string":
            return int(array.shape.num_elements()) * array.dtype.size
        array = array.numpy()
    if array.dtype == np.object_:
        return sum(len(x) for x in array.reshape(-1)) + 8 * array.size
    return array.nbytes


def _write_error(where: str, exc: BaseException) -> CkptSurgeryError:
    if isinstance(exc, CkptSurgeryError):
        return exc
    if is_disk_full(exc):
        return OutputError(f"{where}: disk full (no space left on device); nothing was published")
    message = getattr(exc, "message", None) or getattr(exc, "strerror", None) or str(exc)
    return OutputError(f"{where}: write failed: {first_line(message, type(exc).__name__)[:300]}")
