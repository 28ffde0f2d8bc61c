"""``verify``: is every byte of a checkpoint readable and intact?

Two layers, both streaming (V2 bundles: each tensor read in pieces within the
memory budget; V1 files and ``CKPTSURGERY_BYTE_PATH=0``: one tensor in memory
at a time, two with ``against``):

1. the index, in pure Python (:func:`ckptsurgery.io.index.validate_checkpoint`
   via :class:`~ckptsurgery.io.reader.Checkpoint`): the table's block checksums,
   every entry sane, every data shard present, every entry inside its shard.
   A failure here means nothing can be trusted, so it raises
   :class:`~ckptsurgery.errors.BadCheckpointError` (exit 3) with one line;
2. every tensor's CRC32C: on a V2 bundle its byte ranges are read in pieces
   and checked here, without TensorFlow (:func:`check_tensor_bytes`); else the
   tensor is read through TensorFlow's own reader, which checks it.  A failure
   here is recorded per tensor and the others are still checked, so the
   report names every bad tensor (in TF's words either way).

With ``against``, the values are also compared with another checkpoint:
names, dtypes, shapes, and values bit for bit (a NaN equals a NaN at the same
place, whatever its payload), piece by piece on the byte path.

Example::

    >>> report = verify("runs/bert/model.ckpt-1000")       # doctest: +SKIP
    >>> report.ok, len(report.bad)                          # doctest: +SKIP
    (True, 0)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..text.display import display_name
from ..errors import EXIT_BAD_INPUT, EXIT_DIFFERENT, EXIT_OK, BadCheckpointError
from ..text.sizes import format_size
from ..text.table import table_lines
from ..values import count_differences
from ..io.reader import OBJECT_GRAPH_KEY, Checkpoint, open_checkpoint
from ..options import DEFAULT_MEMORY_BUDGET
from ..text.sizes import parse_size
from ..plan.byte_path import byte_path_enabled
from ..io.bytecopy import CHUNK, ChecksumMismatch, decode_string_elements, decode_string_scalar
from ..io.bytestream import READ_ERRORS, OpenShards, TensorBytes
from ..io.index import DT_STRING, DT_VARIANT, IndexEntry
from ..plan.chunking import _row_parts
from ..dtypes import numpy_dtype

#: Per-tensor statuses.
OK = "ok"
BAD = "bad"  # unreadable: checksum mismatch, truncated, ...
DIFFERENT = "different"  # readable, but differs from ``against``
ONLY_HERE = "only-here"  # not in ``against``
ONLY_OTHER = "only-in-other"  # in ``against`` only


@dataclass
class TensorCheck:
    """The verdict on one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    status: str = OK
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "nbytes": self.nbytes,
                "status": self.status, "detail": self.detail}


@dataclass
class VerifyReport:
    """Per-tensor results of :func:`verify`; ``exit_code`` is what the CLI returns."""

    prefix: str
    against: str | None = None
    tensors: list[TensorCheck] = field(default_factory=list)

    @property
    def bad(self) -> list[TensorCheck]:
        return [t for t in self.tensors if t.status == BAD]

    @property
    def differences(self) -> list[TensorCheck]:
        return [t for t in self.tensors if t.status in (DIFFERENT, ONLY_HERE, ONLY_OTHER)]

    @property
    def ok(self) -> bool:
        """Every tensor read back intact (and, with ``against``, equal)."""
        return not self.bad and not self.differences

    @property
    def exit_code(self) -> int:
        if self.bad:
            return EXIT_BAD_INPUT
        if self.differences:
            return EXIT_DIFFERENT
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix, "against": self.against, "ok": self.ok,
            "num_tensors": sum(t.status != ONLY_OTHER for t in self.tensors),
            "bad": [t.name for t in self.bad],
            "differences": [t.name for t in self.differences],
            "tensors": [t.to_json() for t in self.tensors],
        }

    def summary(self) -> str:
        n = sum(t.status != ONLY_OTHER for t in self.tensors)
        text = f"{n} tensors: {n - len(self.bad)} readable, {len(self.bad)} bad"
        if self.against is not None:
            text += f"; against {self.against}: {len(self.differences)} differences"
        return text

    def render(self) -> str:
        """A table, one row per tensor, then one line per problem, then a summary."""
        rows = [(display_name(t.name), t.dtype, str(list(t.shape)) if t.status != ONLY_OTHER else "", format_size(t.nbytes),
                 t.status) for t in self.tensors]
        lines = table_lines(("name", "dtype", "shape", "size", "status"), rows, right={3})
        for t in self.tensors:
            if t.status != OK:
                lines.append(f"{t.status.upper()}: {t.name}: {t.detail}")
        lines.append(self.summary())
        return "\n".join(display_name(line) for line in lines)  # one line per item: names are input

    def error_line(self) -> str | None:
        """One line for stderr naming what is wrong, or None when all is well."""
        if self.bad:
            names = ", ".join(repr(t.name) for t in self.bad[:5]) + (" ..." if len(self.bad) > 5 else "")
            first = self.bad[0]
            return (f"{self.prefix}: {len(self.bad)} bad tensor{'s' if len(self.bad) != 1 else ''}: {names} "
                    f"(first: {first.detail})")
        if self.differences:
            names = ", ".join(repr(t.name) for t in self.differences[:5]) + (" ..." if len(self.differences) > 5 else "")
            return f"{self.prefix}: differs from {self.against} in {len(self.differences)} tensors: {names}"
        return None


