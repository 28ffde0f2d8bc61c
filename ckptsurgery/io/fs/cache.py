"""Read-ahead for remote inputs: the next batch's byte ranges, fetched in parallel into a bounded cache.

A remote read costs a round trip (tens of ms on GCS) whatever its size, so
reading tensor after tensor, source after source, is latency-bound: an
average of 8 checkpoints would pay 8 round trips per tensor.  The executor
already announces the next batch (:meth:`Checkpoint.prefetch`); for a remote
source that issues the batch's ranged reads on a small thread pool, into
this cache, while the current batch is processed.  Reads of the byte path
(:class:`~ckptsurgery.io.bytecopy.ShardInput`) and the decoding of remote
tensors (:meth:`Checkpoint.read`) take their bytes from here when present.

Bounded: at most :data:`LIMIT` bytes are held; the executor sets it to two
memory budgets (the batch being processed and the next one, each at most a
budget).  When full the oldest ranges are forgotten (read on demand if still
needed); a range larger than the limit is never fetched ahead.  Each range is
handed out once and then dropped (every tensor is read once per run).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

#: Bytes the cache may hold (fetched or in flight); :func:`set_limit` follows the run's memory budget.
LIMIT = 256 << 20
#: Parallel ranged reads in flight: enough to hide the latency of a store, few enough to be polite.
WORKERS = 16

_lock = threading.Lock()
_entries: "OrderedDict[tuple[str, int, int], Future]" = OrderedDict()
_held = 0
_pool: ThreadPoolExecutor | None = None


def set_limit(nbytes: int) -> None:
    global LIMIT
    LIMIT = max(int(nbytes), 0)


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ckptsurgery-readahead")
    return _pool


def fetch_ahead(path: str, ranges: list[tuple[int, int]], read) -> None:
    """Start reading each ``(offset, size)`` of ``path`` with ``read(path, offset, size)``, as room allows."""
    global _held
    with _lock:
        for offset, size in ranges:
            key = (path, offset, size)
            if key in _entries or not size:
                continue
            if size > LIMIT:
                continue  # never fits: read on demand
            while _held + size > LIMIT:  # full: forget the oldest (a batch already done, or read on demand)
                (_, _, old_size), old = _entries.popitem(last=False)
                old.cancel()
                _held -= old_size
            _entries[key] = _executor().submit(read, path, offset, size)
            _held += size


def take(path: str, offset: int, size: int) -> bytes | None:
    """The bytes of exactly this range if they were fetched ahead (then forgotten), else None.

    A read-ahead that failed returns None: the caller reads again itself and
    reports the error where it happens.
    """
    global _held
    with _lock:
        future = _entries.pop((path, offset, size), None)
        if future is None:
            return None
        _held -= size
    try:
        return future.result()
    except Exception:
        return None


def read_slice(path: str, offset: int, size: int) -> bytes | None:
    """Bytes ``[offset, offset + size)`` from a cached range that holds them (chunked reads of one tensor).

    The range stays cached until its last byte is read.
    """
    global _held
    with _lock:
        for (p, start, length), future in _entries.items():
            if p == path and start <= offset and offset + size <= start + length:
                break
        else:
            return None
        if offset + size == start + length:
            _entries.pop((p, start, length))
            _held -= length
    try:
        data = future.result()
    except Exception:
        return None
    return data[offset - start: offset - start + size] if len(data) == length else None


def clear() -> None:
    """Drop everything (end of a run, or a test)."""
    global _held
    with _lock:
        _entries.clear()
        _held = 0
