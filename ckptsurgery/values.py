"""Value equality, in one place: bit-exact (``--verify``, ``diff``'s fast path) and NaN-aware counts (``verify --against``)."""

from __future__ import annotations

from typing import Any

import numpy as np


def same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    """Same shape, dtype and bytes (string tensors: equal element by element)."""
    if x.dtype == np.object_:
        return bool(np.array_equal(x, y))
    return x.shape == y.shape and x.dtype == y.dtype and x.tobytes() == y.tobytes()


def count_differences(x: np.ndarray, y: np.ndarray) -> int:
    """Elements whose bits differ, NaN counting as equal to NaN; 0 when identical."""
    if x.shape != y.shape:
        return max(x.size, y.size, 1)
    if x.dtype == np.object_ or y.dtype == np.object_:
        xs, ys = x.reshape(-1), y.reshape(-1)
        return sum(_as_bytes(a) != _as_bytes(b) for a, b in zip(xs, ys))
    if x.dtype != y.dtype:
        return max(x.size, 1)
    if x.tobytes() == y.tobytes():
        return 0
    bx = _bits(x)
    by = _bits(y)
    differ = np.any(bx != by, axis=-1) if bx.ndim > 1 else bx != by
    if differ.any() and _is_floating(x):
        differ &= ~(_isnan(x).reshape(-1) & _isnan(y).reshape(-1))
    return int(np.count_nonzero(differ))


def _as_bytes(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()


def _bits(a: np.ndarray) -> np.ndarray:
    """One row of raw bytes per element (or one unsigned int per element)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    size = a.dtype.itemsize
    uint = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(size)
    if uint is not None:
        return flat.view(uint)
    return flat.view(np.uint8).reshape(flat.size, size)


def _is_floating(a: np.ndarray) -> bool:
    if a.dtype.kind in "fc":
        return True
    return a.dtype.name in ("bfloat16",) or a.dtype.name.startswith("float8")


def _isnan(a: np.ndarray) -> np.ndarray:
    try:
        return np.isnan(a)
    except TypeError:
        return np.isnan(a.astype(np.float32))
