"""Run a plan: read each input tensor, transform it, stream it to the writer.

This is the only place where tensor data flows.  It holds one output
tensor's inputs at a time, plus the writer's bounded groups, so memory is
set by the budget and the largest tensor, never by the model.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from .dtypes import FLOATING, dtype_name_of_array, numpy_dtype
from .errors import BadCheckpointError, NonFiniteError, OutputError, PlanError
from .objectgraph import rewrite_object_graph
from .plan import OutputEntry, Plan
from .source import OBJECT_GRAPH_KEY, open_checkpoint
from .transforms import apply_steps
from .writer import DEFAULT_MEMORY_BUDGET, ShardWriter, resolve_destination


@dataclass
class WriteOptions:
    """How to write: shared by every command that writes a checkpoint."""

    memory_budget: int | str = DEFAULT_MEMORY_BUDGET
    force: bool = False
    workers: int = 1
    progress: bool | None = None  # None: a bar when stderr is a terminal
    verify: bool = False  # re-read every value after writing
    durable: bool = True  # fsync before publishing
    allow_nonfinite: bool = True


@dataclass
class WriteResult:
    """What was written, for the CLI's summary and ``--json``."""

    prefix: str
    tensors: int
    nbytes: int
    dropped: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"output": self.prefix, "tensors": self.tensors, "nbytes": self.nbytes, "dropped": self.dropped}


def produce(plan: Plan, entry: OutputEntry) -> np.ndarray:
    """Compute one output tensor's value (read, combine, transform).

    One input: read it.  Several inputs (``average``, ``merge``): the merge
    method combines them in float64, reading them one at a time where the
    method allows (see :mod:`ckptsurgery.accumulate`), and the result is cast
    back to the inputs' dtype (bfloat16 and float16 included) before ``steps``.
    NaN/Inf are checked by the caller (:func:`execute`) unless allowed.
    """

    def read(ref):
        return plan.sources[ref.source].read(ref.name)

    if entry.method is None:
        if len(entry.inputs) != 1:
            raise PlanError(f"tensor {entry.name!r}: {len(entry.inputs)} inputs but no merge method to combine them")
        value = read(entry.inputs[0])
    else:
        from .accumulate import combine

        last = entry.inputs[-1]
        source_dtype = plan.sources[last.source].info(last.name).dtype
        value = combine(entry, read).astype(numpy_dtype(source_dtype))
    value = apply_steps(value, entry.steps, entry.name)
    if dtype_name_of_array(value) != entry.dtype:
        value = value.astype(numpy_dtype(entry.dtype))
    if tuple(value.shape) != tuple(entry.shape):
        raise BadCheckpointError(
            entry.inputs[0].source, f"read shape {list(value.shape)}, plan expects {list(entry.shape)}", entry.name
        )
    return value


def _check_finite(entry: OutputEntry, value: np.ndarray) -> None:
    if entry.dtype in FLOATING and not np.all(np.isfinite(value.astype(np.float32, copy=False))):
        raise NonFiniteError(f"tensor {entry.name!r}: result has NaN or Inf (pass --allow-nonfinite to write it anyway)")


def _progress_bar(total: int, enabled: bool | None, desc: str):
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=desc, disable=not enabled,
                dynamic_ncols=True, leave=False)


def execute(plan: Plan, dest: str | os.PathLike, options: WriteOptions | None = None) -> WriteResult:
    """Write ``plan`` to ``dest``; publish atomically or leave nothing behind."""
    options = options or WriteOptions()
    prefix = resolve_destination(dest, [c.prefix for c in plan.sources.values()], force=options.force)
    graph_bytes = None
    if plan.object_graph is not None:
        source_graph = plan.sources[plan.object_graph.source].read_object_graph()
        graph_bytes = rewrite_object_graph(source_graph, plan.object_graph.key_map)

    bar = _progress_bar(plan.nbytes_out, options.progress, "writing")
    expected = {e.name: (e.dtype, tuple(e.shape)) for e in plan.entries}
    if graph_bytes is not None:
        expected[OBJECT_GRAPH_KEY] = ("string", ())

    def check(merged_prefix: str) -> None:
        check_written(merged_prefix, expected)
        if options.verify:
            verify_values(plan, merged_prefix)

    try:
        with ShardWriter(prefix, memory_budget=options.memory_budget, workers=options.workers,
                         durable=options.durable, on_written=bar.update, check=check) as writer:
            for entry in plan.entries:
                value = produce(plan, entry)
                if not options.allow_nonfinite:
                    _check_finite(entry, value)
                writer.add(entry.name, value)
                del value
            if graph_bytes is not None:
                writer.add(OBJECT_GRAPH_KEY, np.array(graph_bytes, dtype=object))
            published = writer.finish()
    finally:
        bar.close()
    return WriteResult(published, len(expected), plan.nbytes_out, [r.name for r in plan.dropped])


def check_written(prefix: str, expected: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """The cheap check after every write: names, dtypes and shapes equal the plan."""
    written = open_checkpoint(prefix)
    got = {t.name: (t.dtype, t.shape) for t in written}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(n for n in set(got) & set(expected) if got[n] != expected[n])
        raise OutputError(
            f"{prefix}: written checkpoint differs from the plan "
            f"(missing {missing[:3]}, unexpected {extra[:3]}, wrong dtype/shape {wrong[:3]}); nothing published"
        )


def verify_values(plan: Plan, prefix: str) -> None:
    """``--verify``: recompute every planned tensor and compare it with what was written."""
    written = open_checkpoint(prefix)
    for entry in plan.entries:
        want = produce(plan, entry)
        got = written.read(entry.name)
        same = np.array_equal(want, got) if want.dtype == np.object_ else np.array_equal(
            want.view(np.uint8) if want.size else want, got.view(np.uint8) if got.size else got)
        if not same:
            raise OutputError(f"{prefix}: verification failed: tensor {entry.name!r} differs from the plan")
