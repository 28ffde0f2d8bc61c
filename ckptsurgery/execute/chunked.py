"""Compute a tensor chunk by chunk from its inputs' byte ranges, and write it chunk by chunk.

For an entry :mod:`ckptsurgery.plan.chunking` marked *chunked* (a cast, a
resize of the first axis, a ``linear`` or ``task_arithmetic`` merge of
numeric tensors in little-endian V2 bundles), the executor does not read the
inputs through TensorFlow.  It reads row ranges of each input's data shard
(:meth:`~ckptsurgery.io.bytecopy.ShardInput.read`), views them as numpy arrays
(``np.frombuffer``), computes the output rows and hands them to the writer
(:meth:`~ckptsurgery.io.shard_writer.ShardWriter.add_stream`), which extends
the output's CRC32C chunk by chunk.  The next chunk's bytes are read in a
worker thread while this one is computed.

Bit-identical to the TF path by construction: each chunk goes through the
very functions :func:`~ckptsurgery.execute.executor.produce` applies to the
whole tensor (:func:`~ckptsurgery.execute.accumulate.combine` with its
float64 accumulation, :func:`~ckptsurgery.execute.accumulate.narrow_in_place`,
the ``cast`` transform), and these are elementwise.  A resize of the first
axis keeps the leading rows and draws its fill from one generator continued
from chunk to chunk (:func:`~ckptsurgery.transforms.random_fill`), so the
fill equals the one drawn whole.

Checks: each input's CRC32C covers its whole tensor, so it is extended over
the bytes as they are read (rows a slice drops are read for it too) and
compared once the tensor is done: a mismatch raises before anything is
published.  Always, ``--no-crc-check`` or not: that option skips checking
bytes *copied* (their corruption is carried with the original CRC32C and
stays detectable), while a computed tensor gets a fresh CRC32C that would
hide it, so its inputs are checked as TensorFlow's reader checks them.  NaN/Inf are checked on each output chunk when not allowed.

Memory: a chunk is sized so that the inputs being computed, those being read
ahead, the float64 accumulator and the step results fit the budget together.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import numpy as np

from ..dtypes import FLOATING, dtype_name_of_array, numpy_dtype
from ..errors import BadCheckpointError, NonFiniteError
from ..io.bytecopy import CHUNK as READ_PIECE
from ..io.bytecopy import ChecksumMismatch, ShardInput, SourceReadError
from ..io.bytestream import TensorBytes
from ..io.index import IndexEntry, dtype_enum, dtype_name
from ..io.shard_writer import ShardWriter
from ..plan.chunking import ChunkInput, ChunkPlan
from ..plan.entries import Plan, TensorRef
from ..transforms import TRANSFORMS, fill_as, fill_rng, random_fill
from .accumulate import combine, narrow_in_place

#: float64 draws per step when skipping a random fill's kept rows (8 MB)
_SKIP_PIECE = 1 << 20


class InputShards:
    """Input data shards kept open for a whole run, so a model of many small tensors opens each file once.

    One tensor's inputs are read in parallel, so each of its inputs gets a
    shard of its own: the n-th input of a tensor that lives in a file takes
    that file's n-th open shard.  Tensors are computed one after another, so
    no shard is read by two threads at once.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], ShardInput] = {}

    #: open shards kept at most (beyond, those the current tensor does not use are closed): a file-descriptor bound
    MAX_OPEN = 64

    def for_inputs(self, inputs: tuple[ChunkInput, ...]) -> list[dict[str, ShardInput]]:
        """For each input, its data shards by path (a partitioned input's parts may span several)."""
        seen: dict[str, int] = {}
        wanted: list[dict[str, tuple[str, int]]] = []
        for source in inputs:
            keys = {}
            for _, path in source.segments:
                if path not in keys:
                    keys[path] = (path, seen.get(path, 0))
                    seen[path] = keys[path][1] + 1
            wanted.append(keys)
        needed = {key for keys in wanted for key in keys.values()}
        if len(self._open) + len(needed) > self.MAX_OPEN:
            for key in [k for k in self._open if k not in needed]:
                self._open.pop(key).close()
        for source, keys in zip(inputs, wanted):
            for path, key in keys.items():
                if key not in self._open:
                    try:
                        self._open[key] = ShardInput(path)
                    except SourceReadError as exc:
                        raise BadCheckpointError(path, str(exc), source.entry.name) from None
        return [{path: self._open[key] for path, key in keys.items()} for keys in wanted]

    def close(self) -> None:
        for shard in self._open.values():
            shard.close()
        self._open.clear()


