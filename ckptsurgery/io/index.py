"""Pure-Python reader and validator for TensorFlow V2 checkpoint indexes (the table codec is :mod:`.table`).

(About 800 lines, on purpose: every check on a bundle entry sits here, next to the limits it
enforces, so a reviewer sees at one place everything a hostile index meets before TensorFlow does.)

Why this module exists
----------------------
TensorFlow's C++ checkpoint reader (``tf.train.load_checkpoint``,
``CheckpointReader``, the ``RestoreV2`` op) trusts the ``.index`` file.  On a
malformed file it can ``CHECK``-fail (aborting the whole Python process),
allocate whatever a corrupt length field says, or read past the end of a
tensor buffer.  A surgery tool is run on files of unknown origin, so every
checkpoint goes through :func:`validate_checkpoint` first: it parses and checks
the index in pure Python, touching no TensorFlow C++ code, and turns every
problem into a one-line :class:`~ckptsurgery.errors.BadCheckpointError`.

The format (TensorFlow ``tensor_bundle.cc`` and ``tsl/lib/io/table*.cc``,
``block.cc``, ``format.cc``; a LevelDB SSTable):

* ``<prefix>.index`` is a table: data blocks, a metaindex block (empty), an
  index block and a 48-byte footer.  Every block is followed by a 5-byte
  trailer: 1 byte compression type (0 none, 1 snappy) and the *masked*
  CRC32C of the block contents plus that type byte.
* A block holds prefix-compressed entries (varint32 shared, varint32
  non_shared, varint32 value_length, key delta, value) followed by a restart
  array of uint32 offsets and a uint32 restart count.
* The index block maps a separator key (>= every key of the block, < every key
  of the next one) to a BlockHandle (varint64 offset, varint64 size).
* The footer holds the metaindex and index handles, zero padding to 40 bytes,
  and the little-endian magic ``0xdb4775248b80fb57``.
* Key ``b""`` maps to a ``BundleHeaderProto``; every other key to a
  ``BundleEntryProto``.  TF1 partitioned variables have a "full" entry that
  only lists ``slices`` (no bytes of its own) plus one entry per slice whose
  key is an OrderedCode-encoded ``(0, name, rank, start0, len0, ...)`` and so
  starts with a ``\\x00`` byte.
* Tensor bytes live in ``<prefix>.data-%05d-of-%05d`` shards.  Fixed-size
  dtypes are stored raw (``size == num_elements * itemsize``); ``DT_STRING``
  is ``[varint64 len]*n [4-byte masked crc32c of the lengths] [bytes]``;
  ``DT_VARIANT`` is ``([varint64 len][proto bytes][4-byte crc])*n``.

Everything here reads at most the index file and, in
:func:`validate_checkpoint`, ``stat``s the shards and reads the length tables
of string tensors.  All lengths are bounded by the file sizes before anything
is allocated.
"""

from __future__ import annotations

import gc
import math
import operator
import os
import re
import stat
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from ckptsurgery.errors import BadCheckpointError
from .protos import bundle_protos
from .fs import filesystem, is_remote, normalize

from .table import _Malformed, _varint, crc32c, parse_table, unmask

__all__ = [
    "BundleIndex",
    "IndexEntry",
    "read_index",
    "validate_checkpoint",
    "decode_slice_key",
    "encode_slice_key",
    "data_filename",
    "dtype_name",
    "dtype_itemsize",
    "format_slice",
    "MAX_NUM_SHARDS",
    "MAX_ELEMENTS",
]

# ---------------------------------------------------------------------------
# Limits.  Generous for real checkpoints, small enough that nothing we (or the
# C++ reader later) allocate from a corrupt field can be absurd.
# ---------------------------------------------------------------------------

#: Sanity bound for the header's ``num_shards``.
MAX_NUM_SHARDS = 100_000
#: No tensor may claim more elements than this (or a dimension this large).
MAX_ELEMENTS = 1 << 40
#: ``TensorShape::MaxDimensions()``; more makes the C++ reader CHECK-fail.
MAX_RANK = 254
#: Largest index we parse.  Real ones are KBs to a few MB; pure-Python CRC
#: of more would be slow and such a file is not an index anyway.
MAX_INDEX_BYTES = 256 << 20
#: The version this reader (like TF's, ``kTensorBundleVersion``) consumes.
BUNDLE_CONSUMER_VERSION = 1

_LFS_MAGIC = b"version https://git-lfs"
_INDEX_SUFFIX = ".index"
_DATA_SUFFIX_RE = re.compile(r"\.data-\d{5}-of-\d{5}$")

# ---------------------------------------------------------------------------
# DataType table.  Values and C++ ``DataTypeSize`` of TF's types.proto; kept
# here (not asked of TF) so validation runs no TF code.
# ---------------------------------------------------------------------------

DT_STRING = 7
DT_RESOURCE = 20
DT_VARIANT = 21

