"""Run a plan: read input tensors, transform them, stream them to the writer.

This is the only place where tensor data flows.  The plan's entries are
taken in batches of at most the memory budget; each batch is read (its
unchanged tensors in one ``RestoreV2`` call per source, as TF tensors that
go to ``SaveV2`` without a numpy copy; the others through :func:`produce`)
and handed to the writer as one group, which a worker saves while the next
batch is read.  Memory is set by the budget and the largest tensor, never
by the model.  On the byte path, unchanged tensors are copied as bytes and
computed ones that allow it are computed chunk by chunk from their inputs'
bytes (:mod:`ckptsurgery.execute.chunked`), in about one budget whatever their size.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..text.progress import progress_bar
from ..dtypes import FLOATING, dtype_name_of_array, numpy_dtype
from ..errors import BadCheckpointError, NonFiniteError, OutputError, PlanError, UsageError
from ..plan.objectgraph import checked_object_graph, rewrite_object_graph
from ..options import check_write_options
from ..plan.entries import OutputEntry, Plan, TensorRef
from ..io.reader import OBJECT_GRAPH_KEY, open_checkpoint
from ..io.fs import cache as readahead
from ..io.fs import is_remote
from ..plan.byte_path import byte_path_enabled, encode_object_graph, object_graph_raw, raw_tensor, read_object_graph
from ..plan.byte_path import chunk_plans
from ..plan.chunking import ChunkPlan
from ..io.bytecopy import RawTensor
from .chunked import InputShards, write_chunked
from ..transforms import apply_steps
from ..values import same_bits
from ..io.shard_writer import ShardWriter, resolve_destination
from ..options import DEFAULT_MEMORY_BUDGET
from ..text.sizes import parse_size


@dataclass
class WriteOptions:
    """How to write: shared by every command that writes a checkpoint."""

    memory_budget: int | str = DEFAULT_MEMORY_BUDGET
    force: bool = False
    workers: int = 1
    progress: bool | None = None  # None: a bar when stderr is a terminal
    verify: bool = False  # re-read every value after writing
    fsync: bool = True  # fsync before publishing
    allow_nonfinite: bool = True
    crc_check: bool = True  # check the CRC32C of every byte copied (see bytecopy)
    byte_path: bool | None = None  # None: unless CKPTSURGERY_BYTE_PATH=0; False: decode all through TF
    cluster: str | None = None  # "local[:N]": the groups run as tasks on an embedded Dask cluster (execute/cluster.py)
    scheduler: str | None = None  # a running Dask scheduler's address ("": $DASK_SCHEDULER_ADDRESS)


@dataclass
class WriteResult:
    """What was written, for the CLI's summary and ``--json``."""

    prefix: str
    tensors: int
    nbytes: int
    dropped: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"output": self.prefix, "tensors": self.tensors, "nbytes": self.nbytes, "dropped": self.dropped}


def produce(plan: Plan, entry: OutputEntry, already_read: dict[TensorRef, Any] | None = None) -> np.ndarray:
    """Compute one output tensor's value (read, combine, transform).

    One input: read it.  Several inputs (``average``, ``merge``): the merge
    method combines them in float64, reading them one at a time where the
    method allows (see :mod:`ckptsurgery.execute.accumulate`), and the result is cast
    back to the inputs' dtype (bfloat16 and float16 included) before ``steps``.
    NaN/Inf are checked by the caller (:func:`execute`) unless allowed.
    ``already_read`` holds inputs the executor read ahead (see :func:`read_batch`).
    """

    def read(ref: TensorRef) -> np.ndarray:
        if already_read and ref in already_read:
            return np.asarray(already_read[ref])
        return plan.sources[ref.source].read(ref.name)

    if entry.method is None:
        if len(entry.inputs) != 1:
            raise PlanError(f"tensor {entry.name!r}: {len(entry.inputs)} inputs but no merge method to combine them")
        value = read(entry.inputs[0])
    else:
        from .accumulate import combine, narrow_in_place

        last = entry.inputs[-1]
        source_dtype = plan.sources[last.source].info(last.name).dtype
        out_dtype = numpy_dtype(source_dtype)
        value = narrow_in_place(combine(entry, read, out_dtype), out_dtype)
    value = apply_steps(value, entry.steps, entry.name)
    if dtype_name_of_array(value) != entry.dtype:
        value = value.astype(numpy_dtype(entry.dtype))
    if tuple(value.shape) != tuple(entry.shape):
        raise BadCheckpointError(
            entry.inputs[0].source, f"read shape {list(value.shape)}, plan expects {list(entry.shape)}", entry.name
        )
    return value


