"""Combine the several inputs of one output tensor, reading them one at a time.

This is the data side of ``average`` and ``merge``: :func:`combine` is what
:func:`ckptsurgery.execute.produce` calls for an :class:`OutputEntry` with a
``method``.  The plan (see :mod:`ckptsurgery.batch`) has already checked
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

from .errors import UsageError
from .merge_methods import apply_method, weights_or
from .plan import OutputEntry, TensorRef

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


def combine(entry: OutputEntry, read: Callable[[TensorRef], np.ndarray]) -> np.ndarray:
    """The float64 value of a multi-input entry; ``read`` reads one input tensor.

    The caller casts the result back to the tensor's dtype.
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
        return streaming_linear(lazy, len(refs), call.weights, call.params.get("normalize", True), entry.name)
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


def _float64(array: np.ndarray, like: np.ndarray | None, name: str) -> np.ndarray:
    out = np.asarray(array).astype(np.float64)
    if like is not None and out.shape != like.shape:
        raise UsageError(f"tensor {name!r}: inputs differ in shape ({list(like.shape)} and {list(out.shape)})")
    return out


def streaming_linear(
    arrays: Iterable[np.ndarray], count: int, weights: list[float] | None, normalize: bool, name: str = ""
) -> np.ndarray:
    """``sum_i w_i x_i`` (``/ sum_i w_i`` when ``normalize``), one input in memory at a time.

    Same arithmetic as the ``linear`` method: weights default to ``1/count``.
    """
    if not isinstance(normalize, (bool, np.bool_)):
        raise UsageError(f"linear: normalize must be true or false, got {normalize!r}")
    w = _weights(weights, count, 1.0 / count, name)
    acc: np.ndarray | None = None
    seen = 0
    for wi, array in zip(w, arrays):
        term = _float64(array, acc, name)
        del array
        term *= wi
        if acc is None:
            term += 0.0  # like sum()'s 0 + x: turns -0.0 into 0.0, bit-identical to apply_method
            acc = term
        else:
            acc += term
        del term
        seen += 1
    if acc is None or seen != count:
        raise UsageError(f"tensor {name!r}: expected {count} inputs, read {seen}")
    if normalize:
        denom = sum(w)
        if denom == 0:
            raise UsageError("linear: weights sum to 0; cannot normalize")
        acc /= denom
    return acc


def streaming_task_arithmetic(
    base: np.ndarray, arrays: Iterable[np.ndarray], count: int, weights: list[float] | None, name: str = ""
) -> np.ndarray:
    """``base + sum_i w_i (x_i - base)``, one input in memory at a time (weights default 1.0)."""
    w = _weights(weights, count, 1.0, name)
    result = np.array(base, dtype=np.float64, copy=True)
    seen = 0
    for wi, array in zip(w, arrays):
        delta = _float64(array, result, name)
        del array
        delta -= base
        delta *= wi
        result += delta
        del delta
        seen += 1
    if seen != count:
        raise UsageError(f"tensor {name!r}: expected {count} inputs, read {seen}")
    return result
