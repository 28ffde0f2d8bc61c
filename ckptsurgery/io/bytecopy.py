"""Copy a tensor's bytes from one data shard to another, checking its CRC32C on the way.

A tensor in a V2 bundle is a byte range of a data shard, and the index entry
holds the masked CRC32C TensorFlow computed when it wrote them.  Moving an
unchanged tensor is copying that range; checking it is computing the same
CRC32C over what streams through and comparing (TF's ``ReadStringTensor``
rules for strings: the varint lengths count as fixed-width integers).  The
copy goes in chunks of :data:`CHUNK` bytes, so memory stays flat whatever the
tensor's size.  Where both files are on one filesystem the bytes move by
``os.copy_file_range``, inside the kernel (on XFS/btrfs by sharing extents),
and the check reads back what was written: the CRC32C then vouches for the
output's own bytes, and the copy costs what ``cp`` costs plus one read of
page-cache pages, done by a background thread (:class:`ReadBackChecks`) while
the next piece copies.  Across filesystems the bytes stream through this
process, checked on the way.

The CRC32C here is ``google-crc32c`` (hardware accelerated, GB/s); the
pure-Python one in :mod:`ckptsurgery.io.index` is for small index files.
"""

from __future__ import annotations

import errno
import os
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import google_crc32c

from .fs import filesystem, is_remote
from .fs import cache as readahead
from .index import DT_STRING, BundleIndex, IndexEntry
from .table import mask, unmask
from .index_writer import varint

#: Bytes read and written per step: large enough for full-speed I/O, small next to any budget.
CHUNK = 8 << 20


@dataclass(frozen=True)
class RawTensor:
    """Where a pass-through tensor's bytes are: its entry and the entries holding its data.

    A plain tensor's ``parts`` is ``(entry,)``; a TF1 partitioned variable's
    ``entry`` only lists its slices, and ``parts`` are the slice entries.
    """

    index: BundleIndex
    entry: IndexEntry
    parts: tuple[IndexEntry, ...]

    @property
    def nbytes(self) -> int:
        return sum(part.size for part in self.parts)


class ChecksumMismatch(Exception):
    """The bytes copied do not have the CRC32C their index entry records."""

    def __init__(self, stored: int, computed: int):
        super().__init__(f"stored CRC32C {stored:08x}, computed {computed:08x}")
        self.stored = stored
        self.computed = computed


def crc32c_extend(crc: int, data: bytes) -> int:
    """CRC32C of what ``crc`` covered followed by ``data`` (``crc32c::Extend``)."""
    return google_crc32c.extend(crc, data)


class _StringChecksum:
    """The CRC32C TF records for a string tensor, fed its on-disk bytes in any chunking.

    On disk: ``[varint64 len]*n [masked crc of the lengths] [bytes]``; the CRC
    covers each length as a little-endian uint32 (uint64 past 4 GiB), then the
    rest exactly as stored.
    """

    def __init__(self, num_elements: int):
        self.remaining = num_elements
        self.crc = 0
        self._partial = b""  # a varint cut by a chunk boundary

    def update(self, data: bytes) -> None:
        if not self.remaining:
            self.crc = crc32c_extend(self.crc, data)
            return
        buf = self._partial + data
        packed = bytearray()
        pos, end = 0, len(buf)
        while self.remaining and pos < end:
            value, shift, p, complete = 0, 0, pos, False
            while p < end and p - pos < 10:
                byte = buf[p]
                p += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    complete = True
                    break
            if not complete and p - pos < 10:
                break  # a varint cut by the chunk boundary: wait for the next chunk
            # (an overlong varint is corrupt data: counted as it is, the CRC comparison fails)
            value &= 2**64 - 1
            packed += struct.pack("<I", value) if value <= 0xFFFFFFFF else struct.pack("<Q", value)
            self.remaining -= 1
            pos = p
        self.crc = crc32c_extend(self.crc, bytes(packed))
        self._partial = buf[pos:] if self.remaining else b""
        if not self.remaining and pos < end:
            self.crc = crc32c_extend(self.crc, buf[pos:])

    @property
    def complete(self) -> bool:
        """Every length was read (a table cut short is corrupt whatever the CRC says)."""
        return not self.remaining


def _checksum_for(entry: IndexEntry):
    if entry.dtype == DT_STRING and entry.size:
        return _StringChecksum(entry.num_elements)
    return _RawChecksum()