#: enum value -> (name, itemsize); itemsize 0 = variable-size encoding.
_DTYPES: dict[int, tuple[str, int]] = {
    1: ("float32", 4),
    2: ("float64", 8),
    3: ("int32", 4),
    4: ("uint8", 1),
    5: ("int16", 2),
    6: ("int8", 1),
    7: ("string", 0),
    8: ("complex64", 8),
    9: ("int64", 8),
    10: ("bool", 1),
    11: ("qint8", 1),
    12: ("quint8", 1),
    13: ("qint32", 4),
    14: ("bfloat16", 2),
    15: ("qint16", 2),
    16: ("quint16", 2),
    17: ("uint16", 2),
    18: ("complex128", 16),
    19: ("float16", 2),
    20: ("resource", 0),
    21: ("variant", 0),
    22: ("uint32", 4),
    23: ("uint64", 8),
    24: ("float8_e5m2", 1),
    25: ("float8_e4m3fn", 1),
    26: ("float8_e4m3fnuz", 1),
    27: ("float8_e4m3b11fnuz", 1),
    28: ("float8_e5m2fnuz", 1),
    29: ("int4", 1),
    30: ("uint4", 1),
    31: ("int2", 1),
    32: ("uint2", 1),
    33: ("float4_e2m1fn", 1),
}


def dtype_name(dtype: int) -> str:
    """Short name of a DataType enum value, for messages (``"float32"``)."""
    if dtype in _DTYPES:
        return _DTYPES[dtype][0]
    if dtype - 100 in _DTYPES:
        return _DTYPES[dtype - 100][0] + "_ref"
    return f"unknown dtype {dtype}"


def dtype_enum(name: str) -> int:
    """The DataType enum value of a dtype name (``"float32"`` -> 1), for entries we write ourselves."""
    for value, (known, _) in _DTYPES.items():
        if known == name:
            return value
    raise ValueError(f"unknown dtype {name!r}")


def dtype_itemsize(dtype: int) -> int:
    """Bytes per element on disk; 0 for string/variant/resource."""
    return _DTYPES[dtype][1]


# ---------------------------------------------------------------------------
# Errors.  Low-level parsers raise _Malformed (no path known there); the
# public functions attach the file and re-raise as BadCheckpointError.
# ---------------------------------------------------------------------------


#: The bundle protos, declared in :mod:`ckptsurgery.io.protos`: importing TF's own
#: ``tensorflow.core...`` runs ``tensorflow/__init__`` (seconds), which reading an
#: index should not pay.  Called once per entry, so it is the cached function itself.
_pb2 = bundle_protos


# ---------------------------------------------------------------------------
# OrderedCode slice keys (tensorflow/core/util/saved_tensor_slice_util.cc).
# ---------------------------------------------------------------------------


def _oc_num(key: bytes, p: int) -> tuple[int, int]:
    if p >= len(key):
        raise ValueError("truncated number")
    n = key[p]
    if n > 8 or p + 1 + n > len(key):
        raise ValueError("bad number length")
    return int.from_bytes(key[p + 1 : p + 1 + n], "big"), p + 1 + n


def _oc_string(key: bytes, p: int) -> tuple[bytes, int]:
    out = bytearray()
    n = len(key)
    while p < n:
        c = key[p]
        if c == 0x00:
            if p + 1 >= n:
                break
            d = key[p + 1]
            if d == 0x01:
                return bytes(out), p + 2
            if d != 0xFF:
                raise ValueError("bad escape")
            out.append(0)
            p += 2
        elif c == 0xFF:
            if p + 1 >= n or key[p + 1] != 0x00:
                raise ValueError("bad escape")
            out.append(0xFF)
            p += 2
        else:
            out.append(c)
            p += 1
    raise ValueError("unterminated string")


def _oc_signed(key: bytes, p: int) -> tuple[int, int]:
    if p >= len(key):
        raise ValueError("truncated signed number")
    neg = not key[p] & 0x80
    inv = 0xFF if neg else 0
    length = 0
    i = p
    while True:  # header = `length` one-bits then a zero (inverted if < 0)
        if i >= len(key) or length > 10:
            raise ValueError("bad signed number header")
        b = key[i] ^ inv
        if b == 0xFF:
            length += 8
            i += 1
            continue
        while b & (0x80 >> (length % 8)):
            length += 1
        break
    if not 1 <= length <= 10 or p + length > len(key):
        raise ValueError("bad signed number length")
    raw = int.from_bytes(key[p : p + length], "big")
    if neg:
        raw ^= (1 << (8 * length)) - 1
    x = raw & ((1 << (7 * length - 1)) - 1)
    value = -x - 1 if neg else x
    if not -(1 << 63) <= value < (1 << 63):
        raise ValueError("signed number out of range")
    return value, p + length


def _oc_signed_encode(v: int) -> bytes:
    x = ~v if v < 0 else v
    length = 1
    while x >= 1 << (7 * length - 1):
        length += 1
    raw = (((1 << length) - 1) << (7 * length)) | x
    if v < 0:
        raw ^= (1 << (8 * length)) - 1
    return raw.to_bytes(length, "big")


def _oc_num_encode(v: int) -> bytes:
    n = (v.bit_length() + 7) // 8
    return bytes([n]) + v.to_bytes(n, "big")


