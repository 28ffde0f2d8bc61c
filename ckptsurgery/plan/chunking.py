"""Which computed tensors are computed chunk by chunk from byte ranges, and which are held whole.

A numeric tensor in a little-endian V2 bundle is a plain C-order array in its
data shard, so a computed output can be produced from *row ranges* of its
inputs: read the rows' bytes (:meth:`~ckptsurgery.io.bytecopy.ShardInput.read`),
compute, write, next rows.  Memory is then a few chunks, whatever the
tensor's size, and TensorFlow's reader is not involved
(:mod:`ckptsurgery.execute.chunked` does it).  This module only decides, from
the plan and the inputs' index entries, before any data is read:

* **chunked**: every step is elementwise or works on whole rows of the first
  axis: ``cast``; ``resize`` of the first axis only (slice, or pad with
  ``zeros``/``normal``/``uniform``); a merge method with a streaming form that
  applies (``linear`` averages, ``task_arithmetic``), whose arithmetic is
  elementwise;
* **held whole** (read through TensorFlow and computed in one piece, as
  before): a merge method that needs every element at once (``slerp``,
  ``ties``, ``dare``), a resize of an inner axis, a pad with ``init=mean``
  (the mean runs over the whole first axis);
* **falls back** to TensorFlow for the input's sake: a V1 source, a TF1
  variable partitioned along an inner axis (one partitioned along its first
  axis is read part after part: its parts' bytes, in order, are the
  tensor's), a string or variant dtype, a big-endian machine (the
  bundle's own byte order is checked when its index is parsed:
  :mod:`ckptsurgery.io.index` refuses big-endian bundles).

The unit of a chunk is one element (a tensor is ``num_elements`` rows of one
element), a resize of the first axis included: in C order, slicing the first
axis keeps the leading elements and padding it appends elements, the fill
drawn element after element as the whole fill is.  So a chunk never has to
hold a whole row of a huge matrix, and ``--memory-budget`` holds however wide
a row is.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..dtypes import KNOWN
from ..io.index import IndexEntry, dtype_itemsize, dtype_name
from ..merge_methods import get_method

if TYPE_CHECKING:
    from .entries import OutputEntry, Plan

CHUNKED = "chunked"
WHOLE = "held whole"
FALLBACK = "falls back"

#: dtypes stored as plain arrays of fixed-size elements (strings are varint-framed, variants are protos)
PLAIN_DTYPES = frozenset(KNOWN - {"string"})


@dataclass(frozen=True)
class ChunkInput:
    """One input of a chunked entry: its index entry and the data shard holding its bytes.

    A TF1 variable partitioned along its first axis is read part after part:
    ``parts`` lists each part's slice entry and data shard in row order (its
    bytes, concatenated, are the whole tensor's); empty for a plain tensor.
    """

    entry: IndexEntry
    path: str
    parts: tuple[tuple[IndexEntry, str], ...] = ()

    @property
    def segments(self) -> tuple[tuple[IndexEntry, str], ...]:
        """``(entry, data shard)`` of each byte range holding the tensor, in order."""
        return self.parts or ((self.entry, self.path),)


@dataclass(frozen=True)
class ChunkPlan:
    """How one computed entry is produced chunk by chunk (see the module docstring)."""

    entry: "OutputEntry"
    inputs: tuple[ChunkInput, ...]  # in the order of ``entry.inputs``
    rows: int  # rows of the first stage (the combined inputs)
    row_elements: int
    row_shape: tuple[int, ...]  # the shape of one row (``()`` when a row is one element)


@dataclass(frozen=True)
class Verdict:
    """What happens to one computed entry: ``kind`` is CHUNKED, WHOLE or FALLBACK; ``reason`` says why."""

    kind: str
    reason: str = ""
    chunk_plan: ChunkPlan | None = None

    def describe(self) -> str:
        return self.kind if not self.reason else f"{self.kind}: {self.reason}"


def verdict(plan: "Plan", entry: "OutputEntry") -> Verdict:
    """How ``entry`` (not a pass-through) is computed on the byte path."""
    if sys.byteorder != "little":
        return Verdict(FALLBACK, "this machine is big-endian")
    inputs = []
    for ref in entry.inputs:
        index = plan.sources[ref.source].bundle_index
        if index is None:
            return Verdict(FALLBACK, f"source {ref.source} is a V1 checkpoint")
        stored = index.entries.get(ref.name)
        if stored is None:
            return Verdict(FALLBACK, "not in the source index")
        if dtype_name(stored.dtype) not in PLAIN_DTYPES:
            return Verdict(FALLBACK, f"{dtype_name(stored.dtype)} dtype")
        parts: tuple[tuple[IndexEntry, str], ...] = ()
        if stored.slices:
            ordered = _row_parts(stored, index.slice_entries.get(ref.name, ()))
            if ordered is None:
                return Verdict(FALLBACK, "partitioned along an inner axis")
            parts = tuple((part, index.data_path(part.shard_id)) for part in ordered)
        for part in [entry for entry, _ in parts] or [stored]:
            if part.size != part.num_elements * dtype_itemsize(stored.dtype):
                return Verdict(FALLBACK, "stored size is not elements x item size")
        inputs.append(ChunkInput(stored, index.data_path(stored.shard_id), parts))
    shapes = {tuple(i.entry.shape) for i in inputs}
    if len(shapes) != 1:
        return Verdict(WHOLE, "inputs differ in shape")
    shape = shapes.pop()
    if entry.method is not None:
        streaming = get_method(entry.method).streaming
        if streaming is None or not streaming.applies(entry.base_input, dict(entry.params)):
            return Verdict(WHOLE, f"merge method {entry.method} needs the whole tensor")
    current = shape
    for step in entry.steps:
        if step.op == "cast":
            continue
        if step.op != "resize":
            return Verdict(WHOLE, f"step {step.op} needs the whole tensor")
        new = tuple(step.params["shape"])
        if len(new) != len(current) or not current or new[1:] != current[1:]:
            return Verdict(WHOLE, "resize of an inner axis")
        if new[0] > current[0] and str(step.params.get("init", "zeros")).partition(":")[0] == "mean":
            return Verdict(WHOLE, "resize init=mean needs the whole first axis")
        current = new
    if current != tuple(entry.shape):
        return Verdict(WHOLE, "steps give another shape than planned")
    # one element per row even for a first-axis resize: a row of a wide matrix may exceed the budget alone
    chunk_plan = ChunkPlan(entry, tuple(inputs), math.prod(shape), 1, ())
    return Verdict(CHUNKED, "", chunk_plan)


def _row_parts(full: IndexEntry, parts: tuple[IndexEntry, ...]) -> list[IndexEntry] | None:
    """The parts of a partitioned variable in row order, when they split its first axis only (else None).

    Then the parts' bytes, one after the other, are the whole tensor's C-order bytes.
    """
    shape = tuple(full.shape)
    if not shape or not parts:
        return None
    ordered = sorted(parts, key=lambda part: part.slices[0][0][0] if part.slices and part.slices[0] else 0)
    row = 0
    for part in ordered:
        if not part.slices or len(part.slices[0]) != len(shape):
            return None
        (start, length), *inner = part.slices[0]
        if start != row or length < 0:
            return None
        if any(not (s == 0 and n in (-1, size)) for (s, n), size in zip(inner, shape[1:])):
            return None
        if tuple(part.shape) != (length, *shape[1:]):
            return None
        row += length
    return ordered if row == shape[0] else None
