"""Combine the several inputs of one output tensor, reading them one at a time.

This is the data side of ``average`` and ``merge``: :func:`combine` is what
:func:`ckptsurgery.execute.executor.produce` calls for an :class:`OutputEntry` with a
``method``.  The plan (see :mod:`ckptsurgery.plan.merge`) has already checked
names, shapes, dtypes, weights and method parameters, so this module only
reads and computes.

How a multi-input entry is encoded (typed fields of :class:`OutputEntry`):

* ``entry.method`` names a registered merge method
  (:mod:`ckptsurgery.merge_methods`);
* ``entry.inputs`` lists the tensors to combine, in order; when
  ``entry.base_input`` is true, ``inputs[0]`` is the *base* tensor (for
  ``task_arithmetic``, ``ties``, ``dare``) and the rest are the tensors
  being merged;
* ``entry.params`` are the method's own parameters, ``entry.weights`` one
  weight per merged input (base excluded; None means the method's default)
  and ``entry.seed`` the per-tensor seed, already derived from the tensor name.

Memory: methods with a streaming form (registered by the method itself, see
:func:`ckptsurgery.merge_methods.registry.register_streaming`: ``linear`` for plain and
weighted averages and EMA, ``task_arithmetic``) are accumulated in one float64 buffer while the inputs
are read one at a time, so memory does not grow with the number of
checkpoints: about one float64 copy of the tensor plus one input.  Methods
that need every input at once (``slerp``, ``ties``, ``dare``) read all
inputs of *one* tensor, never more.  The operations are the same, in the
same order, as :func:`ckptsurgery.merge_methods.apply_method`, so results
are bit-identical to calling it on the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import UsageError
from ..merge_methods import apply_method, get_method
from ..merge_methods.streaming import CHUNK
from ..plan.entries import OutputEntry, TensorRef




@dataclass(frozen=True)
class MergeCall:
    """An entry's merge call: its typed fields as the method's arguments."""

    method: str
    weights: list[float] | None
    seed: int
    base_input: bool
    params: dict[str, Any]


def merge_call(entry: OutputEntry) -> MergeCall:
    """The call ``entry`` asks for (see the module docstring)."""
    if entry.method is None:
        raise ValueError(f"entry {entry.name!r} has no merge method")
    weights = None if entry.weights is None else [float(w) for w in entry.weights]
    return MergeCall(entry.method, weights, int(entry.seed or 0), entry.base_input, dict(entry.params))


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
    streaming = get_method(call.method).streaming
    if streaming is not None and streaming.applies(base is not None, call.params):
        return streaming.run(base, lazy, len(refs), call.weights, call.params, entry.name, out_dtype)
    # float64 here (exact for every floating dtype): apply_method does not take bfloat16 arrays.
    arrays = [np.asarray(array).astype(np.float64) for array in lazy]
    return apply_method(call.method, arrays, weights=call.weights, base=base, seed=call.seed, **call.params)


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