def _oc_string_encode(s: bytes) -> bytes:
    return s.replace(b"\xff", b"\xff\x00").replace(b"\x00", b"\x00\xff") + b"\x00\x01"


def decode_slice_key(key: bytes) -> tuple[str, tuple[tuple[int, int], ...]]:
    """Decode a TF1 partitioned-variable slice key into (variable name,
    ((start, length), ...)) with length -1 for a full extent.  Raises
    ValueError if ``key`` is not a well-formed slice key."""
    zero, p = _oc_num(key, 0)
    if zero != 0:
        raise ValueError("not a slice key")
    name, p = _oc_string(key, p)
    rank, p = _oc_num(key, p)
    if rank > MAX_RANK:
        raise ValueError("slice rank too large")
    extents = []
    for _ in range(rank):
        start, p = _oc_signed(key, p)
        length, p = _oc_signed(key, p)
        extents.append((start, length))
    if p != len(key):
        raise ValueError("trailing bytes")
    return name.decode("utf-8"), tuple(extents)


def encode_slice_key(name: str, extents: tuple[tuple[int, int], ...]) -> bytes:
    """Inverse of :func:`decode_slice_key` (``EncodeTensorNameSlice``)."""
    out = _oc_num_encode(0) + _oc_string_encode(name.encode("utf-8"))
    out += _oc_num_encode(len(extents))
    for start, length in extents:
        out += _oc_signed_encode(start) + _oc_signed_encode(length)
    return out


def format_slice(extents: tuple[tuple[int, int], ...]) -> str:
    """TF's slice notation (``TensorSlice::DebugString``): ``0,2:-``."""
    return ":".join("-" if length == -1 else f"{start},{length}" for start, length in extents)


# ---------------------------------------------------------------------------
# Public data model.
# ---------------------------------------------------------------------------


# Not frozen: a frozen dataclass's __init__ costs 5x more, paid per entry (200k in real
# checkpoints).  Treat instances as read-only all the same; they stay hashable by value.
@dataclass(slots=True, unsafe_hash=True)
class IndexEntry:
    """One tensor (or one slice of a partitioned TF1 variable) in the index.

    ``slices`` on a full entry lists the slices it is split into (it then
    holds no bytes itself); on a slice entry it holds that slice's own extent.
    Extents are ``(start, length)`` with length -1 meaning the whole dim.
    """

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int
    is_slice: bool = False
    slices: tuple[tuple[tuple[int, int], ...], ...] = ()
    key: bytes = b""

    @property
    def num_elements(self) -> int:
        """Product of the shape (1 for a scalar); bounded by validation."""
        return math.prod(self.shape)

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def has_data(self) -> bool:
        """False for the metadata-only full entry of a partitioned variable."""
        return self.is_slice or not self.slices

    def describe(self) -> str:
        """Name for messages: ``w`` or ``w (slice 0,2:-)``."""
        if self.is_slice:
            return f"{self.name} (slice {format_slice(self.slices[0])})"
        return self.name


def data_filename(prefix: str, shard_id: int, num_shards: int) -> str:
    """``<prefix>.data-%05d-of-%05d`` as TF names data shards."""
    return f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}"


@dataclass
class BundleIndex:
    """A parsed, validated index.

    ``entries`` maps each tensor name to its entry (partitioned variables
    appear once, with ``slices`` set); ``slice_entries`` maps such a name to
    its slice entries, which are the ones that hold data.
    """

    prefix: str
    num_shards: int
    entries: dict[str, IndexEntry]
    slice_entries: dict[str, tuple[IndexEntry, ...]] = field(default_factory=dict)

    @property
    def index_path(self) -> str:
        return self.prefix + _INDEX_SUFFIX

    def data_path(self, shard_id: int) -> str:
        if not 0 <= shard_id < self.num_shards:
            raise ValueError(f"shard {shard_id} out of range 0..{self.num_shards - 1}")
        return data_filename(self.prefix, shard_id, self.num_shards)

    def data_entries(self) -> Iterator[IndexEntry]:
        """Every entry that owns bytes in a data shard (tensors and slices)."""
        for name, entry in self.entries.items():
            if entry.is_slice or not entry.slices:  # has_data, inlined: this runs per entry
                yield entry
            else:
                yield from self.slice_entries.get(name, ())


# ---------------------------------------------------------------------------
# Header and entry validation.
# ---------------------------------------------------------------------------


def _parse_proto(cls: Any, value: bytes, what: str, tensor: str | None = None) -> Any:
    msg = cls()
    try:
        msg.ParseFromString(value)
    except Exception as e:  # DecodeError, RuntimeWarning from upb, ...
        raise _Malformed(f"{what} is not a valid protobuf ({type(e).__name__})", tensor) from None
    return msg


