"""``--verify`` on the byte path: compare what was written with its source, piece by piece, in the budget.

``--verify`` used to recompute every planned tensor whole and read the
written one whole through TensorFlow: twice a 6 GB embedding in memory.  For
the entries the byte path wrote it now streams both sides:

* **copied as bytes**: the written ranges are read back with their CRC32C
  checked against the *written* index entry (what TensorFlow's reader will
  check when it loads the output), the source's ranges with theirs (as
  ``produce()`` read them through TF), and the two compared byte for byte.
  Equal bytes under two valid CRCs prove the output decodes to the source's
  value and loads without a checksum error;
* **computed chunk by chunk**: the entry is recomputed through the very
  chunk generator that wrote it (:func:`~ckptsurgery.execute.chunked.output_chunks`,
  its inputs' CRC32C checked again) and each chunk compared with the written
  bytes read back, CRC32C checked likewise.

Entries held whole or decoded through TF keep the old path
(:func:`~ckptsurgery.execute.executor.verify_values`).  A written tensor
that does not read back, or differs, raises :class:`OutputError`; a source
that does not read back raises :class:`BadCheckpointError`: nothing is published.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import BadCheckpointError, OutputError
from ..io.bytecopy import CHUNK, RawTensor
from ..io.bytestream import READ_ERRORS, OpenShards, TensorBytes
from ..io.reader import Checkpoint
from ..plan.chunking import ChunkPlan
from ..plan.entries import OutputEntry, Plan
from .chunked import InputShards, chunk_rows, output_chunks


class WrittenBytes:
    """What the byte-path checks of one ``--verify`` keep open: shards, a read-ahead pool."""

    def __init__(self, plan: Plan, written: Checkpoint, budget: int):
        self.plan = plan
        self.written = written
        self.budget = budget
        self.piece = min(CHUNK, max(1, budget // 4))  # a source piece, a written piece, in the budget
        self.written_shards = OpenShards()
        self.source_shards = OpenShards()
        self.input_shards = InputShards()
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ckptsurgery-verify")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.written_shards.close()
        self.source_shards.close()
        self.input_shards.close()

    def _written(self, name: str) -> TensorBytes:
        index = self.written.bundle_index
        stored = index.entries.get(name) if index is not None else None
        if stored is None:
            raise OutputError(f"{self.written.prefix}: verification failed: tensor {name!r} is not in the written index; "
                              "nothing published")
        parts = sorted(index.slice_entries.get(name, ()), key=lambda e: e.slices) if stored.slices else [stored]
        return TensorBytes([(part, index.data_path(part.shard_id)) for part in parts], self.written_shards)

    def check_copied(self, entry: OutputEntry, raw: RawTensor) -> None:
        """A tensor copied as bytes: its written ranges equal the source's, both CRC32C-valid."""
        written = self._written(entry.name)
        parts = sorted(raw.parts, key=lambda e: e.slices) if raw.entry.slices else list(raw.parts)
        if [p.slices for p in parts] != [w.slices for w, _ in written.segments] and raw.entry.slices:
            self._differs(entry.name, written)
        source = TensorBytes([(part, raw.index.data_path(part.shard_id)) for part in parts], self.source_shards)
        if source.size != written.size:
            self._differs(entry.name, written)
        while source.position < source.size:
            want = self._source_read(source, entry.name, self.piece)
            if self._written_read(written, entry.name, len(want)) != want:
                self._differs(entry.name, written)
        self._source_read(source, entry.name, 0)  # ranges of no bytes: their CRC32C too
        self._written_read(written, entry.name, 0)

    def check_chunked(self, chunk_plan: ChunkPlan) -> None:
        """A tensor computed chunk by chunk: recomputed the same way, each chunk equal to the bytes written."""
        name = chunk_plan.entry.name
        written = self._written(name)
        rows = chunk_rows(chunk_plan, self.budget)
        chunks = output_chunks(self.plan, chunk_plan, rows, self.pool, self.input_shards)  # raises on bad input
        try:
            for chunk in chunks:
                want = np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)  # bfloat16 has no buffer format
                if want.size and not np.array_equal(np.frombuffer(self._written_read(written, name, want.size),
                                                                  np.uint8), want):
                    self._differs(name, written)
                del chunk, want
        finally:
            chunks.close()
        if written.position != written.size:
            self._differs(name, written)
        self._written_read(written, name, 0)

    def _take(self, stream: TensorBytes, size: int) -> bytes:
        """``size`` bytes of ``stream`` (0: read the rest, every range's CRC32C checked); raises READ_ERRORS."""
        if size:
            return stream.take(size)
        stream.check(self.piece)
        return b""

    def _source_read(self, stream: TensorBytes, name: str, size: int) -> bytes:
        try:
            return self._take(stream, size)
        except READ_ERRORS as exc:
            raise BadCheckpointError(stream.path, f"tensor bytes fail their check on re-reading ({exc}): "
                                     "the checkpoint is corrupt; nothing was published", name) from None

    def _written_read(self, stream: TensorBytes, name: str, size: int) -> bytes:
        """``size`` written bytes (0: finish, every range's CRC32C checked)."""
        try:
            return self._take(stream, size)
        except READ_ERRORS as exc:
            raise OutputError(f"{self.written.prefix}: verification failed: tensor {name!r} does not read back "
                              f"({exc}); nothing published") from None

    def _differs(self, name: str, written: TensorBytes) -> None:
        """Bytes that differ: said as ``does not read back`` when the written ones fail their CRC32C too."""
        if written.position < written.size:
            self._written_read(written, name, 0)
        raise OutputError(f"{self.written.prefix}: verification failed: tensor {name!r} differs from the plan")