def write_chunked(plan: Plan, chunk_plan: ChunkPlan, writer: ShardWriter, pool: ThreadPoolExecutor,
                  shards: InputShards, *, allow_nonfinite: bool = True) -> None:
    """Compute ``chunk_plan``'s entry chunk by chunk into ``writer``; ``pool`` reads ahead."""
    entry = chunk_plan.entry
    if entry.nbytes_in + entry.nbytes_out > writer.budget:
        writer.drain()  # a big tensor: its chunks must not add to the groups in flight
    out = IndexEntry(entry.name, dtype_enum(entry.dtype), tuple(entry.shape), 0, 0, entry.nbytes_out, 0)
    rows = chunk_rows(chunk_plan, writer.budget)
    chunks = output_chunks(plan, chunk_plan, rows, pool, shards, allow_nonfinite=allow_nonfinite)
    try:
        writer.add_stream(entry.name, out, chunks)
    finally:
        chunks.close()  # a failed write stops the reads now, not when the generator is collected


def chunk_rows(chunk_plan: ChunkPlan, budget: int) -> int:
    """Rows per chunk so that one chunk's working set fits ``budget`` (at least one row).

    Per element: each input twice (the rows computed, the rows read ahead);
    for a merge, the float64 accumulator (narrowed in place; its float64
    temporary is bounded by :data:`~ckptsurgery.merge_methods.streaming.CHUNK`
    elements, not by the chunk); and two step results of the widest dtype
    involved when there are steps or no merge.  Counted this way the working
    set is one budget whatever the number of inputs, so averaging 16
    checkpoints takes the memory of averaging 2.
    """
    entry = chunk_plan.entry
    sizes = [numpy_dtype(dtype_name(i.entry.dtype)).itemsize for i in chunk_plan.inputs]
    widest = max(sizes + [numpy_dtype(entry.dtype).itemsize])
    per_element = 2 * sum(sizes) + (8 if entry.method else 0) + (2 * widest if entry.steps or not entry.method else 0)
    return max(1, budget // (per_element * max(1, chunk_plan.row_elements)))


class _InputRows:
    """One input read row range after row range, in order.

    Its bytes are one range of a data shard, or, for a variable partitioned
    along its first axis, its parts' ranges one after the other;
    :class:`~ckptsurgery.io.bytestream.TensorBytes` reads them and compares
    each range's CRC32C as soon as its last byte is read (always: a computed
    tensor gets a fresh CRC32C that would hide corrupt input).
    """

    def __init__(self, source: ChunkInput, shards: dict[str, ShardInput], row_elements: int):
        self.entry = source.entry
        self.bytes = TensorBytes(list(source.segments), shards)
        self.row_bytes = row_elements * numpy_dtype(dtype_name(self.entry.dtype)).itemsize

    @property
    def path(self) -> str:
        """The data shard being read (or at fault), for messages."""
        return self.bytes.path

    def read(self, start_row: int, end_row: int) -> bytes:
        """The bytes of rows ``[start_row, end_row)`` (called in order, by one thread at a time)."""
        assert start_row * self.row_bytes == self.bytes.position, "rows are read in order"
        return self.bytes.take((end_row - start_row) * self.row_bytes)

    def finish(self) -> None:
        """Read what no chunk needed (rows a slice drops) for the CRC32C, and compare the last ranges'."""
        self.bytes.check(READ_PIECE)


class _Fill:
    """The fill rows of one resize step, drawn in order from one generator (see :func:`random_fill`)."""

    def __init__(self, init: str, seed: int, tensor_name: str, row_shape: tuple[int, ...], row_elements: int):
        self.init = init
        self.kind = init.partition(":")[0]
        self.rng = fill_rng(seed, tensor_name) if self.kind != "zeros" else None
        self.tensor_name = tensor_name
        self.row_shape = row_shape
        self.row_elements = row_elements
        self.drawn = 0  # elements of the whole stage's draw consumed so far

    def rows(self, start: int, end: int, dtype: np.dtype) -> np.ndarray:
        shape = (end - start, *self.row_shape)
        if self.rng is None:
            return np.zeros(shape, dtype=dtype)
        skip = start * self.row_elements - self.drawn  # the kept rows' draws, discarded as make_fill does
        while skip > 0:
            piece = min(skip, _SKIP_PIECE)
            random_fill(self.rng, self.init, piece)
            skip -= piece
        count = (end - start) * self.row_elements
        self.drawn = end * self.row_elements
        return fill_as(random_fill(self.rng, self.init, count), dtype, self.init, self.tensor_name).reshape(shape)


def output_chunks(plan: Plan, chunk_plan: ChunkPlan, rows: int, pool: ThreadPoolExecutor, shards: InputShards, *,
                  allow_nonfinite: bool = True) -> Iterator[np.ndarray]:
    """The output tensor in C-order chunks of ``rows`` rows; raises before its end on bad input."""
    entry = chunk_plan.entry
    streams = [_InputRows(source, files, chunk_plan.row_elements)
               for source, files in zip(chunk_plan.inputs, shards.for_inputs(chunk_plan.inputs))]
    pending: list[Future] = []
    try:
        stage_rows = [chunk_plan.rows]  # rows after each step
        fills: dict[int, _Fill] = {}
        for number, step in enumerate(entry.steps):
            if step.op == "resize":
                stage_rows.append(_stage_rows(tuple(step.params["shape"]), chunk_plan))
                fills[number] = _Fill(str(step.params.get("init", "zeros")), int(step.params.get("seed", 0)),
                                      entry.name, chunk_plan.row_shape, chunk_plan.row_elements)
            else:
                stage_rows.append(stage_rows[-1])
        last = entry.inputs[-1]
        first_dtype = numpy_dtype(plan.sources[last.source].info(last.name).dtype)
        in_dtypes = [numpy_dtype(dtype_name(s.entry.dtype)) for s in streams]
        out_dtype = numpy_dtype(entry.dtype)

        def fetch(start: int) -> list[Future]:
            if start >= chunk_plan.rows:
                return []
            end = min(start + rows, chunk_plan.rows)
            if chunk_plan.rows <= rows:  # one chunk: nothing to overlap, a thread hand-off only costs
                return [_done(_checked(lambda: stream.read(start, end), stream, entry.name)) for stream in streams]
            return [pool.submit(stream.read, start, end) for stream in streams]

        pending = fetch(0)
        for start in range(0, stage_rows[-1], rows):
            end = min(start + rows, stage_rows[-1])
            if start < chunk_plan.rows:
                data = [_result(future, stream, entry.name) for future, stream in zip(pending, streams)]
                pending = fetch(start + rows)
                # the row count is explicit: a row of 0 elements (shape [3, 0]) gives -1 nothing to divide
                count = min(start + rows, chunk_plan.rows) - start
                arrays = [np.frombuffer(d, dtype).reshape(count, *chunk_plan.row_shape)
                          for d, dtype in zip(data, in_dtypes)]
                del data
                value = _combine(plan, chunk_plan, arrays, first_dtype)
                del arrays
            else:
                value = np.empty((0, *chunk_plan.row_shape), dtype=first_dtype)
            for number, step in enumerate(entry.steps):
                if step.op == "cast":
                    value = TRANSFORMS["cast"](value, tensor_name=entry.name, **step.params)
                    continue
                before, after = stage_rows[number], stage_rows[number + 1]
                kept = value[: max(0, min(end, after) - start)]
                fill_start, fill_end = max(start, before), min(end, after)
                if fill_end > fill_start:
                    value = np.concatenate([kept, fills[number].rows(fill_start, fill_end, value.dtype)])
                else:
                    value = kept
            if dtype_name_of_array(value) != entry.dtype:
                value = value.astype(out_dtype)
            if not allow_nonfinite and entry.dtype in FLOATING and value.size \
                    and not np.all(np.isfinite(value if value.itemsize >= 4 else value.astype(np.float32))):
                raise NonFiniteError(
                    f"tensor {entry.name!r}: result has NaN or Inf (pass --allow-nonfinite to write it anyway)")
            yield value
            del value
        for future, stream in zip(pending, streams):
            _result(future, stream, entry.name)
        pending = []
        for stream in streams:
            _checked(stream.finish, stream, entry.name)
    finally:
        for future in pending:  # no read of this tensor may outlive it (the shards serve the next one)
            future.cancel()
            if not future.cancelled():
                try:
                    future.result()
                except Exception:
                    pass


def _stage_rows(shape: tuple[int, ...], chunk_plan: ChunkPlan) -> int:
    """Rows of a stage of ``shape``: its elements when a row is one element, else its first axis."""
    return math.prod(shape) if not chunk_plan.row_shape else shape[0]


def _combine(plan: Plan, chunk_plan: ChunkPlan, arrays: list[np.ndarray], out_dtype: np.dtype) -> np.ndarray:
    """Rows of the combined inputs, through :func:`combine` as :func:`produce` calls it on whole tensors."""
    entry = chunk_plan.entry
    if entry.method is None:
        return arrays[0]
    by_position = iter(arrays)
    values: dict[TensorRef, np.ndarray] = {}
    for ref in entry.inputs:  # inputs are read in order; a repeated input is the same rows
        values.setdefault(ref, next(by_position))
    return narrow_in_place(combine(entry, lambda ref: values[ref], out_dtype), out_dtype)


def _done(data: bytes) -> Future:
    future: Future = Future()
    future.set_result(data)
    return future


def _result(future: Future, stream: _InputRows, name: str) -> bytes:
    return _checked(future.result, stream, name)



def _checked(call, stream: _InputRows, name: str):
    """Run a read of ``stream``; its failures become the one-line error naming the input's file and tensor."""
    name = stream.entry.name or name
    try:
        return call()
    except ChecksumMismatch as exc:
        raise BadCheckpointError(stream.path, f"tensor bytes fail their CRC32C check ({exc}): the checkpoint "
                                              "is corrupt; nothing was published", name) from None
    except EOFError as exc:
        raise BadCheckpointError(stream.path, f"{exc}: the data shard is truncated", name) from None
    except SourceReadError as exc:
        raise BadCheckpointError(stream.path, str(exc), name) from None