def _check_header(value: bytes) -> int:
    pb = _pb2()
    header = _parse_proto(pb.BundleHeaderProto, value, "index header")
    if not 1 <= header.num_shards <= MAX_NUM_SHARDS:
        raise _Malformed(f"index header has an invalid num_shards ({header.num_shards})")
    if header.endianness != pb.BundleHeaderProto.LITTLE:
        raise _Malformed("checkpoint was written big-endian; only little-endian is supported")
    v = header.version
    if v.producer < 0:
        raise _Malformed(f"index header has an invalid producer version ({v.producer})")
    if v.min_consumer > BUNDLE_CONSUMER_VERSION or BUNDLE_CONSUMER_VERSION in v.bad_consumers:
        raise _Malformed(
            f"checkpoint format version is too new (min_consumer {v.min_consumer}); "
            f"this reader understands version {BUNDLE_CONSUMER_VERSION}"
        )
    return header.num_shards


def _extents_of(slice_proto: Any) -> tuple[tuple[int, int], ...]:
    """TensorSliceProto -> ((start, length), ...); a missing length (TF's
    encoding of a whole dimension) becomes -1, as in ``TensorSlice``."""
    return tuple(
        (e.start, e.length if e.HasField("length") else -1) for e in slice_proto.extent
    )


def _check_extents(
    extents: tuple[tuple[int, int], ...], shape: tuple[int, ...], who: str
) -> None:
    if len(extents) != len(shape):
        raise _Malformed(
            f"slice {format_slice(extents)} has rank {len(extents)} but the tensor has rank {len(shape)}",
            who,
        )
    for (start, length), dim in zip(extents, shape):
        if length == -1:
            if start != 0:
                raise _Malformed(f"slice {format_slice(extents)} has a full extent with start {start}", who)
        elif start < 0 or length < 0 or start + length > dim:
            raise _Malformed(
                f"slice {format_slice(extents)} lies outside shape {list(shape)}", who
            )


def _check_entry(
    key: bytes, value: bytes, num_shards: int, allow_variant: bool,
    passed: dict[tuple[int, tuple[int, ...], int], None] | None = None,
) -> IndexEntry:
    """Validate one BundleEntryProto; return it as an IndexEntry.

    ``passed`` (one dict per index) remembers the ``(dtype, shape, size)``
    triples whose dtype, shape and size checks already passed: 200k scalars
    share one, and those checks depend on nothing else.
    """
    is_slice = key[:1] == b"\x00"
    own_extents: tuple[tuple[int, int], ...] = ()
    if is_slice:
        try:
            name, own_extents = decode_slice_key(key)
        except (ValueError, UnicodeDecodeError):
            raise _Malformed(
                f"entry key {key[:40]!r} starts with \\x00 but is not a valid slice key"
            ) from None
        who = f"{name} (slice {format_slice(own_extents)})"
    else:
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed(f"tensor name {key[:40]!r} is not valid UTF-8") from None
        who = name

    # Runs once per entry (200k in real checkpoints): the common encodings decode in
    # Python without building protobuf objects; anything else goes through protobuf.
    try:
        fields = _decode_tf_entry(value)
    except IndexError:  # cut short: the general decoders judge it
        fields = None
    if fields is None:
        fields = _decode_plain_entry(value)
    if fields is None:
        fields = _decode_entry_proto(value, who)
    dt, shape, unknown_rank, shard_id, offset, size, crc, slices = fields
    if passed is None or slices or (dt, shape, size) not in passed:
        _check_dtype_and_shape(dt, shape, unknown_rank, allow_variant, who)
    if not 0 <= shard_id < num_shards:
        raise _Malformed(f"entry's shard_id {shard_id} is not below num_shards {num_shards}", who)
    if offset < 0 or size < 0:
        raise _Malformed(f"entry has a negative offset or size ({offset}, {size})", who)

    full_slices = tuple(_extents_of(s) for s in slices) if slices else ()
    if is_slice and full_slices:
        raise _Malformed("slice entry itself lists slices", who)
    if full_slices:
        if len(set(full_slices)) != len(full_slices):
            raise _Malformed("entry lists the same slice twice", who)
        for ext in full_slices:
            _check_extents(ext, shape, who)
    elif passed is None or (dt, shape, size) not in passed:
        _check_size(dt, shape, size, who)
        if passed is not None:
            passed[(dt, shape, size)] = None

    # Positional (name, dtype, shape, shard_id, offset, size, crc32c, is_slice, slices, key): faster.
    return IndexEntry(name, dt, shape, shard_id, offset, size, crc, is_slice,
                      (own_extents,) if is_slice else full_slices, key)


def _decode_entry_proto(value: bytes, who: str) -> tuple:
    """A BundleEntryProto's fields, decoded by protobuf: ``(dtype, shape, unknown_rank, shard_id,
    offset, size, crc32c, slices)`` (shape a tuple, slices the TensorSliceProtos)."""
    e = _pb2().BundleEntryProto()
    try:
        e.ParseFromString(value)
    except Exception as exc:  # DecodeError, RuntimeWarning from upb, ...
        raise _Malformed(f"index entry is not a valid protobuf ({type(exc).__name__})", who) from None
    shape_proto = e.shape
    dims = shape_proto.dim
    shape = tuple([d.size for d in dims]) if dims else ()
    return e.dtype, shape, shape_proto.unknown_rank, e.shard_id, e.offset, e.size, e.crc32c, e.slices


