"""Pure-Python reader and validator for TensorFlow V2 checkpoint indexes.

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

import math
import operator
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, Iterator

from ckptsurgery.errors import BadCheckpointError

__all__ = [
    "BundleIndex",
    "IndexEntry",
    "crc32c",
    "masked_crc32c",
    "mask",
    "unmask",
    "read_index",
    "validate_checkpoint",
    "parse_table",
    "decode_slice_key",
    "encode_slice_key",
    "data_filename",
    "dtype_name",
    "dtype_itemsize",
    "format_slice",
    "TABLE_MAGIC",
    "MAX_NUM_SHARDS",
    "MAX_ELEMENTS",
]

# ---------------------------------------------------------------------------
# Limits.  Generous for real checkpoints, small enough that nothing we (or the
# C++ reader later) allocate from a corrupt field can be absurd.
# ---------------------------------------------------------------------------

#: Footer magic of TF's table format (``kTableMagicNumber``).
TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # 2 * BlockHandle::kMaxEncodedLength (20) + 8 magic
BLOCK_TRAILER_SIZE = 5  # 1 byte type + 4 byte masked crc
#: Sanity bound for the header's ``num_shards``.
MAX_NUM_SHARDS = 100_000
#: No tensor may claim more elements than this (or a dimension this large).
MAX_ELEMENTS = 1 << 40
#: ``TensorShape::MaxDimensions()``; more makes the C++ reader CHECK-fail.
MAX_RANK = 254
#: Largest index we parse.  Real ones are KBs to a few MB; pure-Python CRC
#: of more would be slow and such a file is not an index anyway.
MAX_INDEX_BYTES = 256 << 20
#: Largest block after snappy decompression.
MAX_BLOCK_BYTES = 256 << 20
#: The version this reader (like TF's, ``kTensorBundleVersion``) consumes.
BUNDLE_CONSUMER_VERSION = 1

_LFS_MAGIC = b"version https://git-lfs"
_INDEX_SUFFIX = ".index"
_DATA_SUFFIX_RE = re.compile(r"\.data-\d{5}-of-\d{5}$")

# ---------------------------------------------------------------------------
# CRC32C (Castagnoli), slice-by-8, pure Python.
# ---------------------------------------------------------------------------

_CRC_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8


def _make_crc_tables() -> tuple[list[int], ...]:
    """Build the 8 slice-by-8 tables; table 0 is the classic byte table."""
    t0 = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _CRC_POLY if c & 1 else c >> 1
        t0.append(c)
    tables = [t0]
    for _ in range(7):
        prev = tables[-1]
        tables.append([(prev[i] >> 8) ^ t0[prev[i] & 0xFF] for i in range(256)])
    return tuple(tables)


_CRC_TABLES = _make_crc_tables()


try:  # C implementation (GB/s): a 5 MB index of 200k entries is checked in milliseconds
    import google_crc32c as _fast_crc
except ImportError:  # pragma: no cover - a declared dependency; the pure-Python path stays correct
    _fast_crc = None


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``crc`` (like ``crc32c::Extend``).

    Uses ``google_crc32c`` (C) when installed, else pure Python, so
    validation never needs TF's C++ code; slice-by-8 (eight bytes per loop
    iteration) makes the fallback ~15 MB/s.
    """
    if _fast_crc is not None:
        return _fast_crc.extend(crc, bytes(data) if not isinstance(data, bytes) else data)
    return _crc32c_python(data, crc)