class _RawChecksum:
    """The CRC32C of fixed-size tensors: the bytes as stored."""

    complete = True

    def __init__(self) -> None:
        self.crc = 0

    def update(self, data: bytes) -> None:
        self.crc = crc32c_extend(self.crc, data)


class ShardOutput:
    """One output data shard, appended to with explicit offsets (no Python buffering)."""

    def __init__(self, path: str):
        self.path = path
        # Read access too: after an in-kernel copy the CRC32C is checked on the bytes written.
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        self.size = 0
        self.device = os.fstat(self.fd).st_dev

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, self.size)
            self.size += written
            view = view[written:]

    def read(self, offset: int, size: int) -> bytes:
        """Bytes already written (page-cache reads), for checking an in-kernel copy."""
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SourceReadError(Exception):
    """An input data shard could not be opened or read (an input problem, not the destination's)."""


class ShardInput:
    """One input data shard, open for ranged reads (local ``pread``, or a remote store through
    :mod:`ckptsurgery.io.fs`, taking what :meth:`Checkpoint.prefetch` read ahead when it can)."""

    def __init__(self, path: str):
        self.path = path
        self._remote = is_remote(path)
        try:
            self._file = filesystem(path).open_reader(path)
        except OSError as exc:
            raise SourceReadError(f"cannot open data shard: {exc.strerror or exc}") from None
        self.fd = getattr(self._file, "fd", -1)  # local only: for copy_file_range
        self.device = self._file.device

    def read(self, offset: int, size: int) -> bytes:
        data = readahead.read_slice(self.path, offset, size) if self._remote else None
        try:
            if data is None:
                data = self._file.read(offset, size)
        except OSError as exc:
            raise SourceReadError(f"cannot read data shard: {exc.strerror or exc}") from None
        if len(data) != size:
            raise EOFError(f"data shard ends at {offset + len(data)}, inside a tensor that needs {offset + size}")
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.fd = -1


def copy_entry_bytes(src: ShardInput, entry: IndexEntry, dst: ShardOutput, *, crc_check: bool = True,
                     checks: "ReadBackChecks | None" = None) -> int:
    """Append ``entry``'s bytes from ``src`` to ``dst``; returns their offset in ``dst``.

    The bytes move by ``copy_file_range`` when the kernel allows (then, with
    ``crc_check``, the written range is read back and checked), else they
    stream through this process and are checked on the way.  A mismatch
    raises :class:`ChecksumMismatch` (the caller discards the output).

    With ``checks``, an in-kernel copy goes in pieces of :data:`PIECE` bytes
    and each piece's read-back is handed to ``checks``' background thread, so
    the CRC32C of piece k runs while piece k+1 (or the next tensor) copies; a
    mismatch then surfaces from ``checks`` (:meth:`ReadBackChecks.wait`, or a
    later call to this function) as a :class:`DeferredCheckFailure` naming
    this entry.  The caller must wait for ``checks`` before it closes ``dst``
    or publishes anything.
    """
    _align_like_source(src, entry, dst)
    offset = dst.size
    if checks is not None and crc_check and entry.size >= BACKGROUND_MIN_BYTES:
        checks.raise_failure()
        if _copy_in_pieces(src, entry, dst, checks):
            return offset
    elif _copy_in_kernel(src, entry.offset, entry.size, dst):
        if crc_check:
            _check_crc(lambda pos, size: dst.read(offset + pos, size), entry)
        return offset
    _check_crc(lambda pos, size: _append(dst, src.read(entry.offset + pos, size)), entry, enabled=crc_check)
    return offset


#: Block size up to which a large tensor's place in the output copies its place in the input, and
#: "large": see :func:`_align_like_source`.
SHARE_BLOCK = 4096
SHARE_MIN_BYTES = 1 << 20