def verify(
    path: str | os.PathLike | Checkpoint,
    against: str | os.PathLike | Checkpoint | None = None,
    *,
    on_tensor: Callable[[TensorCheck], None] | None = None,
    cluster: str | None = None,
    scheduler: str | None = None,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    byte_path: bool | None = None,
) -> VerifyReport:
    """Validate ``path``'s index, read every tensor (TF checks each CRC32C).

    Raises :class:`BadCheckpointError` when the index or the layout of the
    data shards is broken (nothing can be read reliably); a tensor that fails
    to read is reported as ``bad`` in the returned :class:`VerifyReport` and
    the others are still checked.  With ``against``, also compare names,
    dtypes, shapes and values (bit-exact, NaN-aware) with that checkpoint.
    ``on_tensor`` is called after each tensor (for progress).  ``cluster`` /
    ``scheduler``: the tensors are checked by groups as Dask tasks (see
    :mod:`ckptsurgery.execute.cluster`); the report is the same.
    ``memory_budget`` bounds the bytes held per tensor on the byte path (V2
    bundles: each tensor streamed in pieces, see :func:`check_tensor_bytes`);
    ``byte_path`` False (or ``CKPTSURGERY_BYTE_PATH=0``) reads every tensor whole through TensorFlow.
    """
    budget = parse_size(memory_budget)
    streaming = byte_path_enabled(byte_path)
    ckpt = open_checkpoint(path)
    other = open_checkpoint(against) if against is not None else None
    report = VerifyReport(ckpt.prefix, other.prefix if other is not None else None)
    notify = on_tensor or (lambda check: None)
    if cluster is not None or scheduler is not None:
        from ..execute.cluster import map_groups, name_groups

        groups = [(ckpt.prefix, other.prefix if other is not None else None, tuple(names), budget, streaming)
                  for names in name_groups([(t.name, t.nbytes) for t in ckpt], budget)]

        def group_done(group: Any, checks: list[TensorCheck]) -> None:
            for check in checks:  # the bar advances as groups complete
                notify(check)

        for checks in map_groups(cluster, scheduler, check_group, groups, group_done, ckpt.prefix):
            report.tensors.extend(checks)
    else:
        streams = ByteStreams(budget) if streaming else None
        try:
            for info in ckpt:
                check = check_tensor(ckpt, other, info.name, streams)
                report.tensors.append(check)
                notify(check)
        finally:
            if streams is not None:
                streams.close()
    if other is not None:
        for info in other:
            if info.name not in ckpt:
                check = TensorCheck(info.name, info.dtype, info.shape, info.nbytes, ONLY_OTHER,
                                    f"only in {other.prefix}")
                report.tensors.append(check)
                notify(check)
    return report


def check_tensor(ckpt: Checkpoint, other: Checkpoint | None, name: str,
                 streams: "ByteStreams | None" = None) -> TensorCheck:
    """Read one tensor (its CRC32C checked), check it, compare it with ``other``'s.

    With ``streams``, a tensor the byte path can read is streamed in pieces
    (:func:`check_tensor_bytes`); the rest, and every tensor without, is read
    whole through TensorFlow's reader.
    """
    if streams is not None:
        check = check_tensor_bytes(ckpt, other, name, streams)
        if check is not None:
            return check
    info = ckpt.info(name)
    check = TensorCheck(info.name, info.dtype, info.shape, info.nbytes)
    try:
        value = ckpt.read(info.name)
    except BadCheckpointError as exc:
        if exc.tensor is None:
            raise  # the checkpoint as a whole cannot be opened
        check.status, check.detail = BAD, exc.detail
        return check
    if info.name == OBJECT_GRAPH_KEY:
        _check_object_graph(check, value, ckpt)
    if other is not None and check.status == OK:
        _compare(check, value, other)
    return check