def _crc32c_python(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Pure-Python slice-by-8 CRC32C (the fallback of :func:`crc32c`)."""
    t0, t1, t2, t3, t4, t5, t6, t7 = _CRC_TABLES
    mv = memoryview(data).cast("B")
    n = len(mv)
    n8 = n - (n & 7)
    c = (crc ^ 0xFFFFFFFF) & 0xFFFFFFFF
    if n8:
        for lo, hi in struct.iter_unpack("<II", mv[:n8]):
            lo ^= c
            c = (
                t7[lo & 0xFF]
                ^ t6[(lo >> 8) & 0xFF]
                ^ t5[(lo >> 16) & 0xFF]
                ^ t4[lo >> 24]
                ^ t3[hi & 0xFF]
                ^ t2[(hi >> 8) & 0xFF]
                ^ t1[(hi >> 16) & 0xFF]
                ^ t0[hi >> 24]
            )
    for b in mv[n8:]:
        c = t0[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """The masked CRC TF stores on disk (``crc32c::Mask(crc32c::Value(data))``)."""
    return mask(crc32c(data))


def mask(crc: int) -> int:
    """Mask a CRC: storing raw CRCs of data that embeds CRCs is weak, so TF
    rotates right by 15 bits and adds a constant."""
    crc &= 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    """Inverse of :func:`mask`."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


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


def dtype_itemsize(dtype: int) -> int:
    """Bytes per element on disk; 0 for string/variant/resource."""
    return _DTYPES[dtype][1]


# ---------------------------------------------------------------------------
# Errors.  Low-level parsers raise _Malformed (no path known there); the
# public functions attach the file and re-raise as BadCheckpointError.
# ---------------------------------------------------------------------------


class _Malformed(Exception):
    def __init__(self, message: str, tensor: str | None = None):
        super().__init__(message)
        self.message = message
        self.tensor = tensor


def _pb2() -> Any:
    """The bundle protos, declared in :mod:`ckptsurgery.io.protos`: importing TF's own
    ``tensorflow.core...`` runs ``tensorflow/__init__`` (seconds), which reading an
    index should not pay."""
    from ckptsurgery.io.protos import bundle_protos

    return bundle_protos()


# ---------------------------------------------------------------------------
# Varints and the table format.
# ---------------------------------------------------------------------------


def _varint(buf: bytes, pos: int, end: int, max_bytes: int, what: str) -> tuple[int, int]:
    """Decode a little-endian base-128 varint of at most ``max_bytes`` bytes
    that must end before ``end``; returns (value, new position)."""
    result = 0
    shift = 0
    for _ in range(max_bytes):
        if pos >= end:
            raise _Malformed(f"{what}: varint runs past the end of its data")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            limit = 32 if max_bytes == 5 else 64
            if result >> limit:
                raise _Malformed(f"{what}: varint overflows {limit} bits")
            return result, pos
        shift += 7
    raise _Malformed(f"{what}: varint is longer than {max_bytes} bytes")


def _decode_handle(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int, int]:
    """Decode a BlockHandle; returns (offset, size, new position)."""
    offset, pos = _varint(buf, pos, end, 10, what)
    size, pos = _varint(buf, pos, end, 10, what)
    return offset, size, pos


def _snappy_decompress(src: bytes, what: str) -> bytes:
    """Decompress a raw snappy block.

    TF's table reader accepts snappy blocks (type 1); bundle writers have
    disabled compression since TF 1.2, but TF 1.1 could write it, so old
    checkpoints may need this.

    Bounded: the declared length is capped before allocating, and every
    literal and copy is checked against the input and the output so far.
    """
    n = len(src)
    ulen, p = _varint(src, 0, n, 5, f"{what} (snappy length)")
    # A snappy copy element expands at most 64 bytes from 2-3 input bytes.
    if ulen > MAX_BLOCK_BYTES or ulen > 32 * n + 64:
        raise _Malformed(f"{what}: snappy block claims an implausible size ({ulen} bytes from {n})")
    out = bytearray()
    while p < n:
        tag = src[p]
        p += 1
        kind = tag & 3
        if kind == 0:
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                if p + extra > n:
                    raise _Malformed(f"{what}: truncated snappy literal")
                length = int.from_bytes(src[p : p + extra], "little")
                p += extra
            length += 1
            if length > n - p or len(out) + length > ulen:
                raise _Malformed(f"{what}: snappy literal overruns its block")
            out += src[p : p + length]
            p += length
            continue
        if kind == 1:
            if p >= n:
                raise _Malformed(f"{what}: truncated snappy copy")
            length = ((tag >> 2) & 7) + 4
            offset = ((tag >> 5) << 8) | src[p]
            p += 1
        else:
            width = 2 if kind == 2 else 4
            if p + width > n:
                raise _Malformed(f"{what}: truncated snappy copy")
            length = (tag >> 2) + 1
            offset = int.from_bytes(src[p : p + width], "little")
            p += width
        if offset == 0 or offset > len(out) or len(out) + length > ulen:
            raise _Malformed(f"{what}: snappy copy points outside its block")
        start = len(out) - offset
        if offset >= length:
            out += out[start : start + length]
        else:  # overlapping copy repeats the last `offset` bytes
            for i in range(length):
                out.append(out[start + i])
    if len(out) != ulen:
        raise _Malformed(f"{what}: snappy block decompresses to {len(out)} bytes, expected {ulen}")
    return bytes(out)


def _read_block(data: bytes, offset: int, size: int, limit: int, what: str) -> bytes:
    """Return the contents of the block at (offset, size) after checking that
    it and its trailer lie in ``data[:limit]``, its CRC and its type."""
    if size > limit or offset > limit - size - BLOCK_TRAILER_SIZE:
        raise _Malformed(
            f"{what} (offset {offset}, size {size}) lies outside the table "
            f"({limit} bytes before the footer): index is truncated or corrupt"
        )
    end = offset + size
    (stored,) = struct.unpack_from("<I", data, end + 1)
    if unmask(stored) != crc32c(memoryview(data)[offset : end + 1]):
        raise _Malformed(f"{what} at offset {offset} fails its CRC32C check: index is corrupt")
    ctype = data[end]
    contents = data[offset:end]
    if ctype == 0:
        return contents
    if ctype == 1:
        return _snappy_decompress(contents, what)
    raise _Malformed(f"{what} has unknown compression type {ctype}")


def _parse_block(block: bytes, what: str) -> list[tuple[bytes, bytes]]:
    """Decode every (key, value) of one block, checking the restart array,
    the entry framing and that restart points hold full keys."""
    n = len(block)
    if n < 4:
        raise _Malformed(f"{what} is too short ({n} bytes) to hold a restart count")
    (num_restarts,) = struct.unpack_from("<I", block, n - 4)
    if num_restarts == 0 or num_restarts > (n - 4) // 4:
        raise _Malformed(f"{what} has an impossible restart count ({num_restarts} in {n} bytes)")
    limit = n - 4 - 4 * num_restarts
    restarts = struct.unpack_from(f"<{num_restarts}I", block, limit)
    if restarts[0] != 0:
        raise _Malformed(f"{what}: first restart point is {restarts[0]}, not 0")
    for a, b in zip(restarts, restarts[1:]):
        if b <= a:
            raise _Malformed(f"{what}: restart points are not increasing")
    if limit == 0:  # empty block: only the single restart at 0 is allowed
        if num_restarts != 1:
            raise _Malformed(f"{what}: empty block with {num_restarts} restart points")
        return []
    if restarts[-1] >= limit:
        raise _Malformed(f"{what}: restart point {restarts[-1]} lies outside the entries")
    restart_set = set(restarts)
    seen_restarts = 0
    out: list[tuple[bytes, bytes]] = []
    key = b""
    p = 0
    while p < limit:
        start = p
        if p + 3 <= limit and block[p] < 0x80 and block[p + 1] < 0x80 and block[p + 2] < 0x80:
            shared, non_shared, vlen = block[p], block[p + 1], block[p + 2]  # the common case: 1-byte varints
            p += 3
        else:
            shared, p = _varint(block, p, limit, 5, what)
            non_shared, p = _varint(block, p, limit, 5, what)
            vlen, p = _varint(block, p, limit, 5, what)
        if shared > len(key):
            raise _Malformed(f"{what}: entry at {start} shares {shared} bytes of a {len(key)}-byte key")
        if non_shared > limit - p or vlen > limit - p - non_shared:
            raise _Malformed(f"{what}: entry at {start} runs past the end of the block")
        if start in restart_set:
            if shared != 0:
                raise _Malformed(f"{what}: restart entry at {start} is prefix-compressed")
            seen_restarts += 1
        key = key[:shared] + block[p : p + non_shared]
        p += non_shared
        out.append((key, block[p : p + vlen]))
        p += vlen
    if seen_restarts != num_restarts:
        raise _Malformed(f"{what}: restart array does not point at entry boundaries")
    return out


def parse_table(data: bytes) -> list[tuple[bytes, bytes]]:
    """Parse a whole TF table (SSTable) held in memory; returns its (key,
    value) pairs in order.

    Checks the footer magic, every handle against the file size, every
    block's trailer (type and masked CRC32C), the block framing, that keys
    are strictly increasing and that the index block's separator keys agree
    with the data blocks.  Raises ``_Malformed`` (wrapped by the callers).
    """
    n = len(data)
    if n < FOOTER_SIZE:
        raise _Malformed(
            f"index file is too short ({n} bytes) to be a TensorFlow V2 checkpoint index"
        )
    footer_at = n - FOOTER_SIZE
    (magic,) = struct.unpack_from("<Q", data, n - 8)
    if magic != TABLE_MAGIC:
        raise _Malformed("index footer magic is wrong: not a TensorFlow V2 checkpoint index")
    meta_off, meta_size, p = _decode_handle(data, footer_at, n - 8, "footer metaindex handle")
    idx_off, idx_size, p = _decode_handle(data, p, n - 8, "footer index handle")

    index_block = _read_block(data, idx_off, idx_size, footer_at, "index block")
    meta_block = _read_block(data, meta_off, meta_size, footer_at, "metaindex block")
    _parse_block(meta_block, "metaindex block")
    data_limit = min(meta_off, idx_off)

    out: list[tuple[bytes, bytes]] = []
    prev_end = 0
    prev_sep: bytes | None = None
    for i, (sep, handle) in enumerate(_parse_block(index_block, "index block")):
        what = f"data block {i}"
        off, size, hp = _decode_handle(handle, 0, len(handle), f"index block entry {i}")
        if hp != len(handle):
            raise _Malformed(f"index block entry {i} has trailing bytes after its block handle")
        if prev_sep is not None and sep <= prev_sep:
            raise _Malformed(f"index block keys are not strictly increasing (entry {i})")
        if off < prev_end:
            raise _Malformed(f"{what} overlaps the previous block")
        block = _read_block(data, off, size, data_limit, what)
        kvs = _parse_block(block, what)
        if not kvs:
            raise _Malformed(f"{what} is empty")
        for key, value in kvs:
            if out and key <= out[-1][0]:
                raise _Malformed(f"{what}: keys are not strictly increasing")
            out.append((key, value))
        if kvs[-1][0] > sep:
            raise _Malformed(f"index block key {i} is smaller than the last key of {what}")
        prev_sep = sep
        prev_end = off + size + BLOCK_TRAILER_SIZE
    return out


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
    key: bytes, value: bytes, num_shards: int, allow_variant: bool
) -> IndexEntry:
    """Validate one BundleEntryProto; return it as an IndexEntry."""
    pb = _pb2()
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

    # Runs once per entry (200k in real checkpoints): each proto field is read once into a local.
    e = pb.BundleEntryProto()
    try:
        e.ParseFromString(value)
    except Exception as exc:  # DecodeError, RuntimeWarning from upb, ...
        raise _Malformed(f"index entry is not a valid protobuf ({type(exc).__name__})", who) from None
    dt = e.dtype
    dtype_info = _DTYPES.get(dt)
    if dtype_info is None:
        if dt - 100 in _DTYPES:
            raise _Malformed(f"entry has reference dtype {dtype_name(dt)}, which is never saved", who)
        raise _Malformed(f"entry has an invalid dtype ({dt})", who)
    if dt == DT_RESOURCE or (dt == DT_VARIANT and not allow_variant):
        raise _Malformed(f"entry has unsupported dtype {dtype_name(dt)}", who)

    shape_proto = e.shape
    if shape_proto.unknown_rank:
        raise _Malformed("entry has a shape of unknown rank", who)
    dims = shape_proto.dim
    if len(dims) > MAX_RANK:
        raise _Malformed(f"entry has rank {len(dims)} (more than {MAX_RANK})", who)
    shape = tuple([d.size for d in dims]) if dims else ()
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

    shard_id, offset, size, slices = e.shard_id, e.offset, e.size, e.slices
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
    else:
        itemsize = dtype_info[1]
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

    # Positional (name, dtype, shape, shard_id, offset, size, crc32c, is_slice, slices, key): faster.
    return IndexEntry(name, dt, shape, shard_id, offset, size, e.crc32c, is_slice,
                      (own_extents,) if is_slice else full_slices, key)


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
    p = os.fspath(prefix)
    if not os.path.exists(p + _INDEX_SUFFIX):
        if p.endswith(_INDEX_SUFFIX) and os.path.isfile(p):
            return p[: -len(_INDEX_SUFFIX)]
        m = _DATA_SUFFIX_RE.search(p)
        if m and os.path.exists(p[: m.start()] + _INDEX_SUFFIX):
            return p[: m.start()]
    return p


def _stat_regular(path: str, kind: str, missing: str) -> os.stat_result:
    """stat ``path``, insisting on a regular file (a FIFO would hang a read)."""
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


def _read_bytes(path: str, kind: str, offset: int, count: int) -> bytes:
    try:
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
    if not os.path.exists(path) and os.path.isdir(prefix):
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


def _parse_index(prefix: str, data: bytes, allow_variant: bool) -> BundleIndex:
    kvs = parse_table(data)
    if not kvs or kvs[0][0] != b"":
        raise _Malformed("index has no header entry")
    num_shards = _check_header(kvs[0][1])
    entries: dict[str, IndexEntry] = {}
    slices: list[IndexEntry] = []
    for key, value in kvs[1:]:
        entry = _check_entry(key, value, num_shards, allow_variant)
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
