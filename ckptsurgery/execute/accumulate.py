"""Combine the several inputs of one output tensor, reading them one at a time.

This is the data side of ``average`` and ``merge``: :func:`combine` is what
:func:`ckptsurgery.execute.executor.produce` calls for an :class:`OutputEntry` with a
``method``.  The plan (see :mod:`ckptsurgery.plan.batch`) has already checked
names, shapes, dtypes, weights and method parameters, so this module only
reads and computes.

How a multi-input entry is encoded (no extra plan fields are needed):

* ``entry.method`` names a registered merge method
  (:mod:`ckptsurgery.merge_methods`);
* ``entry.inputs`` lists the tensors to combine, in order; when
  ``method_params["base_input"]`` is true, ``inputs[0]`` is the *base*
  tensor (for ``task_arithmetic``, ``ties``, ``dare``) and the rest are the
  tensors being merged;
* ``entry.method_params`` holds the method's own parameters plus three
  reserved keys: ``weights`` (one per merged input, base excluded; absent
  means the method's default), ``seed`` (the per-tensor seed, already
  derived from the tensor name) and ``base_input``.

Memory: ``linear`` (plain and weighted averages, EMA) and
``task_arithmetic`` are accumulated in one float64 buffer while the inputs
are read one at a time, so memory does not grow with the number of
checkpoints: about one float64 copy of the tensor plus one input.  Methods
that need every input at once (``slerp``, ``ties``, ``dare``) read all
inputs of *one* tensor, never more.  The operations are the same, in the
same order, as :func:`ckptsurgery.merge_methods.apply_method`, so results
are bit-identical to calling it on the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import UsageError
from ..merge_methods import apply_method, weights_or
from ..plan.entries import OutputEntry, TensorRef

WEIGHTS = "weights"
SEED = "seed"
BASE_INPUT = "base_input"
RESERVED_PARAMS = frozenset({WEIGHTS, SEED, BASE_INPUT})

#: Methods accumulated input by input instead of holding every input.
STREAMING_METHODS = frozenset({"linear", "task_arithmetic"})


@dataclass(frozen=True)
class MergeCall:
    """An entry's ``method_params`` split into call arguments and method parameters."""

    method: str
    weights: list[float] | None
    seed: int
    base_input: bool
    params: dict[str, Any]


def merge_call(entry: OutputEntry) -> MergeCall:
    """Decode ``entry.method_params`` (see the module docstring)."""
    if entry.method is None:
        raise ValueError(f"entry {entry.name!r} has no merge method")
    params = dict(entry.method_params)
    weights = params.pop(WEIGHTS, None)
    seed = int(params.pop(SEED, 0))
    base_input = bool(params.pop(BASE_INPUT, False))
    return MergeCall(entry.method, None if weights is None else [float(w) for w in weights], seed, base_input, params)


def combine(entry: OutputEntry, read: Callable[[TensorRef], np.ndarray], out_dtype: np.dtype | None = None) -> np.ndarray:
    """The value of a multi-input entry; ``read`` reads one input tensor.

    Float64, or already ``out_dtype`` where the method can finish in place;
    the caller narrows with :func:`narrow_in_place`, which leaves an array
    already of ``out_dtype`` alone.
    """
    call = merge_call(entry)
    refs = list(entry.inputs)
    base = None
    if call.base_input:
        base = np.asarray(read(refs[0])).astype(np.float64)
        refs = refs[1:]
    if not refs:
        raise UsageError(f"tensor {entry.name!r}: merge method {call.method!r} has no input to merge")
    lazy = (read(ref) for ref in refs)
    if call.method == "linear" and base is None:
        return streaming_linear(lazy, len(refs), call.weights, call.params.get("normalize", True), entry.name,
                                out_dtype)
    if call.method == "task_arithmetic" and base is not None and not call.params:
        return streaming_task_arithmetic(base, lazy, len(refs), call.weights, entry.name)
    # float64 here (exact for every floating dtype): apply_method does not take bfloat16 arrays.
    arrays = [np.asarray(array).astype(np.float64) for array in lazy]
    return apply_method(call.method, arrays, weights=call.weights, base=base, seed=call.seed, **call.params)


def _weights(weights: list[float] | None, count: int, default: float, name: str) -> list[float]:
    w = weights_or(weights, count, default)
    if len(w) != count:
        raise UsageError(f"tensor {name!r}: got {len(w)} weights for {count} inputs")
    return w