def check_group(group: tuple[str, str | None, tuple[str, ...]]) -> list[TensorCheck]:
    """:func:`check_tensor` for a group of names, where a cluster task runs (sources reopened there)."""
    # (prefix, against, names, budget, byte path); a three-item group: the default budget, TF's reader
    prefix, against, names, budget, streaming = (*group, parse_size(DEFAULT_MEMORY_BUDGET), False)[:5]
    ckpt = open_checkpoint(prefix)
    other = open_checkpoint(against) if against is not None else None
    streams = ByteStreams(budget) if streaming else None
    try:
        return [check_tensor(ckpt, other, name, streams) for name in names]
    finally:
        if streams is not None:
            streams.close()


def _check_object_graph(check: TensorCheck, value: np.ndarray, ckpt: Checkpoint) -> None:
    """The TF2 object graph is read like any tensor, then decoded and checked against the bundle."""
    from ..plan.objectgraph import describe_problems, graph_bytes_of, object_graph_problems

    graph_bytes = graph_bytes_of(value)
    problems = (["is not a scalar string tensor"] if graph_bytes is None
                else object_graph_problems(graph_bytes, {t.name for t in ckpt}))
    if problems:
        check.status, check.detail = BAD, describe_problems(problems)


def _same_kind(check: TensorCheck, other: Checkpoint) -> bool:
    """``other`` holds the tensor with the same dtype and shape (else ``check`` says how it differs)."""
    if check.name not in other:
        check.status, check.detail = ONLY_HERE, f"not in {other.prefix}"
        return False
    info = other.info(check.name)
    if (info.dtype, tuple(info.shape)) != (check.dtype, tuple(check.shape)):
        check.status = DIFFERENT
        check.detail = f"{check.dtype}{list(check.shape)} here, {info.dtype}{list(info.shape)} in other"
        return False
    return True


def _compare(check: TensorCheck, value: np.ndarray, other: Checkpoint) -> None:
    if not _same_kind(check, other):
        return
    try:
        theirs = other.read(check.name)
    except BadCheckpointError as exc:
        # The other side is unreadable: a difference, not a fault of this checkpoint.
        check.status, check.detail = DIFFERENT, f"unreadable in {other.prefix}: {exc.detail}"
        return
    differing = count_differences(value, theirs)
    if differing:
        check.status = DIFFERENT
        check.detail = f"{differing} of {max(value.size, 1)} elements differ"