def is_passthrough(entry: OutputEntry) -> bool:
    """An entry whose value is one input tensor unchanged (a copy, a rename, a transfer)."""
    return entry.passthrough


def saved_parts(plan: Plan, entry: OutputEntry) -> list[str]:
    """The parts of an unchanged TF1 partitioned variable, to stream one by one ([] otherwise).

    Copying part by part keeps the partitioning and never holds the whole
    variable, which is often the model's largest (an embedding).
    """
    if not is_passthrough(entry):
        return []
    ref = entry.inputs[0]
    return plan.sources[ref.source].info(ref.name).slice_specs()


def batches(entries: list[OutputEntry], budget: int) -> Iterator[list[OutputEntry]]:
    """Consecutive entries whose input bytes add up to at most ``budget`` (a bigger one goes alone)."""
    batch: list[OutputEntry] = []
    size = 0
    for entry in entries:
        if batch and size + entry.nbytes_in > budget:
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry.nbytes_in
    if batch:
        yield batch


def prefetch(plan: Plan, batch: list[OutputEntry]) -> None:
    """Hint the kernel to read ``batch``'s input bytes ahead (see :meth:`Checkpoint.prefetch`)."""
    by_source: dict[str, list[str]] = {}
    for entry in batch:
        for ref in entry.inputs:
            by_source.setdefault(ref.source, []).append(ref.name)
    for alias, names in by_source.items():
        plan.sources[alias].prefetch(names)


def read_batch(
    plan: Plan, batch: list[OutputEntry], budget: int, pool: ThreadPoolExecutor
) -> dict[TensorRef, Any]:
    """Read a batch's inputs as TF tensors: one ``RestoreV2`` call per source, sources in parallel.

    Unchanged tensors then go to ``SaveV2`` without a numpy copy.  The inputs
    of computed entries are read here too when they fit the budget together;
    a bigger one (a batch of its own) is streamed input by input in :func:`produce`.
    """
    computed_fit = sum(e.nbytes_in for e in batch if not is_passthrough(e)) <= budget
    wanted: dict[str, dict[str, None]] = {}
    for entry in batch:
        if saved_parts(plan, entry):
            continue  # streamed part by part by the executor
        if is_passthrough(entry) or computed_fit:
            for ref in entry.inputs:
                wanted.setdefault(ref.source, {})[ref.name] = None

    def read_source(alias: str) -> list[tuple[TensorRef, Any]]:
        names = list(wanted[alias])
        return [(TensorRef(alias, n), t) for n, t in zip(names, plan.sources[alias].read_many(names))]

    return {ref: tensor for pairs in pool.map(read_source, wanted) for ref, tensor in pairs}


def copy_parts(plan: Plan, entry: OutputEntry, parts: list[str], writer: ShardWriter) -> None:
    """Stream a partitioned variable part by part, keeping its partitioning in the output."""
    ref = entry.inputs[0]
    source = plan.sources[ref.source]
    for spec in parts:
        part = source.read_slice(ref.name, spec)
        writer.add(entry.name, part, None, spec)  # the writer starts a new group when the budget is reached
        del part


def to_tensor(array: np.ndarray) -> Any:
    """A TF tensor holding ``array`` (one copy; the array can be freed at once)."""
    from .._tf import tf

    return tf().constant(array)


