"""``average``: plan the mean of N checkpoints of one model; no tensor data is read.

:func:`plan_average` averages N checkpoints tensor by tensor: a plain mean, a
weighted mean (``weights``), or an exponential moving average over the
checkpoints in order (``ema``).  Integer, bool and string tensors
(``global_step``, vocabularies) are taken from the last input (or the first);
optimizer state is left out unless ``keep_optimizer``.  The result is an
ordinary :class:`~ckptsurgery.plan.entries.Plan` whose floating entries use the
``linear`` merge method (see :mod:`ckptsurgery.plan.merge` for how a
multi-input entry is encoded).

EMA weights.  For decay ``d`` and checkpoints ``x_1..x_n`` in the order
given (oldest first), the average is the standard recursion
``e_1 = x_1, e_i = d * e_{i-1} + (1 - d) * x_i``, whose closed form is
``e_n = sum_i w_i x_i`` with ``w_1 = d^(n-1)`` and
``w_i = (1 - d) * d^(n-i)`` for ``i >= 2``.  These weights sum to 1; they are
normalised anyway, and the sum is accumulated in float64 in one pass.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

from ..dtypes import FLOATING
from ..errors import PlanError, UsageError
from ..io.reader import OBJECT_GRAPH_KEY, Checkpoint, open_checkpoint
from .entries import OutputEntry, Plan, TensorRef, carry_object_graph, out_nbytes
from .optimizer_state import is_optimizer_state

PathLike = str | os.PathLike | Checkpoint
INT_POLICIES = ("last", "first", "error")


def average_weights(n: int, weights: Sequence[float] | None = None, ema: float | None = None) -> list[float]:
    """The normalised weight of each of ``n`` checkpoints (see the module doc for EMA).

    >>> average_weights(3)
    [1.0, 1.0, 1.0]
    >>> [round(w, 3) for w in average_weights(3, ema=0.5)]
    [0.25, 0.25, 0.5]

    A plain mean is returned as equal weights of 1.0 (the linear merge divides
    by their sum), which keeps the arithmetic that of ``sum(x) / n``.
    """
    if n < 1:
        raise UsageError("average needs at least one checkpoint")
    if weights is not None and ema is not None:
        raise UsageError("give either weights or an EMA decay, not both")
    if weights is not None:
        w = [float(x) for x in weights]
        if len(w) != n:
            raise UsageError(f"got {len(w)} weights for {n} checkpoints")
        if not all(math.isfinite(x) and x >= 0 for x in w):
            raise UsageError(f"weights must be finite and non-negative, got {w}")
        if sum(w) <= 0:
            raise UsageError(f"weights sum to 0; give at least one positive weight, got {w}")
        return w
    if ema is not None:
        d = float(ema)
        if not 0.0 <= d < 1.0:
            raise UsageError(f"EMA decay must be in [0, 1), got {ema}")
        raw = [d ** (n - 1)] + [(1.0 - d) * d ** (n - 1 - i) for i in range(1, n)]
        total = sum(raw)
        return [x / total for x in raw]
    return [1.0] * n


def plan_average(
    checkpoints: Sequence[PathLike],
    *,
    weights: Sequence[float] | None = None,
    ema: float | None = None,
    int_policy: str = "last",
    keep_optimizer: bool = False,
    intersection: bool = False,
) -> Plan:
    """Plan the (weighted, or EMA) average of ``checkpoints``; no data is read.

    Every input must hold the same names with the same shapes and dtypes,
    else :class:`PlanError` names the first tensor that differs (in name
    order) and the two inputs; ``intersection=True`` averages only the names
    all inputs share and lists the rest as dropped.  Floating tensors
    (float16, bfloat16, float32, float64) are averaged with the ``linear``
    method in float64 and cast back.  Other tensors (integers such as
    ``global_step``, bool, string, complex) are copied from the last input
    (``int_policy="last"``) or the first (``"first"``); ``"error"`` refuses a
    checkpoint that has any.  Optimizer state is dropped unless
    ``keep_optimizer``.  A TF2 object graph is carried from the last input
    (the one that has it, among all), with dropped keys removed.

    Sources are named ``ckpt1`` ... ``ckptN`` in the order given.
    """
    ckpts = [open_checkpoint(c) for c in checkpoints]
    n = len(ckpts)
    if int_policy not in INT_POLICIES:
        raise UsageError(f"unknown int policy {int_policy!r}; use one of: {', '.join(INT_POLICIES)}")
    w = average_weights(n, weights, ema)
    aliases = [f"ckpt{i + 1}" for i in range(n)]
    sources = dict(zip(aliases, ckpts))

    def where(i: int) -> str:
        return f"input {i + 1} ({ckpts[i].prefix})"

    optimizer_names: set[str] = set()
    name_sets: list[set[str]] = []
    for ckpt in ckpts:
        names = {t.name for t in ckpt if t.name != OBJECT_GRAPH_KEY}
        if not keep_optimizer:
            optimizer = {name for name in names if is_optimizer_state(name)}
            optimizer_names |= optimizer
            names -= optimizer
        name_sets.append(names)
    union = set().union(*name_sets)

    entries: list[OutputEntry] = []
    not_shared: list[str] = []
    for name in sorted(union):
        have = [i for i in range(n) if name in name_sets[i]]
        if len(have) < n:
            if intersection:
                not_shared.append(name)
                continue
            lack = next(i for i in range(n) if name not in name_sets[i])
            raise PlanError(
                f"tensor {name!r} is in {where(have[0])} but not in {where(lack)}; "
                f"pass --intersection to average only the names all inputs share"
            )
        first = ckpts[0].info(name)
        for i in range(1, n):
            other = ckpts[i].info(name)
            if (other.dtype, other.shape) != (first.dtype, first.shape):
                raise PlanError(
                    f"tensor {name!r} differs: {first.dtype}{list(first.shape)} in {where(0)}, "
                    f"{other.dtype}{list(other.shape)} in {where(i)}"
                )
        if first.dtype in FLOATING:
            refs = tuple(TensorRef(alias, name) for alias in aliases)
            nbytes_in = sum(c.info(name).nbytes for c in ckpts)
            entries.append(OutputEntry(
                name=name, inputs=refs, dtype=first.dtype, shape=first.shape, nbytes_in=nbytes_in,
                nbytes_out=out_nbytes(first.dtype, first.shape, first.nbytes),
                method="linear", weights=tuple(w),
            ))
            continue
        if int_policy == "error":
            raise PlanError(
                f"tensor {name!r} is {first.dtype}, which cannot be averaged, and int policy 'error' refuses "
                f"non-floating tensors; use int policy 'last' or 'first' to copy it from one input"
            )
        i = n - 1 if int_policy == "last" else 0
        info = ckpts[i].info(name)
        entries.append(OutputEntry(
            name=name, inputs=(TensorRef(aliases[i], name),), dtype=info.dtype, shape=info.shape,
            nbytes_in=info.nbytes, nbytes_out=out_nbytes(info.dtype, info.shape, info.nbytes),
        ))
    if not entries:
        if union:
            raise PlanError("nothing to average: the inputs share no tensor")
        if optimizer_names:
            raise PlanError("nothing to average: the inputs hold only optimizer state (pass --keep-optimizer)")
        raise PlanError("nothing to average: the inputs hold no variables (at most an object graph)")

    dropped = []
    for name in sorted(optimizer_names | set(not_shared)):
        holder = max(i for i in range(n) if name in ckpts[i])
        dropped.append(TensorRef(aliases[holder], name))
    return Plan(sources, entries, carry_object_graph(sources, aliases[::-1], entries), dropped)