# -- the byte path: each tensor streamed in pieces, its CRC32C checked without TensorFlow ---------------
class ByteStreams:
    """What a byte-path ``verify`` keeps for a run: the budget and each checkpoint's open data shards."""

    def __init__(self, budget: int):
        self.budget = budget
        self._shards: dict[str, OpenShards] = {}

    def shards(self, ckpt: Checkpoint) -> OpenShards:
        return self._shards.setdefault(ckpt.prefix, OpenShards())

    def piece(self, sides: int, itemsize: int = 1) -> int:
        """Bytes read per step: with ``against``, two pieces, their copies and the comparison's
        temporaries (about 8 pieces) fit the budget; alone, two.  A whole number of elements."""
        piece = min(CHUNK, max(1, self.budget // (8 if sides == 2 else 2)))
        return max(itemsize, piece - piece % itemsize)

    def close(self) -> None:
        for shards in self._shards.values():
            shards.close()
        self._shards.clear()


def byte_segments(ckpt: Checkpoint, name: str, *, in_order: bool) -> list[tuple[IndexEntry, str]] | None:
    """The byte ranges holding ``name`` in ``ckpt`` (``(entry, data shard)``), or None when the byte
    path cannot read it (a V1 file, a variant).  ``in_order``: the ranges, one after the other, must be
    the tensor's C-order bytes (a partitioned variable split along an inner axis, or a string one: None)."""
    index = ckpt.bundle_index
    stored = index.entries.get(name) if index is not None else None
    if stored is None or stored.dtype == DT_VARIANT:
        return None
    if not stored.slices:
        return [(stored, index.data_path(stored.shard_id))]
    parts = index.slice_entries.get(name, ())
    if in_order:
        if stored.dtype == DT_STRING:
            return None
        parts = _row_parts(stored, tuple(parts))
        if parts is None:
            return None
    return [(part, index.data_path(part.shard_id)) for part in parts] or None


def check_tensor_bytes(ckpt: Checkpoint, other: Checkpoint | None, name: str,
                       streams: ByteStreams) -> TensorCheck | None:
    """:func:`check_tensor` on the byte path, or None when it cannot read the tensor (TF's reader then does).

    The tensor's ranges are read ``streams.piece()`` bytes at a time and each
    range's CRC32C compared with its index entry.  With ``other``, both
    tensors are read side by side and each pair of pieces is compared with
    :func:`count_differences` (elementwise, so the counts add up to the whole
    tensor's); strings are compared as bytes, and, only when their bytes
    differ, decoded whole to count the differing elements.
    """
    info = ckpt.info(name)
    compare = other is not None and info.name in other and (other.info(name).dtype, other.info(name).shape) == (
        info.dtype, info.shape)
    mine = byte_segments(ckpt, name, in_order=compare)
    theirs = byte_segments(other, name, in_order=True) if compare else None
    if mine is None or (compare and theirs is None):
        return None
    string = info.dtype == "string"
    itemsize = 1 if string else numpy_dtype(info.dtype).itemsize
    if not string and any(sum(e.size for e, _ in s) != info.num_elements * itemsize for s in (mine, theirs) if s):
        return None  # not a plain array (the index validator refuses this; TF's reader says why)
    check = TensorCheck(info.name, info.dtype, info.shape, info.nbytes)
    if info.name == OBJECT_GRAPH_KEY:
        if len(mine) != 1 or mine[0][0].dtype != DT_STRING or mine[0][0].shape != ():
            return None  # TF's reader reads it, and the report says it is not a scalar string
        entry, path = mine[0]
        try:
            value = np.array(decode_string_scalar(streams.shards(ckpt).get(path).read(entry.offset, entry.size),
                                                  entry), dtype=object)
        except READ_ERRORS + (IndexError,) as exc:
            check.status, check.detail = BAD, _byte_error(ckpt, entry, exc)
            return check
        _check_object_graph(check, value, ckpt)  # the graph is decoded whole (metadata, not a weight)
        if check.status != OK or not compare:
            if other is not None and check.status == OK:
                _same_kind(check, other)
            return check
    stream = TensorBytes(mine, streams.shards(ckpt))
    if not compare:
        try:
            stream.check(streams.piece(1))
        except READ_ERRORS as exc:
            check.status, check.detail = BAD, _byte_error(ckpt, stream.at_fault[0], exc)
        if other is not None and check.status == OK:
            _same_kind(check, other)  # not in other, or another dtype/shape: nothing to compare
        return check
    return _compare_bytes(check, ckpt, stream, other, TensorBytes(theirs, streams.shards(other)),
                          streams.piece(2, itemsize))


def _compare_bytes(check: TensorCheck, ckpt: Checkpoint, stream: TensorBytes, other: Checkpoint,
                   theirs: TensorBytes, piece: int) -> TensorCheck:
    """Read ``stream`` and ``theirs`` side by side, counting differing elements piece by piece."""
    string = check.dtype == "string"
    dtype = None if string else numpy_dtype(check.dtype)
    differing = 0
    unreadable: Exception | None = None
    try:
        for data in stream.pieces(piece):
            if unreadable is not None:
                continue  # the other side failed: this side's CRC32C is still checked to the end
            try:
                their_data = theirs.take(len(data))
            except READ_ERRORS as exc:
                unreadable = exc
                continue
            if data != their_data:
                differing += 1 if string else count_differences(np.frombuffer(data, dtype),
                                                                np.frombuffer(their_data, dtype))
    except READ_ERRORS as exc:
        check.status, check.detail = BAD, _byte_error(ckpt, stream.at_fault[0], exc)
        return check
    if unreadable is None:
        try:
            if theirs.position < theirs.size:
                differing += string  # a longer string tensor: differs
            theirs.check(piece)
        except READ_ERRORS as exc:
            unreadable = exc
    if unreadable is not None:
        check.status = DIFFERENT
        check.detail = f"unreadable in {other.prefix}: {_byte_error(other, theirs.at_fault[0], unreadable)}"
        return check
    if string and differing:  # both read back intact, their bytes differ: count the elements (decoded whole)
        differing = count_differences(_strings(stream), _strings(theirs))
    if differing:
        check.status = DIFFERENT
        check.detail = f"{differing} of {max(math.prod(check.shape), 1)} elements differ"
    return check


def _strings(stream: TensorBytes) -> np.ndarray:
    """A string tensor's elements, decoded whole from its one byte range (its CRC32C already checked)."""
    (entry, path), = stream.segments
    elements, _ = decode_string_elements(stream.shards.get(path).read(entry.offset, entry.size), entry.num_elements)
    values = np.empty(len(elements), dtype=object)
    values[:] = elements
    return values.reshape(entry.shape)


def _byte_error(ckpt: Checkpoint, entry: IndexEntry, exc: Exception) -> str:
    """The detail of a tensor whose bytes fail, in TensorFlow's reader's words where it has them."""
    where = f"TensorBundle at {ckpt.prefix} shard {entry.shard_id} ({entry.size} bytes)"
    if isinstance(exc, ChecksumMismatch):
        return f"{where}: Checksum does not match: stored {exc.stored} vs. calculated on the restored bytes {exc.computed}"
    if isinstance(exc, EOFError):
        return f"{where}: {exc}: the data shard is truncated"
    return f"{where}: {exc}"