def working_set(entry: OutputEntry) -> int:
    """Bytes :func:`produce` holds for ``entry`` at its peak.

    A combined entry keeps a float64 accumulator, one input and the cast
    result; a transformed one keeps its input and its output.
    """
    if entry.method is not None:
        return entry.nbytes_out * 2 + max(entry.nbytes_in // len(entry.inputs), entry.nbytes_out) * 2
    return entry.nbytes_in + entry.nbytes_out


def _check_finite(entry: OutputEntry, value: Any) -> None:
    if entry.dtype not in FLOATING:
        return
    array = value if isinstance(value, np.ndarray) else value.numpy()
    if not np.all(np.isfinite(array if array.dtype.itemsize >= 4 else array.astype(np.float32))):  # f64 as is
        raise NonFiniteError(f"tensor {entry.name!r}: result has NaN or Inf (pass --allow-nonfinite to write it anyway)")


def write_batch(plan: Plan, batch: list[OutputEntry], writer: ShardWriter, *, raw: dict[str, RawTensor],
                chunked: dict[str, ChunkPlan], readers: ThreadPoolExecutor, chunk_shards: InputShards,
                allow_nonfinite: bool) -> None:
    """Hand one batch's entries to ``writer``: byte copies, chunked computations, decoded tensors.

    The one per-batch step, shared by the single-process loop (:func:`execute`) and a
    cluster's group task (:func:`ckptsurgery.execute.tasks.run_group_task`), so the
    same plan writes the same bytes on any engine.  ``raw`` and ``chunked`` are the
    plan's byte-path verdicts (:func:`~ckptsurgery.plan.byte_path.raw_tensor`,
    :func:`~ckptsurgery.plan.byte_path.chunk_plans`); everything else is read in one
    ``RestoreV2`` call per source and, when computed, goes through :func:`produce`.
    """
    decoded = [e for e in batch if e.name not in raw and e.name not in chunked]
    inputs = read_batch(plan, decoded, writer.budget, readers) if decoded else {}
    for entry in batch:
        if entry.name in raw:
            writer.add_raw(entry.name, raw[entry.name])
            continue
        if entry.name in chunked:
            write_chunked(plan, chunked[entry.name], writer, readers, chunk_shards, allow_nonfinite=allow_nonfinite)
            continue
        parts = saved_parts(plan, entry)
        if parts:
            copy_parts(plan, entry, parts, writer)
            continue
        if is_passthrough(entry):
            value = inputs[entry.inputs[0]]
        else:
            if working_set(entry) > writer.budget:
                writer.drain()  # a big computed tensor: its working set must not add to the groups in flight
            computed = produce(plan, entry, inputs)
            if not allow_nonfinite:
                _check_finite(entry, computed)
            # Hand SaveV2 its own copy now, so the group in flight holds no numpy
            # buffers (a narrowed accumulator is twice the tensor's size).
            value = to_tensor(computed)
            del computed
        writer.add(entry.name, value, entry.nbytes_out)
        del value
    del inputs


def execute(plan: Plan, dest: str | os.PathLike, options: WriteOptions | None = None,
            run_batches: Callable[..., None] | None = None) -> WriteResult:
    """Write ``plan`` to ``dest``; publish atomically or leave nothing behind.

    ``run_batches(plan, batches, writer, options, on_written)``: run the batches elsewhere and adopt
    the groups they wrote into ``writer`` (a Dask cluster: :mod:`ckptsurgery.execute.cluster`).
    """
    options = options or WriteOptions()
    if run_batches is None and (options.cluster is not None or options.scheduler is not None):
        raise UsageError("cluster/scheduler: call ckptsurgery.execute.cluster.write_or_plan (or the API), not execute")
    prefix = resolve_destination(dest, [c.prefix for c in plan.sources.values()], force=options.force)
    byte_path = byte_path_enabled(options.byte_path)
    raw = {e.name: r for e in plan.entries if byte_path and (r := raw_tensor(plan, e)) is not None}
    chunked = chunk_plans(plan) if byte_path else {}
    graph_raw = object_graph_raw(plan) if byte_path else None
    graph_bytes = None
    if plan.object_graph is not None:
        # Validated even when copied as bytes: the graph is input like any other.
        source_graph = checked_object_graph(plan.sources[plan.object_graph.source],
                                            read_object_graph(plan) if byte_path else None)
        if graph_raw is None:
            graph_bytes = rewrite_object_graph(source_graph, plan.object_graph.key_map)

    bar = progress_bar(plan.nbytes_out, options.progress, "writing")
    expected = {e.name: (e.dtype, tuple(e.shape)) for e in plan.entries}
    if plan.object_graph is not None:
        expected[OBJECT_GRAPH_KEY] = ("string", ())

    def check(merged_prefix: str) -> None:
        check_written(merged_prefix, expected)
        if options.verify:
            verify_values(plan, merged_prefix, raw=raw, chunked=chunked, budget=parse_size(options.memory_budget))

    readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ckptsurgery-read")
    chunk_shards = InputShards()
    try:
        with ShardWriter(prefix, memory_budget=options.memory_budget, workers=options.workers,
                         fsync=options.fsync, on_written=bar.update, check=check,
                         force=options.force, own_index=byte_path or run_batches is not None,
                         crc_check=options.crc_check, stage_on_store=run_batches is not None) as writer:
            all_batches = list(batches(plan.entries, writer.budget))
            readahead.set_limit(2 * writer.budget)  # remote sources: this batch and the next, fetched ahead
            if run_batches is not None:  # e.g. each batch a task on a Dask cluster; the groups come back as manifests
                run_batches(plan, all_batches, writer, options, bar.update)
                all_batches = []
            for number, batch in enumerate(all_batches):
                if number + 1 < len(all_batches):
                    # Not the local byte path's tensors: the kernel reads those itself, or shares their
                    # extents (reflink) without reading; a WILLNEED hint would read them here, blocking.
                    # Remote sources keep them: there the hint is a parallel fetch into the read-ahead cache.
                    prefetch(plan, [e for e in all_batches[number + 1]
                                    if e.name not in raw or is_remote(plan.sources[e.inputs[0].source].prefix)])
                write_batch(plan, batch, writer, raw=raw, chunked=chunked, readers=readers,
                            chunk_shards=chunk_shards, allow_nonfinite=options.allow_nonfinite)
                writer.flush()  # one batch, one group: memory is the batch read plus the group in flight
            if graph_raw is not None:
                writer.add_raw(OBJECT_GRAPH_KEY, graph_raw)
            elif graph_bytes is not None and byte_path:
                writer.add_encoded(OBJECT_GRAPH_KEY, *encode_object_graph(graph_bytes))
            elif graph_bytes is not None:
                writer.add(OBJECT_GRAPH_KEY, np.array(graph_bytes, dtype=object))
            published = writer.finish()
    finally:
        readers.shutdown(wait=True)
        chunk_shards.close()
        bar.close()
    return WriteResult(published, len(expected), plan.nbytes_out, [r.name for r in plan.dropped])


def write_or_plan(plan: Plan, dest: str | os.PathLike, dry_run: bool, *, allow_nonfinite: bool = True,
                  run_batches: Callable[..., None] | None = None, **options: Any) -> WriteResult | Plan:
    """What every command's API function ends with: the plan for ``dry_run``, else the written result.

    The options are checked by name and type, and the source's object graph is
    validated, before anything is written, dry runs included.
    """
    write = WriteOptions(**check_write_options(options), allow_nonfinite=allow_nonfinite)
    if dry_run:
        plan.byte_path = write.byte_path
        if plan.object_graph is not None:
            checked_object_graph(plan.sources[plan.object_graph.source],
                                 read_object_graph(plan) if byte_path_enabled(write.byte_path) else None)
        return plan
    return execute(plan, dest, write, run_batches)


def check_written(prefix: str, expected: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """The cheap check after every write: names, dtypes and shapes equal the plan."""
    written = open_checkpoint(prefix)
    got = {t.name: (t.dtype, t.shape) for t in written}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(n for n in set(got) & set(expected) if got[n] != expected[n])
        raise OutputError(
            f"{prefix}: written checkpoint differs from the plan "
            f"(missing {missing[:3]}, unexpected {extra[:3]}, wrong dtype/shape {wrong[:3]}); nothing published"
        )


def verify_values(plan: Plan, prefix: str, *, raw: dict[str, RawTensor] | None = None,
                  chunked: dict[str, ChunkPlan] | None = None, budget: int = 0) -> None:
    """``--verify``: recompute every planned tensor and compare it with what was written.

    Entries written by the byte path (``raw`` copies, ``chunked`` computations) are
    compared piece by piece within ``budget`` (:mod:`ckptsurgery.execute.verify_written`);
    the others are recomputed whole and read back through TensorFlow.
    """
    from .verify_written import WrittenBytes

    written = open_checkpoint(prefix)
    streamed = WrittenBytes(plan, written, budget or parse_size(DEFAULT_MEMORY_BUDGET)) if raw or chunked else None
    try:
        for entry in plan.entries:
            if streamed is not None and entry.name in (raw or {}):
                streamed.check_copied(entry, raw[entry.name])
            elif streamed is not None and entry.name in (chunked or {}):
                streamed.check_chunked(chunked[entry.name])
            else:
                _verify_whole(plan, written, prefix, entry)
    finally:
        if streamed is not None:
            streamed.close()


def _verify_whole(plan: Plan, written: Any, prefix: str, entry: OutputEntry) -> None:
    """One entry recomputed whole (:func:`produce`) and compared with its written value read through TF."""
    want = produce(plan, entry)
    try:
        got = written.read(entry.name)
    except BadCheckpointError as exc:  # e.g. copied bytes that fail their checksum
        raise OutputError(f"{prefix}: verification failed: tensor {entry.name!r} does not read back "
                          f"({exc.detail}); nothing published") from None
    if not same_bits(want, got):
        raise OutputError(f"{prefix}: verification failed: tensor {entry.name!r} differs from the plan")
