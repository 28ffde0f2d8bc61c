"""Pure-Python reader and validator for pre-0.12 (V1) TensorFlow checkpoints.

Why this module exists
----------------------
Before TF 0.12 a ``Saver`` wrote a checkpoint as one SSTable file with no
``.index`` beside it (``model.ckpt-1000``), or as shards named
``export-00000-of-00002`` restored through the pattern
``export-?????-of-00002``.  TF-slim's model-zoo files (``inception_v3.ckpt``,
``resnet_v1_50.ckpt``) are of this kind.  TensorFlow 2.x still reads them:
``RestoreV2`` falls back to its V1 reader when ``<prefix>.index`` is absent.
That reader, like the V2 one, trusts the file, so this module checks in pure
Python what TensorFlow would otherwise trust, and turns every problem into a
one-line :class:`~ckptsurgery.errors.BadCheckpointError`.

The format (``tensorflow/core/util/tensor_slice_writer.cc``,
``saved_tensor_slice.proto``): the same table format as a V2 ``.index``
(see :mod:`ckptsurgery.io.index`).  Key ``b""`` maps to a
``SavedTensorSlices`` whose ``meta`` lists every tensor of the file (name,
shape, dtype and the slices stored); each slice is stored under the
OrderedCode key ``(0, name, rank, start0, len0, ...)`` as a
``SavedTensorSlices`` whose ``data`` holds a ``TensorProto``.  An
unpartitioned variable is one slice covering the whole tensor.

Opening reads each file's footer, index block and first data block (which
holds the metadata).  Data blocks are read, checksummed and decoded only when
a tensor is read (:meth:`V1Checkpoint.check_tensor`), so memory is bounded by
the largest block, i.e. by the largest tensor.
"""

from __future__ import annotations

import bisect
import math
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

from .index import (
    DT_RESOURCE,
    DT_STRING,
    DT_VARIANT,
    MAX_ELEMENTS,
    MAX_RANK,
    _DTYPES,
    _LFS_MAGIC,
    _UNEXPECTED,
    _check_extents,
    _check_no_overlap,
    _extents_of,
    _stat_regular,
    dtype_name,
    encode_slice_key,
    format_slice,
)
from .table import (
    BLOCK_TRAILER_SIZE,
    FOOTER_SIZE,
    TABLE_MAGIC,
    _decode_handle,
    _Malformed,
    _parse_block,
    _read_block,
)
from ..errors import BadCheckpointError

#: ``export-00000-of-00002``: one shard of a sharded V1 checkpoint.
SHARD_NAME = re.compile(r"^(?P<base>.*)-(?P<shard>\d{5})-of-(?P<count>\d{5})$")
#: ``export-?????-of-00002``: the pattern a V1 ``Saver`` writes into the state file.
SHARD_PATTERN = re.compile(r"^(?P<base>.*)-\?\?\?\?\?-of-(?P<count>\d{5})$")
#: Sanity bound on the number of V1 shards.
MAX_V1_SHARDS = 10_000

Extents = tuple[tuple[int, int], ...]


def looks_like_table(path: str) -> bool:
    """True when ``path`` is a regular file ending in the table magic (cheap: reads 8 bytes)."""
    try:
        size = os.path.getsize(path)
        if not os.path.isfile(path) or size < FOOTER_SIZE:
            return False
        with open(path, "rb") as f:
            f.seek(size - 8)
            (magic,) = struct.unpack("<Q", f.read(8))
        return magic == TABLE_MAGIC
    except (OSError, ValueError, struct.error):
        return False


def shard_files(pattern: str) -> list[str]:
    """The files of a V1 checkpoint named by ``pattern``: itself, or all shards of ``base-?????-of-NNNNN``.

    Every shard from 0 to NNNNN-1 must exist (TF would silently restore from
    the ones it finds, leaving tensors of a missing shard unfound).
    """
    m = SHARD_PATTERN.match(pattern)
    if not m:
        return [pattern]
    count = int(m.group("count"))
    if not 1 <= count <= MAX_V1_SHARDS:
        raise BadCheckpointError(pattern, f"V1 checkpoint claims {count} shards")
    files = [f"{m.group('base')}-{i:05d}-of-{count:05d}" for i in range(count)]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise BadCheckpointError(pattern, f"V1 checkpoint shard {os.path.basename(missing[0])} is missing "
                                          f"({len(missing)} of {count} shards missing)")
    return files