def streaming_linear(
    arrays: Iterable[np.ndarray], count: int, weights: list[float] | None, normalize: bool, name: str = "",
    out_dtype: np.dtype | None = None,
) -> np.ndarray:
    """``sum_i w_i x_i`` (``/ sum_i w_i`` when ``normalize``), one input in memory at a time.

    Same arithmetic as the ``linear`` method: weights default to ``1/count``.
    Returns float64, or, when ``out_dtype`` is given and the last input has
    that dtype, the result cast to it and written over the last input's
    buffer as its chunks are consumed: then the peak is one float64
    accumulator plus one input, with no separate output copy.
    """
    if not isinstance(normalize, (bool, np.bool_)):
        raise UsageError(f"linear: normalize must be true or false, got {normalize!r}")
    w = _weights(weights, count, 1.0 / count, name)
    acc: np.ndarray | None = None
    for wi, array, last in _each_input(arrays, w, name):
        if acc is None:
            acc = np.zeros(array.shape, dtype=np.float64)  # 0 + x, like sum(): -0.0 becomes 0.0
        _check_shape(array, acc, name)
        if last and _can_overwrite(array, out_dtype):
            return _finish_into(acc, array, wi, _denominator(w) if normalize else None)
        _add_scaled(acc, array, wi)
        del array
    assert acc is not None
    if normalize:
        acc /= _denominator(w)
    return acc


def _each_input(arrays: Iterable[np.ndarray], weights: list[float], name: str):
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


def _denominator(w: list[float]) -> float:
    denom = sum(w)
    if denom == 0:
        raise UsageError("linear: weights sum to 0; cannot normalize")
    return denom


def _can_overwrite(array: np.ndarray, out_dtype: np.dtype | None) -> bool:
    return (out_dtype is not None and array.dtype == np.dtype(out_dtype) and array.flags.c_contiguous
            and array.flags.writeable)


def _finish_into(acc: np.ndarray, last: np.ndarray, weight: float, denom: float | None) -> np.ndarray:
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


#: Elements per step when adding an input into an accumulator: bounds the float64
#: temporaries to 8 MB, so a tensor costs one float64 accumulator plus one input.
CHUNK = 1 << 20


def _add_scaled(acc: np.ndarray, array: np.ndarray, weight: float, minus: np.ndarray | None = None) -> None:
    """``acc += weight * (array - minus)`` in float64, chunk by chunk (same result as whole-array ops)."""
    acc_flat, x_flat = acc.reshape(-1), array.reshape(-1)
    base_flat = None if minus is None else minus.reshape(-1)
    for start in range(0, x_flat.size, CHUNK):
        part = x_flat[start:start + CHUNK].astype(np.float64)
        if base_flat is not None:
            part -= base_flat[start:start + CHUNK]
        part *= weight
        acc_flat[start:start + CHUNK] += part


def _check_shape(array: np.ndarray, like: np.ndarray, name: str) -> None:
    if array.shape != like.shape:
        raise UsageError(f"tensor {name!r}: inputs differ in shape ({list(like.shape)} and {list(array.shape)})")


def streaming_task_arithmetic(
    base: np.ndarray, arrays: Iterable[np.ndarray], count: int, weights: list[float] | None, name: str = ""
) -> np.ndarray:
    """``base + sum_i w_i (x_i - base)``, one input in memory at a time (weights default 1.0)."""
    w = _weights(weights, count, 1.0, name)
    result = np.array(base, dtype=np.float64, copy=True)
    for wi, array, _ in _each_input(arrays, w, name):
        _check_shape(array, result, name)
        _add_scaled(result, array, wi, minus=base)
        del array
    return result


def narrow_in_place(acc: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast a float64 result to ``dtype`` inside its own buffer, saving a second copy.

    For the largest tensors the accumulator and the cast result together are
    the peak of an average.  Chunk by chunk, each chunk is copied out, cast,
    and written to the front of the same buffer: writing chunk ``k`` only
    touches bytes of chunks ``<= k``, which have been read already.  Returns
    a view of the buffer with ``acc``'s shape (``acc`` is overwritten).
    """
    dtype = np.dtype(dtype)
    if acc.dtype == dtype:
        return acc
    if dtype.itemsize > acc.itemsize or not (acc.flags.c_contiguous and acc.flags.writeable) or acc.dtype != np.float64:
        return acc.astype(dtype)
    flat = acc.reshape(-1)
    out = flat.view(np.uint8)[: flat.size * dtype.itemsize].view(dtype)
    for start in range(0, flat.size, CHUNK):
        out[start:start + CHUNK] = flat[start:start + CHUNK].astype(dtype)  # astype copies before the write
    return out.reshape(acc.shape)