def _align_like_source(src: ShardInput, entry: IndexEntry, dst: ShardOutput) -> None:
    """Start a large tensor at the output offset congruent to its input offset modulo the block size.

    On a filesystem with shared extents (XFS reflink, btrfs) ``copy_file_range``
    shares blocks instead of copying them only where both offsets are block
    aligned; TF packs tensors back to back, so one odd-sized tensor would shift
    every later one off the blocks.  The skipped bytes (under 4 KiB, at most
    0.4% of a tensor of 1 MiB or more) are a hole in the output file, which no
    entry refers to; readers go by each entry's offset.
    """
    # Only where the kernel copies (local files on one device): the hole relies on writes at
    # explicit offsets, which a streamed (remote) output need not support.
    if (entry.size >= SHARE_MIN_BYTES and hasattr(os, "copy_file_range") and isinstance(dst.device, int)
            and src.device == dst.device):
        dst.size += (entry.offset - dst.size) % SHARE_BLOCK


#: Smaller tensors are checked right after their copy: handing 200k scalars to a thread costs more
#: than their CRC32C.
BACKGROUND_MIN_BYTES = 1 << 20

#: Bytes copied in the kernel before their read-back check is queued (see :func:`copy_entry_bytes`):
#: small enough that the check of one piece overlaps the copy of the next within a large tensor.
PIECE = 32 << 20


class DeferredCheckFailure(Exception):
    """A background read-back check failed: ``error`` (a :class:`ChecksumMismatch`, ``EOFError`` or
    ``OSError``) for the bytes of ``entry`` copied from ``source`` (not the tensor copying now)."""

    def __init__(self, source: str, entry: IndexEntry, error: BaseException):
        super().__init__(str(error))
        self.source = source
        self.entry = entry
        self.error = error