def pattern_for_shard(path: str) -> str | None:
    """``export-00001-of-00002`` -> ``export-?????-of-00002`` (None for a name that is not a shard's)."""
    m = SHARD_NAME.match(path)
    if not m:
        return None
    return f"{m.group('base')}-{'?' * 5}-of-{m.group('count')}"


def is_v1_checkpoint(path: str) -> bool:
    """True when ``path`` names a V1 checkpoint: a table file, or a shard pattern whose shards exist."""
    if SHARD_PATTERN.match(path):
        first = SHARD_PATTERN.sub(lambda m: f"{m.group('base')}-00000-of-{m.group('count')}", path)
        return looks_like_table(first)
    return looks_like_table(path)


class _Table:
    """One SSTable file read lazily: footer and index block now, data blocks on demand."""

    def __init__(self, path: str):
        self.path = path
        st = _stat_regular(path, "V1 checkpoint file", "V1 checkpoint file is missing")
        self.size = st.st_size
        if self.size < FOOTER_SIZE:
            raise _Malformed(f"file is too short ({self.size} bytes) to be a TensorFlow checkpoint")
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        if self._read(0, len(_LFS_MAGIC)) == _LFS_MAGIC:
            raise _Malformed("file is a Git LFS pointer, not the checkpoint (run git lfs pull)")
        footer_at = self.size - FOOTER_SIZE
        footer = self._read(footer_at, FOOTER_SIZE)
        (magic,) = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)
        if magic != TABLE_MAGIC:
            raise _Malformed("footer magic is wrong: not a TensorFlow checkpoint")
        meta_off, meta_size, p = _decode_handle(footer, 0, FOOTER_SIZE - 8, "footer metaindex handle")
        idx_off, idx_size, _ = _decode_handle(footer, p, FOOTER_SIZE - 8, "footer index handle")
        index_block = self._block(idx_off, idx_size, footer_at, "index block")
        _parse_block(self._block(meta_off, meta_size, footer_at, "metaindex block"), "metaindex block")
        data_limit = min(meta_off, idx_off)
        self.separators: list[bytes] = []
        self.handles: list[tuple[int, int]] = []
        prev_end = 0
        for i, (sep, handle) in enumerate(_parse_block(index_block, "index block")):
            off, size, hp = _decode_handle(handle, 0, len(handle), f"index block entry {i}")
            if hp != len(handle):
                raise _Malformed(f"index block entry {i} has trailing bytes after its block handle")
            if self.separators and sep <= self.separators[-1]:
                raise _Malformed(f"index block keys are not strictly increasing (entry {i})")
            if off < prev_end or size > data_limit or off > data_limit - size - BLOCK_TRAILER_SIZE:
                raise _Malformed(f"data block {i} (offset {off}, size {size}) lies outside the table "
                                 "or overlaps the previous block: file is truncated or corrupt")
            prev_end = off + size + BLOCK_TRAILER_SIZE
            self.separators.append(sep)
            self.handles.append((off, size))
        if not self.handles:
            raise _Malformed("table holds no data block (no metadata entry)")
        self._data_limit = data_limit

    def close(self) -> None:
        self._file.close()

    def _read(self, offset: int, count: int) -> bytes:
        self._file.seek(offset)
        data = self._file.read(count)
        if len(data) != count:
            raise _Malformed("file is shorter than when it was checked")
        return data

    def _block(self, offset: int, size: int, limit: int, what: str) -> bytes:
        if size > limit or offset > limit - size - BLOCK_TRAILER_SIZE:
            raise _Malformed(f"{what} (offset {offset}, size {size}) lies outside the table: file is truncated")
        raw = self._read(offset, size + BLOCK_TRAILER_SIZE)
        return _read_block(raw, 0, size, len(raw), what)  # checks the CRC32C and the compression type

    def block(self, i: int) -> list[tuple[bytes, bytes]]:
        """Entries of data block ``i``, checksummed, keys increasing and within the block's separator."""
        off, size = self.handles[i]
        what = f"data block {i}"
        kvs = _parse_block(self._block(off, size, self._data_limit, what), what)
        if not kvs:
            raise _Malformed(f"{what} is empty")
        for (a, _), (b, _) in zip(kvs, kvs[1:]):
            if b <= a:
                raise _Malformed(f"{what}: keys are not strictly increasing")
        if kvs[-1][0] > self.separators[i] or (i and kvs[0][0] <= self.separators[i - 1]):
            raise _Malformed(f"{what}: keys disagree with the index block")
        return kvs

    def get(self, key: bytes) -> bytes | None:
        """The value stored under ``key`` (reads only the one block that may hold it)."""
        i = bisect.bisect_left(self.separators, key)
        if i == len(self.separators):
            return None
        for k, v in self.block(i):
            if k == key:
                return v
        return None


