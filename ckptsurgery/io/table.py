"""TensorFlow's table format (the SSTable an ``.index`` file is), decoded in pure Python.

The codec only: CRC32C (masked, as the table stores it), varints, block
handles, snappy, blocks and the footer, :func:`parse_table` returning the
``(key, value)`` pairs.  What the pairs mean (the bundle header and one
entry per tensor) is :mod:`ckptsurgery.io.index`; writing a table is
:mod:`ckptsurgery.io.index_writer`.  Every length is bounded by the data
given before anything is allocated.
"""

from __future__ import annotations

import struct

#: Footer magic of TF's table format (``kTableMagicNumber``).
TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # 2 * BlockHandle::kMaxEncodedLength (20) + 8 magic
BLOCK_TRAILER_SIZE = 5  # 1 byte type + 4 byte masked crc
#: Largest block after snappy decompression.
MAX_BLOCK_BYTES = 256 << 20


class _Malformed(Exception):
    def __init__(self, message: str, tensor: str | None = None):
        super().__init__(message)
        self.message = message
        self.tensor = tensor


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