_SHAPES: dict[bytes, tuple[int, ...] | None] = {}  # TensorShapeProto bytes -> dims (None: not plain)


def _decode_tf_entry(value: bytes) -> tuple | None:
    """:func:`_decode_plain_entry` for the exact field order TF writes (dtype, shape, shard_id,
    offset, size, crc32c; zeros omitted), in straight-line code with shapes decoded once per
    distinct encoding; None for anything else (then the general decoder runs)."""
    n = len(value)
    if n < 4 or value[0] != 0x08 or value[2] != 0x12 or (value[1] | value[3]) & 0x80:
        return None
    p = 4 + value[3]
    if p > n:
        return None
    shape_bytes = value[4:p]
    shape = _SHAPES.get(shape_bytes, False)
    if shape is False:
        plain = _decode_plain_entry(value[2:p])  # the shape field alone
        shape = None if plain is None else plain[1]
        if len(_SHAPES) < 4096:
            _SHAPES[shape_bytes] = shape
    if shape is None:
        return None
    shard_id = offset = size = 0
    tag = value[p] if p < n else 0
    if tag == 0x18:
        shard_id = value[p + 1]
        if shard_id & 0x80:
            return None
        p += 2
        tag = value[p] if p < n else 0
    if tag == 0x20:
        p += 1
        b = value[p]
        offset = b & 0x7F
        shift = 7
        while b & 0x80:
            if shift > 56:
                return None
            p += 1
            b = value[p]
            offset |= (b & 0x7F) << shift
            shift += 7
        p += 1
        tag = value[p] if p < n else 0
    if tag == 0x28:
        p += 1
        b = value[p]
        size = b & 0x7F
        shift = 7
        while b & 0x80:
            if shift > 56:
                return None
            p += 1
            b = value[p]
            size |= (b & 0x7F) << shift
            shift += 7
        p += 1
        tag = value[p] if p < n else 0
    if tag != 0x35 or p + 5 != n:
        return None
    crc = value[p + 1] | value[p + 2] << 8 | value[p + 3] << 16 | value[p + 4] << 24
    return value[1], shape, False, shard_id, offset, size, crc, ()


def _decode_plain_entry(value: bytes) -> tuple | None:
    """The fields of a BundleEntryProto in the encoding TF writes for an unpartitioned tensor
    (each of dtype, shape, shard_id, offset, size, crc32c at most once; dims with a size only,
    non-negative, short messages), decoded without protobuf; None for anything else, which
    :func:`_decode_entry_proto` then decodes (and refuses if malformed) as before.

    Every value accepted here is the one protobuf would decode: a repeated or
    unknown field, a dim name, a negative number (a 10-byte varint), an int32
    field past 2**31 or a truncated buffer all fall back.
    """
    dtype = shard_id = offset = size = crc = 0
    shape: tuple[int, ...] = ()
    seen = 0
    n = len(value)
    p = 0
    try:
        while p < n:
            tag = value[p]
            p += 1
            if tag == 0x08 or tag == 0x18 or tag == 0x20 or tag == 0x28:  # dtype, shard_id, offset, size
                b = value[p]
                p += 1
                x = b & 0x7F
                shift = 7
                while b & 0x80:
                    if shift > 56:
                        return None  # 10-byte varint: a negative number
                    b = value[p]
                    p += 1
                    x |= (b & 0x7F) << shift
                    shift += 7
                bit = 1 << (tag >> 3)
                if seen & bit:
                    return None
                seen |= bit
                if tag == 0x20:
                    offset = x
                elif tag == 0x28:
                    size = x
                elif x >> 31:
                    return None  # int32 / enum past its range: protobuf's truncation decides
                elif tag == 0x08:
                    dtype = x
                else:
                    shard_id = x
            elif tag == 0x35:  # crc32c, fixed32
                if seen & 0x40 or p + 4 > n:
                    return None
                seen |= 0x40
                crc = value[p] | value[p + 1] << 8 | value[p + 2] << 16 | value[p + 3] << 24
                p += 4
            elif tag == 0x12:  # shape: TensorShapeProto of dims {size}
                length = value[p]
                p += 1
                if seen & 0x4 or length & 0x80 or p + length > n:
                    return None
                seen |= 0x4
                end = p + length
                dims = []
                while p < end:
                    dim_len = value[p + 1]
                    if value[p] != 0x12 or dim_len & 0x80:
                        return None
                    q = p + 2
                    p = q + dim_len
                    if p > end:
                        return None
                    x = 0
                    if dim_len:  # an empty dim message: size 0
                        if value[q] != 0x08:
                            return None
                        q += 1
                        b = value[q]
                        q += 1
                        x = b & 0x7F
                        shift = 7
                        while b & 0x80:
                            if shift > 56:
                                return None
                            b = value[q]
                            q += 1
                            x |= (b & 0x7F) << shift
                            shift += 7
                        if q != p:
                            return None
                    dims.append(x)
                shape = tuple(dims)
            else:
                return None
    except IndexError:
        return None
    return dtype, shape, False, shard_id, offset, size, crc, ()