@dataclass(frozen=True)
class V1Tensor:
    """What a V1 file's metadata says about one tensor."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    #: Each stored slice's extents, and which file (index into ``V1Checkpoint.files``) holds it.
    slices: tuple[Extents, ...]
    slice_files: tuple[int, ...]

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def partitioned(self) -> bool:
        """Saved as more than one part (an unpartitioned variable is one slice covering it all)."""
        return len(self.slices) != 1 or any(length != -1 and not (start == 0 and length == d)
                                            for (start, length), d in zip(self.slices[0], self.shape))


def _pb2() -> Any:
    from .._tf import tf

    tf()  # TF's own V1 protos import all of TF: do it through _tf, so the CLI's quiet import applies
    from tensorflow.core.util import saved_tensor_slice_pb2

    return saved_tensor_slice_pb2


def _parse(value: bytes, what: str, who: str | None = None) -> Any:
    msg = _pb2().SavedTensorSlices()
    try:
        msg.ParseFromString(value)
    except Exception as e:  # DecodeError, RuntimeWarning from upb, ...
        raise _Malformed(f"{what} is not a valid protobuf ({type(e).__name__})", who) from None
    return msg


class V1Checkpoint:
    """A validated V1 checkpoint: its files and the tensors their metadata lists.

    ``pattern`` is what TensorFlow's ``RestoreV2`` is given: the file itself,
    or ``base-?????-of-NNNNN`` for a sharded one.
    """

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.files = shard_files(pattern)
        tensors: dict[str, dict[str, Any]] = {}
        for file_no, path in enumerate(self.files):
            try:
                table = _Table(path)
                try:
                    self._read_meta(table, file_no, tensors)
                finally:
                    table.close()
            except _Malformed as e:
                raise BadCheckpointError(path, e.message, tensor=e.tensor) from None
            except _UNEXPECTED as e:
                raise BadCheckpointError(path, f"malformed V1 checkpoint (unexpected {type(e).__name__}: {e})") \
                    from None
        self.tensors: dict[str, V1Tensor] = {}
        for name, t in tensors.items():
            slices = tuple(t["slices"])
            total = 0
            for ext in slices:
                n = 1
                for (_, length), d in zip(ext, t["shape"]):
                    n *= d if length == -1 else length
                total += n
            try:
                _check_no_overlap(slices, t["shape"], name)
                num = 1
                for d in t["shape"]:
                    num *= d
                if total != num:
                    raise _Malformed(f"saved slices cover {total} of its {num} elements", name)
            except _Malformed as e:
                raise BadCheckpointError(pattern, e.message, tensor=e.tensor) from None
            self.tensors[name] = V1Tensor(name, t["dtype"], t["shape"], slices, tuple(t["files"]))

    @staticmethod
    def _read_meta(table: _Table, file_no: int, tensors: dict[str, dict[str, Any]]) -> None:
        first = table.block(0)
        if first[0][0] != b"":
            raise _Malformed("file has no metadata entry (first key is not empty)")
        meta = _parse(first[0][1], "metadata entry")
        if not meta.HasField("meta"):
            raise _Malformed("metadata entry holds no tensor list")
        for t in meta.meta.tensor:
            name = t.name
            if not name:
                raise _Malformed("metadata lists a tensor with an empty name")
            dt = t.type
            if dt not in _DTYPES:
                raise _Malformed(f"tensor has an invalid dtype ({dt})", name)
            if dt in (DT_RESOURCE, DT_VARIANT):
                raise _Malformed(f"tensor has unsupported dtype {dtype_name(dt)}", name)
            if t.shape.unknown_rank or len(t.shape.dim) > MAX_RANK:
                raise _Malformed("tensor has a shape of unknown or absurd rank", name)
            shape = tuple(d.size for d in t.shape.dim)
            num = 1
            for d in shape:
                num *= max(d, 0)
                if d < 0 or d > MAX_ELEMENTS or num > MAX_ELEMENTS:
                    raise _Malformed(f"tensor has an invalid shape {list(shape)}", name)
            if not t.slice:
                raise _Malformed("metadata lists no saved slice for the tensor", name)
            entry = tensors.setdefault(name, {"dtype": dt, "shape": shape, "slices": [], "files": []})
            if (entry["dtype"], entry["shape"]) != (dt, shape):
                raise _Malformed("shards disagree on the tensor's dtype or shape", name)
            for s in t.slice:
                ext = _extents_of(s)
                if not ext and shape:  # TF's "-" for a full slice of any rank
                    ext = tuple((0, -1) for _ in shape)
                _check_extents(ext, shape, name)
                if ext in entry["slices"]:
                    raise _Malformed(f"slice {format_slice(ext)} is listed twice", name)
                entry["slices"].append(ext)
                entry["files"].append(file_no)

    def check_tensor(self, name: str) -> None:
        """Read and check every slice of ``name`` so TF's reader gets only well-formed data.

        Checks each holding block's CRC32C and that the stored ``TensorProto``
        has the tensor's dtype and exactly the slice's number of values.
        Raises BadCheckpointError naming the file and tensor.
        """
        tensor = self.tensors[name]
        for ext, file_no in zip(tensor.slices, tensor.slice_files):
            path = self.files[file_no]
            who = name if not tensor.partitioned else f"{name} (slice {format_slice(ext)})"
            try:
                table = _Table(path)
                try:
                    value = table.get(encode_slice_key(name, ext))
                finally:
                    table.close()
                if value is None:
                    raise _Malformed("slice listed in the metadata has no data entry", who)
                _check_slice_data(_parse(value, "data entry", who), tensor, ext, who)
            except _Malformed as e:
                raise BadCheckpointError(path, e.message, tensor=e.tensor or who) from None
            except _UNEXPECTED as e:
                raise BadCheckpointError(path, f"malformed V1 checkpoint (unexpected {type(e).__name__}: {e})",
                                         tensor=who) from None


#: dtype enum -> (TensorProto value field, values per element) as TF's V1 writer stores them.
_VALUE_FIELDS: dict[int, tuple[str, int]] = {
    1: ("float_val", 1), 2: ("double_val", 1), 3: ("int_val", 1), 4: ("int_val", 1), 5: ("int_val", 1),
    6: ("int_val", 1), 7: ("string_val", 1), 8: ("scomplex_val", 2), 9: ("int64_val", 1), 10: ("bool_val", 1),
    11: ("int_val", 1), 12: ("int_val", 1), 13: ("int_val", 1), 14: ("half_val", 1), 15: ("int_val", 1),
    16: ("int_val", 1), 17: ("int_val", 1), 18: ("dcomplex_val", 2), 19: ("half_val", 1), 22: ("uint32_val", 1),
    23: ("uint64_val", 1),
}


def _check_slice_data(msg: Any, tensor: V1Tensor, ext: Extents, who: str) -> None:
    if not msg.HasField("data"):
        raise _Malformed("data entry holds no slice", who)
    data = msg.data
    if data.name != tensor.name:
        raise _Malformed(f"data entry is named {data.name[:80]!r}", who)
    stored = _extents_of(data.slice)
    if not stored and tensor.shape:
        stored = tuple((0, -1) for _ in tensor.shape)
    if stored != ext:
        raise _Malformed(f"data entry holds slice {format_slice(stored)}", who)
    proto = data.data
    if proto.dtype not in (0, tensor.dtype):
        raise _Malformed(f"data entry has dtype {dtype_name(proto.dtype)}", who)
    want = 1
    for (_, length), d in zip(ext, tensor.shape):
        want *= d if length == -1 else length
    if proto.tensor_content:
        itemsize = _DTYPES[tensor.dtype][1]
        if tensor.dtype == DT_STRING or not itemsize or len(proto.tensor_content) != want * itemsize:
            raise _Malformed(f"data entry holds {len(proto.tensor_content)} bytes, expected {want} values", who)
        return
    field_name, per = _VALUE_FIELDS.get(tensor.dtype, (None, 1))
    if field_name is None:
        raise _Malformed(f"V1 checkpoints cannot hold dtype {dtype_name(tensor.dtype)}", who)
    have = len(getattr(proto, field_name))
    if have != want * per:
        raise _Malformed(f"data entry holds {have // per} values, expected {want}", who)
