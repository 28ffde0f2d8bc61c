"""What the streaming forms of merge methods share: inputs read one at a time, float64 chunks.

A streaming form (see :func:`~.registry.register_streaming`) accumulates a
tensor's inputs in one float64 buffer while they are read one at a time, so
memory does not grow with the number of checkpoints: about one float64 copy
of the tensor plus one input.  The operations are the same, in the same
order, as the method's plain form, so results are bit-identical.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import UsageError
from .registry import weights_or


#: Elements per step when adding an input into an accumulator: bounds the float64
#: temporaries to 8 MB, so a tensor costs one float64 accumulator plus one input.
CHUNK = 1 << 20


def stream_weights(weights: list[float] | None, count: int, default: float, name: str) -> list[float]:
    w = weights_or(weights, count, default)
    if len(w) != count:
        raise UsageError(f"tensor {name!r}: got {len(w)} weights for {count} inputs")
    return w


def each_input(arrays: Iterable[np.ndarray], weights: list[float], name: str):
    """Yield ``(weight, array, is_last)``, reading each input only when asked for it.

    Not ``zip()``: its cached result tuple would keep the previous input alive
    while the next is read; nor a local here, for the same reason.
    """
    inputs = iter(arrays)
    for i, weight in enumerate(weights):
        try:
            yield weight, np.asarray(next(inputs)), i == len(weights) - 1
        except StopIteration:
            raise UsageError(f"tensor {name!r}: expected {len(weights)} inputs, read {i}") from None


def check_shape(array: np.ndarray, like: np.ndarray, name: str) -> None:
    if array.shape != like.shape:
        raise UsageError(f"tensor {name!r}: inputs differ in shape ({list(like.shape)} and {list(array.shape)})")


def add_scaled(acc: np.ndarray, array: np.ndarray, weight: float, minus: np.ndarray | None = None) -> None:
    """``acc += weight * (array - minus)`` in float64, chunk by chunk (same result as whole-array ops)."""
    acc_flat, x_flat = acc.reshape(-1), array.reshape(-1)
    base_flat = None if minus is None else minus.reshape(-1)
    for start in range(0, x_flat.size, CHUNK):
        part = x_flat[start:start + CHUNK].astype(np.float64)
        if base_flat is not None:
            part -= base_flat[start:start + CHUNK]
        part *= weight
        acc_flat[start:start + CHUNK] += part


def can_overwrite(array: np.ndarray, out_dtype: np.dtype | None) -> bool:
    return (out_dtype is not None and array.dtype == np.dtype(out_dtype) and array.flags.c_contiguous
            and array.flags.writeable)


def finish_into(acc: np.ndarray, last: np.ndarray, weight: float, denom: float | None) -> np.ndarray:
    """Add the last input, normalize, cast, and write each chunk's result over ``last`` itself."""
    acc_flat, x_flat = acc.reshape(-1), last.reshape(-1)
    for start in range(0, x_flat.size, CHUNK):
        part = x_flat[start:start + CHUNK].astype(np.float64)
        part *= weight
        total = acc_flat[start:start + CHUNK]
        total += part
        if denom is not None:
            total /= denom
        x_flat[start:start + CHUNK] = total.astype(last.dtype)
    return last