def _check_dtype_and_shape(
    dt: int, shape: tuple[int, ...], unknown_rank: bool, allow_variant: bool, who: str
) -> None:
    if dt not in _DTYPES:
        if dt - 100 in _DTYPES:
            raise _Malformed(f"entry has reference dtype {dtype_name(dt)}, which is never saved", who)
        raise _Malformed(f"entry has an invalid dtype ({dt})", who)
    if dt == DT_RESOURCE or (dt == DT_VARIANT and not allow_variant):
        raise _Malformed(f"entry has unsupported dtype {dtype_name(dt)}", who)
    if unknown_rank:
        raise _Malformed("entry has a shape of unknown rank", who)
    if len(shape) > MAX_RANK:
        raise _Malformed(f"entry has rank {len(shape)} (more than {MAX_RANK})", who)
    for d in shape:
        if d < 0:
            raise _Malformed(f"entry has an unknown or negative dimension in shape {list(shape)}", who)
        if d > MAX_ELEMENTS:
            raise _Malformed(f"entry has an absurd shape {list(shape)}", who)
    num_elements = 1
    for d in shape:
        num_elements *= d
        if num_elements > MAX_ELEMENTS:
            raise _Malformed(
                f"entry has an absurd shape {list(shape)} (more than 2**40 elements)", who
            )


def _check_size(dt: int, shape: tuple[int, ...], size: int, who: str) -> None:
    """The byte size an unpartitioned entry must have for its dtype and (checked) shape."""
    num_elements = math.prod(shape)
    itemsize = _DTYPES[dt][1]
    if itemsize:
        if size != num_elements * itemsize:
            raise _Malformed(
                f"entry size {size} does not match shape {list(shape)} of "
                f"{dtype_name(dt)} ({num_elements * itemsize} bytes)",
                who,
            )
    elif dt == DT_STRING:
        # [varint64 len]*n + 4-byte checksum: at least n + 4 bytes.
        # 0 is allowed for an empty tensor (ReadStringTensor skips size 0).
        if size < num_elements + 4 and not (num_elements == 0 and size == 0):
            raise _Malformed(
                f"string entry size {size} is too small for {num_elements} elements", who
            )
    else:  # DT_VARIANT: ([varint64 len][bytes][4-byte crc])*n
        if size < 5 * num_elements:
            raise _Malformed(
                f"variant entry size {size} is too small for {num_elements} elements", who
            )


def _link_slices(
    entries: dict[str, IndexEntry], slices: list[IndexEntry]
) -> dict[str, tuple[IndexEntry, ...]]:
    """Check slice entries against the full entries that list them."""
    by_name: dict[str, list[IndexEntry]] = {}
    for s in slices:
        full = entries.get(s.name)
        who = s.describe()
        if full is None or not full.slices:
            raise _Malformed("slice entry has no partitioned full-tensor entry", who)
        ext = s.slices[0]
        if ext not in full.slices:
            raise _Malformed("slice is not listed by its variable's entry", who)
        if s.dtype != full.dtype:
            raise _Malformed(
                f"slice dtype {s.dtype_name} differs from its variable's {full.dtype_name}", who
            )
        _check_extents(ext, full.shape, who)
        want = tuple(d if length == -1 else length for (_, length), d in zip(ext, full.shape))
        if s.shape != want:
            raise _Malformed(f"slice shape {list(s.shape)} does not match its extent", who)
        by_name.setdefault(s.name, []).append(s)
    for name, full in entries.items():
        if full.slices:
            have = {s.slices[0] for s in by_name.get(name, ())}
            for ext in full.slices:
                if ext not in have:
                    raise _Malformed(
                        f"slice {format_slice(ext)} is listed but has no entry", name
                    )
            _check_no_overlap(full.slices, full.shape, name)
    return {name: tuple(v) for name, v in by_name.items()}


def _check_no_overlap(
    slices: tuple[tuple[tuple[int, int], ...], ...], shape: tuple[int, ...], who: str
) -> None:
    """Slices of one variable must be disjoint (TF refuses to restore
    overlapping ones).  Quadratic, but variables have a handful of parts."""
    boxes = [
        [(0, d) if length == -1 else (start, start + length) for (start, length), d in zip(ext, shape)]
        for ext in slices
    ]
    for i in range(len(boxes)):
        for j in range(i):
            if all(max(a0, b0) < min(a1, b1) for (a0, a1), (b0, b1) in zip(boxes[i], boxes[j])):
                raise _Malformed(
                    f"slices {format_slice(slices[j])} and {format_slice(slices[i])} overlap", who
                )


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------