class ReadBackChecks:
    """One background thread that reads back in-kernel copies and checks their CRC32C, in order.

    ``copy_file_range`` and ``pread`` release the GIL, so the copy of the next
    piece proceeds while this thread reads back and hashes the last one
    (``google_crc32c.extend`` holds the GIL, but it runs at ~15 GB/s; the
    read-back's page-cache memcpy is most of the check's cost).  At most
    ``depth`` pieces wait: a slow check holds the copy back instead of letting
    unchecked work pile up.  The first failure is kept and raised by
    :meth:`wait` / :meth:`raise_failure`; later checks are skipped.
    """

    def __init__(self, depth: int = 8):
        self._depth = depth
        self._pending: list[Future] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckptsurgery-crc")
        self._failure: DeferredCheckFailure | None = None

    def submit(self, check: Callable[[], None], source: str, entry: IndexEntry) -> None:
        """Queue ``check`` (raising on a bad range); blocks while ``depth`` checks are pending."""
        while len(self._pending) >= self._depth:
            self._pending.pop(0).result()
        self.raise_failure()
        self._pending.append(self._pool.submit(self._run, check, source, entry))

    def _run(self, check: Callable[[], None], source: str, entry: IndexEntry) -> None:
        if self._failure is not None:
            return
        try:
            check()
        except (ChecksumMismatch, EOFError, OSError) as exc:
            self._failure = DeferredCheckFailure(source, entry, exc)

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def wait(self) -> None:
        """Every queued check done; raises the first failure (:class:`DeferredCheckFailure`)."""
        while self._pending:
            self._pending.pop(0).result()
        self.raise_failure()

    def close(self) -> None:
        """Stop (pending checks are dropped or finish); the thread is gone when this returns."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _copy_in_pieces(src: ShardInput, entry: IndexEntry, dst: ShardOutput, checks: ReadBackChecks) -> bool:
    """Kernel-copy ``entry`` piece by piece, queueing each piece's read-back CRC32C on ``checks``;
    False (nothing copied) where the kernel cannot copy between these files."""
    start = dst.size
    checksum = _checksum_for(entry)
    position = 0
    while True:
        size = min(PIECE, entry.size - position)
        if not _copy_in_kernel(src, entry.offset + position, size, dst):
            if position == 0:
                return False
            _copy_through(src, entry.offset + position, size, dst)  # the kernel gave up mid-tensor
        checks.submit(_piece_check(dst, start, position, size, checksum), src.path, entry)
        position += size
        if position >= entry.size:
            break
    checks.submit(_final_check(checksum, entry), src.path, entry)
    return True


def _piece_check(dst: ShardOutput, start: int, position: int, size: int, checksum) -> Callable[[], None]:
    def check() -> None:
        done = 0
        while done < size:
            data = dst.read(start + position + done, min(CHUNK, size - done))
            if not data:
                raise EOFError(f"output ends inside a tensor copied to offset {start}")
            checksum.update(data)
            done += len(data)
    return check


def _final_check(checksum, entry: IndexEntry) -> Callable[[], None]:
    def check() -> None:
        if mask(checksum.crc) != entry.crc32c or not checksum.complete:
            raise ChecksumMismatch(unmask(entry.crc32c), checksum.crc)
    return check


def _copy_through(src: ShardInput, offset: int, size: int, dst: ShardOutput) -> None:
    """Copy a range through this process (where the kernel stopped copying part-way)."""
    done = 0
    while done < size:
        dst.write(src.read(offset + done, min(CHUNK, size - done)))
        done += min(CHUNK, size - done)


def _append(dst: ShardOutput, data: bytes) -> bytes:
    dst.write(data)
    return data


def _check_crc(read_at, entry: IndexEntry, *, enabled: bool = True) -> None:
    """Stream ``entry.size`` bytes through ``read_at(position, size)`` in chunks; with ``enabled``,
    raise :class:`ChecksumMismatch` unless their CRC32C is the one the entry records."""
    checksum = _checksum_for(entry) if enabled else None
    position = 0
    while position < entry.size:
        data = read_at(position, min(CHUNK, entry.size - position))
        if not data:
            raise EOFError(f"data shard ends inside a tensor that needs {entry.size} bytes")
        if checksum is not None:
            checksum.update(data)
        position += len(data)
    if checksum is not None and (mask(checksum.crc) != entry.crc32c or not checksum.complete):
        raise ChecksumMismatch(unmask(entry.crc32c), checksum.crc)


def _copy_in_kernel(src: ShardInput, offset: int, size: int, dst: ShardOutput) -> bool:
    """``os.copy_file_range`` the range; False (nothing copied) where it is unavailable."""
    if not hasattr(os, "copy_file_range") or src.device != dst.device:
        return False
    copied = 0
    while copied < size:
        try:
            n = os.copy_file_range(src.fd, dst.fd, size - copied, offset + copied, dst.size)
        except OSError as exc:
            if copied == 0 and exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                return False
            raise
        if n == 0:
            raise EOFError(f"data shard ends at {offset + copied}, inside a tensor that needs {offset + size}")
        copied += n
        dst.size += n
    return True


def encode_string_tensor(values: list[bytes]) -> tuple[bytes, int]:
    """A string tensor's on-disk bytes and the masked CRC32C for its entry (TF's ``WriteStringTensor``)."""
    lengths = b"".join(varint(len(v)) for v in values)
    crc = crc32c_extend(0, b"".join(
        struct.pack("<I", len(v)) if len(v) <= 0xFFFFFFFF else struct.pack("<Q", len(v)) for v in values))
    length_checksum = struct.pack("<I", mask(crc))
    crc = crc32c_extend(crc, length_checksum)
    for v in values:
        crc = crc32c_extend(crc, v)
    return lengths + length_checksum + b"".join(values), mask(crc)


def decode_string_elements(data: bytes, count: int) -> tuple[list[bytes], int]:
    """The ``count`` strings of a string tensor's on-disk bytes, and where they end.

    The layout (TF's tensor_bundle): ``[varint64 length] * count``, the masked
    CRC32C of the lengths (4 bytes), then the strings' bytes.  The CRC32C is
    not checked here; a layout cut short raises :class:`EOFError`.
    """
    lengths, pos = [], 0
    for _ in range(count):
        length, shift = 0, 0
        while True:
            if pos >= len(data) or shift > 63:
                raise EOFError("string tensor: its length table is cut short")
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        lengths.append(length)
    pos += 4
    values = []
    for length in lengths:
        values.append(data[pos:pos + length])
        pos += length
    if pos > len(data):
        raise EOFError("string tensor: its bytes are cut short")
    return values, pos


def decode_string_scalar(data: bytes, entry: IndexEntry) -> bytes:
    """The one string of a scalar string tensor's on-disk bytes, after checking its CRC32C."""
    checksum = _StringChecksum(1)
    checksum.update(data)
    if mask(checksum.crc) != entry.crc32c or not checksum.complete:
        raise ChecksumMismatch(unmask(entry.crc32c), checksum.crc)
    try:
        (value,), end = decode_string_elements(data, 1)
    except EOFError:
        raise ChecksumMismatch(unmask(entry.crc32c), checksum.crc) from None
    if end != len(data):
        raise ChecksumMismatch(unmask(entry.crc32c), checksum.crc)
    return value
