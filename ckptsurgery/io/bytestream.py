"""A tensor's bytes read in bounded pieces, each byte range's CRC32C checked as TensorFlow's reader checks it.

``verify`` and ``--verify`` must not hold a whole tensor: a 6 GB embedding is
checked in pieces of a few MB.  A tensor in a V2 bundle is one byte range of a
data shard, or, for a TF1 partitioned variable, one range per saved part
(``segments``); :class:`TensorBytes` reads them in order through
:class:`~ckptsurgery.io.bytecopy.ShardInput` (local or remote, see
:mod:`ckptsurgery.io.fs`), extends each range's CRC32C over what it reads
(strings: TF's rule, lengths as fixed-width integers, see
:mod:`ckptsurgery.io.bytecopy`) and compares it with the index entry's masked
CRC32C once the range's last byte is read.  No TensorFlow import.
"""

from __future__ import annotations

from typing import Iterator, Mapping

from .bytecopy import ChecksumMismatch, ShardInput, SourceReadError, _checksum_for
from .index import IndexEntry
from .table import mask, unmask

#: Errors of a tensor's bytes: corrupt, cut short, or unreadable.
READ_ERRORS = (ChecksumMismatch, EOFError, SourceReadError)


class OpenShards:
    """Data shards kept open for a whole run (a model of 200k scalars opens each file once)."""

    def __init__(self) -> None:
        self._open: dict[str, ShardInput] = {}

    def get(self, path: str) -> ShardInput:
        shard = self._open.get(path)
        if shard is None:
            shard = self._open[path] = ShardInput(path)  # SourceReadError when it cannot be opened
        return shard

    def close(self) -> None:
        for shard in self._open.values():
            shard.close()
        self._open.clear()


class TensorBytes:
    """One tensor's byte ranges read in order, piece by piece, each range's CRC32C compared at its end.

    ``segments``: ``(entry, data shard path)`` of each range, in the order
    their bytes make the tensor (a partitioned variable's parts in row order
    when the caller compares values; any order to check CRCs only).
    ``failed`` names the range at fault after a :class:`ChecksumMismatch`.
    """

    def __init__(self, segments: list[tuple[IndexEntry, str]], shards: "OpenShards | Mapping[str, ShardInput]"):
        self.segments = segments
        self.shards = shards
        self.size = sum(entry.size for entry, _ in segments)
        self.position = 0
        self.failed: IndexEntry | None = None
        self._segment = 0
        self._in_segment = 0
        self._checksum = _checksum_for(segments[0][0]) if segments else None

    def take(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer at the end); raises one of :data:`READ_ERRORS`."""
        pieces = []
        size = min(size, self.size - self.position)
        while size:
            self._close_finished()
            entry, path = self.segments[self._segment]
            count = min(size, entry.size - self._in_segment)
            data = self.shards.get(path).read(entry.offset + self._in_segment, count)
            self._checksum.update(data)
            pieces.append(data)
            self._in_segment += count
            self.position += count
            size -= count
        self._close_finished()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def pieces(self, piece: int) -> Iterator[bytes]:
        """The whole tensor, ``piece`` bytes at a time (every CRC32C checked by the end)."""
        while self.position < self.size:
            yield self.take(piece)
        self._close_finished()

    @property
    def at_fault(self) -> tuple[IndexEntry, str] | None:
        """The range (entry, data shard) that failed its check, else the one being read; for messages."""
        if not self.segments:
            return None
        for entry, path in self.segments:
            if entry is self.failed:
                return entry, path
        return self.segments[min(self._segment, len(self.segments) - 1)]

    @property
    def path(self) -> str:
        """The data shard at fault after an error (the range that failed, else the one being read)."""
        return self.at_fault[1] if self.segments else ""

    def check(self, piece: int) -> None:
        """Read everything left and check every range's CRC32C."""
        for _ in self.pieces(piece):
            pass

    def _close_finished(self) -> None:
        while self._segment < len(self.segments) and self._in_segment == self.segments[self._segment][0].size:
            entry = self.segments[self._segment][0]
            if mask(self._checksum.crc) != entry.crc32c or not self._checksum.complete:
                self.failed = entry
                raise ChecksumMismatch(unmask(entry.crc32c), self._checksum.crc)
            self._segment += 1
            self._in_segment = 0
            if self._segment < len(self.segments):
                self._checksum = _checksum_for(self.segments[self._segment][0])