def _normalize_prefix(prefix: str | os.PathLike[str]) -> str:
    """Accept ``x.index`` or ``x.data-00000-of-00001`` for prefix ``x`` —
    a common slip — but only when ``x.index`` is what exists."""
    p = normalize(prefix)
    fs = filesystem(p)
    if not fs.exists(p + _INDEX_SUFFIX):
        if p.endswith(_INDEX_SUFFIX) and fs.isfile(p):
            return p[: -len(_INDEX_SUFFIX)]
        m = _DATA_SUFFIX_RE.search(p)
        if m and fs.exists(p[: m.start()] + _INDEX_SUFFIX):
            return p[: m.start()]
    return p


def _stat_regular(path: str, kind: str, missing: str) -> os.stat_result:
    """stat ``path``, insisting on a regular file (a FIFO would hang a read)."""
    if is_remote(path):
        return _stat_remote(path, kind, missing)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadCheckpointError(path, missing) from None
    except OSError as e:
        raise BadCheckpointError(path, f"cannot access {kind}: {e.strerror or e}") from None
    except ValueError as e:  # embedded NUL, unencodable name
        raise BadCheckpointError(path, f"invalid {kind} path: {e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise BadCheckpointError(path, f"{kind} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise BadCheckpointError(path, f"{kind} is not a regular file")
    return st


def _stat_remote(path: str, kind: str, missing: str) -> os.stat_result:
    """:func:`_stat_regular` on a remote store (objects are regular files; only a size is known)."""
    fs = filesystem(path)
    try:
        if not fs.isfile(path):
            if fs.isdir(path):
                raise BadCheckpointError(path, f"{kind} is a directory, not a file")
            raise BadCheckpointError(path, missing)
        size = fs.size(path)
    except OSError as e:
        raise BadCheckpointError(path, f"cannot access {kind}: {e.strerror or e}") from None
    return os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, size, 0, 0, 0))


def _read_bytes(path: str, kind: str, offset: int, count: int) -> bytes:
    try:
        if is_remote(path):
            return filesystem(path).read_bytes(path, offset, count)
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(count)
    except (OSError, ValueError) as e:
        raise BadCheckpointError(path, f"cannot read {kind}: {getattr(e, 'strerror', None) or e}") from None


def read_index(prefix: str | os.PathLike[str], *, allow_variant: bool = False) -> BundleIndex:
    """Read and validate ``<prefix>.index`` without any TensorFlow C++ code.

    Checks the table structure, the header (version, ``num_shards`` in
    1..100000, little-endian) and every entry (known non-ref dtype, sane
    shape, size consistent with shape and dtype, shard id in range, slice
    entries consistent with their variable).  Does not open data shards; use
    :func:`validate_checkpoint` for that.  ``DT_VARIANT`` tensors (e.g.
    tf.data iterator state) are valid TF checkpoints but are rejected unless
    ``allow_variant`` — ckptsurgery cannot transform them.

    Raises BadCheckpointError naming the index file (and tensor) on any
    problem.
    """
    prefix = _normalize_prefix(prefix)
    path = prefix + _INDEX_SUFFIX
    if not is_remote(path) and not os.path.exists(path) and os.path.isdir(prefix):
        raise BadCheckpointError(
            prefix, "is a directory, not a checkpoint prefix (expected e.g. dir/model.ckpt)"
        )
    st = _stat_regular(path, "index file", "checkpoint index file is missing")
    if st.st_size == 0:
        raise BadCheckpointError(path, "index file is empty (0 bytes)")
    if st.st_size > MAX_INDEX_BYTES:
        raise BadCheckpointError(
            path, f"index file is {st.st_size} bytes, too large to be a checkpoint index"
        )
    data = _read_bytes(path, "index file", 0, MAX_INDEX_BYTES + 1)
    if data.startswith(_LFS_MAGIC):
        raise BadCheckpointError(path, "index file is a Git LFS pointer, not the file (run git lfs pull)")
    try:
        return _parse_index(prefix, data, allow_variant)
    except _Malformed as e:
        raise BadCheckpointError(path, e.message, tensor=e.tensor) from None
    except _UNEXPECTED as e:
        raise _unexpected(path, e) from None


#: Exceptions a parsing bug could leak on hostile input.  Caught as a safety
#: net so callers still get one line, never a traceback; the tests assert
#: the net is never what catches a corrupt file.
_UNEXPECTED = (struct.error, LookupError, ValueError, ArithmeticError, MemoryError, RecursionError)


def _unexpected(path: str, e: BaseException) -> BadCheckpointError:
    return BadCheckpointError(path, f"malformed checkpoint (unexpected {type(e).__name__}: {e})")


@contextmanager
def no_gc_pauses() -> Iterator[None]:
    """Hold the cyclic garbage collector off while building per-entry objects.

    Parsing an index of 200k entries allocates ~1M objects and no cycles; the
    collector, run every 700 allocations, rescans the growing heap and takes
    a third of the time.  Reference counting still frees everything.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _parse_index(prefix: str, data: bytes, allow_variant: bool) -> BundleIndex:
    with no_gc_pauses():
        return _parse_index_entries(prefix, data, allow_variant)


def _parse_index_entries(prefix: str, data: bytes, allow_variant: bool) -> BundleIndex:
    kvs = parse_table(data)
    if not kvs or kvs[0][0] != b"":
        raise _Malformed("index has no header entry")
    num_shards = _check_header(kvs[0][1])
    entries: dict[str, IndexEntry] = {}
    slices: list[IndexEntry] = []
    passed: dict[tuple[int, tuple[int, ...], int], None] = {}
    for key, value in kvs[1:]:
        entry = _check_entry(key, value, num_shards, allow_variant, passed)
        if entry.is_slice:
            slices.append(entry)
        else:
            entries[entry.name] = entry
    slice_entries = _link_slices(entries, slices)
    # Two tensors sharing bytes is never written by TF and means a rewritten
    # or corrupt index; zero-size entries may share an offset.
    by_shard: dict[int, list[IndexEntry]] = {}
    for ent in BundleIndex(prefix, num_shards, entries, slice_entries).data_entries():
        if ent.size:
            shard_list = by_shard.get(ent.shard_id)
            if shard_list is None:
                shard_list = by_shard[ent.shard_id] = []
            shard_list.append(ent)
    for shard_entries in by_shard.values():
        shard_entries.sort(key=_by_offset)  # TF writes in offset order: timsort is linear then
        for a, b in zip(shard_entries, shard_entries[1:]):
            if a.offset + a.size > b.offset:
                raise _Malformed(
                    f"entry overlaps {a.describe()!r} in data shard {a.shard_id}", b.describe()
                )
    return BundleIndex(prefix, num_shards, entries, slice_entries)


_by_offset = operator.attrgetter("offset")


def _check_string_lengths(path: str, entry: IndexEntry) -> None:
    """Check a string tensor's length table: the C++ reader allocates each
    string at its stored length, so a corrupt one must not get that far."""
    n = entry.num_elements
    if entry.size == 0:
        return
    who = entry.describe()
    # Table: n varint64 (1..10 bytes each) + 4-byte checksum, within size.
    want = min(entry.size, 10 * n + 4)
    head = _read_bytes(path, "data shard", entry.offset, want)
    if len(head) != want or want < 4:
        raise BadCheckpointError(path, "data shard is shorter than when it was checked", tensor=who)
    lengths = []
    p = 0
    limit = len(head) - 4
    try:
        for _ in range(n):
            length, p = _varint(head, p, limit, 10, "string length")
            lengths.append(length)
    except _Malformed:
        raise BadCheckpointError(
            path, "string tensor's length table runs past its entry", tensor=who
        ) from None
    (stored,) = struct.unpack_from("<I", head, p)
    packed = b"".join(
        struct.pack("<I", x) if x <= 0xFFFFFFFF else struct.pack("<Q", x) for x in lengths
    )
    if unmask(stored) != crc32c(packed):
        raise BadCheckpointError(
            path, "string tensor's length table fails its checksum", tensor=who
        )
    total = p + 4 + sum(lengths)
    if total != entry.size:
        raise BadCheckpointError(
            path,
            f"string tensor's lengths add up to {total} bytes but its entry says {entry.size}",
            tensor=who,
        )


def validate_checkpoint(
    prefix: str | os.PathLike[str], *, allow_variant: bool = False, check_strings: bool = True
) -> BundleIndex:
    """:func:`read_index` plus checks of the data shards on disk.

    Every shard an entry refers to must exist, be a regular file and not a
    Git LFS pointer, and every entry's ``[offset, offset + size)`` must lie
    inside its shard.  With ``check_strings`` the length table of each string
    tensor is parsed and checksummed too (it is what the C++ reader would
    allocate from).  Tensor bytes themselves are not read.
    """
    index = read_index(prefix, allow_variant=allow_variant)
    try:
        _check_shards(index, check_strings)
    except _UNEXPECTED as e:
        raise _unexpected(index.index_path, e) from None
    return index


def _check_shards(index: BundleIndex, check_strings: bool) -> None:
    shard_sizes: dict[int, int] = {}
    shard_paths: dict[int, str] = {}
    for entry in index.data_entries():
        sid = entry.shard_id
        shard = shard_paths.get(sid)
        if shard is None:
            shard = shard_paths[sid] = index.data_path(sid)
            st = _stat_regular(
                shard,
                "data shard",
                f"data shard {os.path.basename(shard)} is missing "
                f"(index {os.path.basename(index.index_path)} says num_shards={index.num_shards})",
            )
            if st.st_size >= len(_LFS_MAGIC):
                head = _read_bytes(shard, "data shard", 0, len(_LFS_MAGIC))
                if head == _LFS_MAGIC:
                    raise BadCheckpointError(
                        shard, "data shard is a Git LFS pointer, not the data (run git lfs pull)"
                    )
            shard_sizes[sid] = st.st_size
        fsize = shard_sizes[sid]
        if entry.offset + entry.size > fsize:
            raise BadCheckpointError(
                shard,
                f"entry lies outside its data shard (offset {entry.offset} + size "
                f"{entry.size} > file size {fsize})",
                tensor=entry.describe(),
            )
        if check_strings and entry.dtype == DT_STRING:
            _check_string_lengths(shard, entry)
