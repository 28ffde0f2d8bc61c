"""Batch merging: average many checkpoints, or merge parts of several, in bounded memory.

Two planners, both pure (they read only ``.index`` files, never tensor data)
and both producing an ordinary :class:`~ckptsurgery.plan.entries.Plan` that the
streaming executor writes:

* :func:`plan_average` averages N checkpoints of one model, tensor by tensor:
  a plain mean, a weighted mean (``weights``), or an exponential moving
  average over the checkpoints in order (``ema``).  Integer, bool and string
  tensors (``global_step``, vocabularies) are taken from the last input (or
  the first); optimizer state is left out unless ``keep_optimizer``.
* :func:`plan_merge` builds one checkpoint from several *sources* named by
  alias: each :class:`Take` copies the variables whose name matches a pattern
  from one source (optionally renamed); where two sources give the same
  output name, a :class:`MethodRule` says how to combine them (``linear``,
  ``slerp``, ``task_arithmetic``, ``ties``, ``dare``; see
  :mod:`ckptsurgery.merge_methods`), else planning fails.

Example::

    import ckptsurgery.plan.batch as batch

    batch.average(batch.last_checkpoints("runs/bert/", 5), "runs/bert-avg/model.ckpt")
    batch.average(["a/", "b/", "c/"], "ema/model.ckpt", ema=0.9)
    batch.merge({"a": "runs/a/", "b": "runs/b/"}, "merged/model.ckpt",
                takes=[Take("a", "^encoder/"), Take("b", "^decoder/")])

How a multi-input entry is encoded in the plan (decoded by
:mod:`ckptsurgery.execute.accumulate`, which :func:`ckptsurgery.execute.executor.produce`
calls): ``entry.method`` is the merge method; ``entry.inputs`` are the
tensors to combine in order, except that when ``method_params["base_input"]``
is true, ``inputs[0]`` is the base tensor (for methods that need one);
``method_params`` holds the method's own parameters plus the reserved keys
``weights`` (one per merged input, base excluded), ``seed`` (per-tensor:
``derive_seed(seed, output_name)``) and ``base_input``.  ``nbytes_in`` of a
multi-input entry is the sum over all its inputs.

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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..execute.accumulate import BASE_INPUT, RESERVED_PARAMS, SEED, WEIGHTS
from ..dtypes import FLOATING
from ..errors import BadCheckpointError, CkptSurgeryError, PlanError, RuleError, UsageError
from ..execute.executor import WriteResult, write_or_plan
from ..merge_methods import apply_method, derive_seed, get_method
from .optimizer_state import is_optimizer_state
from ..options import check_write_options
from .entries import ObjectGraphRewrite, OutputEntry, Plan, TensorRef, out_nbytes
from .rules import Draft, Rename, _compile, _no_match
from ..schema import (BOOL, LIST, MAPPING, NON_NEGATIVE_INT, NUMBER, NUMBERS, PATH, PATTERN, POSITIVE, RENAMES, STRING,
                     Kind, check_fields, check_value)
from ..io.reader import OBJECT_GRAPH_KEY, Checkpoint, open_checkpoint
from ..io.shard_writer import DEFAULT_MEMORY_BUDGET

PathLike = str | os.PathLike | Checkpoint
INT_POLICIES = ("last", "first", "error")
_STEP = re.compile(r"-(\d+)$")


# -- averaging -------------------------------------------------------------------------
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
                method="linear", method_params={WEIGHTS: list(w)},
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
    return Plan(sources, entries, _graph_from(sources, aliases[::-1], entries), dropped)


def _graph_from(sources: dict[str, Checkpoint], candidates: Sequence[str], entries: list[OutputEntry],
                renamed: Mapping[str, str] | None = None) -> ObjectGraphRewrite | None:
    """Carry the object graph of the first candidate source that has one.

    Each of that source's keys is kept when the output has a tensor of that
    name, else follows ``renamed`` (the source's own tensor taken under a new
    name), else is dropped from the graph.
    """
    out_names = {e.name for e in entries}
    for alias in candidates:
        ckpt = sources[alias]
        if OBJECT_GRAPH_KEY not in ckpt:
            continue
        keys = [t.name for t in ckpt if t.name != OBJECT_GRAPH_KEY]
        key_set = set(keys)
        key_map: dict[str, str | None] = {}
        for key in keys:
            if key in out_names:
                key_map[key] = key
            elif renamed and renamed.get(key) in out_names and renamed[key] not in key_set:
                key_map[key] = renamed[key]
            else:
                key_map[key] = None
        return ObjectGraphRewrite(alias, key_map)
    return None


def last_checkpoints(folder: str | os.PathLike, n: int) -> list[str]:
    """The prefixes of the ``n`` newest checkpoints in a training folder, oldest first.

    The folder's ``checkpoint`` state file decides (its
    ``all_model_checkpoint_paths``, which TF keeps oldest first); without one,
    the ``*.index`` files are ordered by the trailing step number of their
    prefix (``model.ckpt-1200``).  Fewer than ``n`` is a :class:`UsageError`
    that says how many there are.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UsageError(f"--last needs a positive number of checkpoints, got {n!r}")
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"{folder}: not a folder (--last N DIR takes a training folder)")
    state_file = path / "checkpoint"
    if state_file.is_file():
        from .._tf import tf

        try:
            state = tf().train.get_checkpoint_state(str(path))
        except Exception as exc:  # TF raises ParseError subclasses of varied kinds
            raise BadCheckpointError(str(state_file), f"unreadable checkpoint state file: {exc}") from None
        listed = list(state.all_model_checkpoint_paths) if state is not None else []
        if state is not None and not listed and state.model_checkpoint_path:
            listed = [state.model_checkpoint_path]
        # get_checkpoint_state has already joined relative entries to the folder.
        prefixes = [p for p in listed if Path(p + ".index").is_file()]
        how = f"listed in {state_file} with an .index file"
    else:
        stepped = []
        for index in path.glob("*.index"):
            prefix = str(index)[: -len(".index")]
            match = _STEP.search(prefix)
            if match and index.is_file():
                stepped.append((int(match.group(1)), prefix))
        prefixes = [p for _, p in sorted(stepped)]
        how = "with a step number (name-NNN.index) and no 'checkpoint' state file"
    if len(prefixes) < n:
        raise UsageError(f"{folder}: asked for the last {n} checkpoints but there {'is' if len(prefixes) == 1 else 'are'} "
                         f"only {len(prefixes)} ({how})")
    return prefixes[-n:]


# -- merging ---------------------------------------------------------------------------
@dataclass
class Take:
    """Take the tensors of ``source`` whose name ``pattern`` finds (``re.search``).

    ``renames`` are ``(pattern, replacement)`` pairs applied in order with
    ``re.sub`` to the taken names (each must match one of them).
    """

    source: str
    pattern: str
    renames: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        self.renames = tuple((str(p), str(r)) for p, r in self.renames)
        self._regex = _compile(self.pattern, self.describe())

    def describe(self) -> str:
        return f"take {self.pattern!r} from {self.source!r}"


@dataclass
class MethodRule:
    """Combine the sources of every output name ``pattern`` finds with merge ``method``.

    ``params`` are the method's parameters (``t`` for slerp, ``density`` for
    ties...).  ``weights`` are either a mapping ``source alias -> weight`` or a
    list with one weight per contributing source, in take order.  The first
    rule whose pattern finds an output name applies.  A method that needs a
    base (``task_arithmetic``, ``ties``, ``dare``) applies even to a name only
    one source gives; other methods apply only where sources conflict.
    """

    pattern: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    weights: Mapping[str, float] | Sequence[float] | None = None

    def __post_init__(self) -> None:
        self._regex = _compile(self.pattern, self.describe())
        self.method = get_method(self.method).name
        self.params = dict(self.params or {})
        reserved = sorted(set(self.params) & RESERVED_PARAMS)
        if reserved:
            raise UsageError(f"{self.describe()}: {reserved[0]!r} is not a method parameter "
                             f"(weights go in the rule's weights; the seed is the merge's seed)")
        try:
            if isinstance(self.weights, Mapping):
                self.weights = {str(k): float(v) for k, v in self.weights.items()}
            elif self.weights is not None:
                self.weights = [float(x) for x in self.weights]
        except (TypeError, ValueError):
            raise UsageError(f"{self.describe()}: weights must be numbers, got {self.weights!r}") from None

    @property
    def needs_base(self) -> bool:
        return get_method(self.method).needs_base

    def describe(self) -> str:
        return f"method {self.method} for {self.pattern!r}"


def plan_merge(
    sources: Mapping[str, PathLike],
    takes: Sequence[Take],
    *,
    methods: Sequence[MethodRule] = (),
    base: str | None = None,
    seed: int = 0,
    keep_optimizer: bool = False,
    graph_from: str | None = None,
) -> Plan:
    """Plan a checkpoint built from several sources; no tensor data is read.

    Each :class:`Take` contributes the matching tensors of one source (a take
    that matches nothing is a :class:`RuleError` with the closest names).
    Optimizer state is skipped unless ``keep_optimizer``.  Two contributions
    to one output name are a :class:`PlanError` unless a :class:`MethodRule`
    finds that name; the contributions must then agree on shape and dtype
    and be floating point.  Methods that need a base read the ``base``
    source's tensor of the same *output* name.  Randomised methods get
    ``derive_seed(seed, output_name)``.

    The TF2 object graph comes from ``graph_from`` (an alias), by default from
    the base if it has one, else from the source of the first take that has
    one; keys the output lacks are removed from it.
    """
    ckpts = {str(alias): open_checkpoint(path) for alias, path in sources.items()}
    if not ckpts:
        raise UsageError("merge needs at least one source")
    for alias in ckpts:
        if not alias or "=" in alias:
            raise UsageError(f"invalid source alias {alias!r}: use a short name such as a, base, ft1")
    known = ", ".join(ckpts)

    def check_alias(alias: str | None, what: str) -> None:
        if alias is not None and alias not in ckpts:
            raise UsageError(f"{what}: unknown source {alias!r}; sources: {known}")

    check_alias(base, "base")
    check_alias(graph_from, "object graph")
    if graph_from is not None and OBJECT_GRAPH_KEY not in ckpts[graph_from]:
        raise UsageError(f"object graph: source {graph_from!r} ({ckpts[graph_from].prefix}) has no TF2 object graph")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    if not takes:
        raise UsageError("merge needs at least one take (which tensors to take from which source)")
    methods = list(methods)
    for rule in methods:
        if isinstance(rule.weights, Mapping):
            for alias in rule.weights:
                check_alias(alias, f"{rule.describe()}: weights")
        _check_method(rule, None, 2, None)  # parameters, whatever the outputs turn out to be

    # 1. Each take's drafts, renamed.
    contributions: dict[str, list[Draft]] = {}
    skipped: dict[tuple[str, str], None] = {}
    renamed: dict[str, dict[str, str]] = {alias: {} for alias in ckpts}
    for take in takes:
        check_alias(take.source, take.describe())
        ckpt = ckpts[take.source]
        everything = [Draft(take.source, t.name, t.name, t.dtype, t.shape) for t in ckpt if t.name != OBJECT_GRAPH_KEY]
        matched = [d for d in everything if take._regex.search(d.name)]
        drafts = matched if keep_optimizer else [d for d in matched if not is_optimizer_state(d.name)]
        if not drafts:
            if matched:
                raise RuleError(f"{take.describe()} matches only optimizer state; pass --keep-optimizer to take it")
            raise _no_match(take.describe(), take.pattern, everything)
        kept_ids = {id(d) for d in drafts}
        for d in matched:
            if id(d) not in kept_ids:
                skipped[(take.source, d.source_name)] = None
        for pattern, replacement in take.renames:
            try:
                drafts = Rename(pattern, replacement).apply(drafts)
            except RuleError as exc:
                raise RuleError(f"{take.describe()}: {exc}") from None
        for d in drafts:
            if d.name == OBJECT_GRAPH_KEY:
                raise PlanError(f"{take.describe()}: {d.source_name!r} would be renamed to the reserved name {d.name}")
            group = contributions.setdefault(d.name, [])
            if any((c.source, c.source_name) == (d.source, d.source_name) for c in group):
                continue  # two takes of the same tensor to the same name: one contribution
            group.append(d)
            renamed[d.source].setdefault(d.source_name, d.name)

    # 2. One entry per output name.
    used = [False] * len(methods)
    applied = [False] * len(methods)
    validated: set[tuple] = set()
    entries: list[OutputEntry] = []
    for name in sorted(contributions):
        group = contributions[name]
        index = next((i for i, r in enumerate(methods) if r._regex.search(name)), None)
        rule = methods[index] if index is not None else None
        if index is not None:
            used[index] = True
        if rule is None or (len(group) == 1 and not rule.needs_base):
            if len(group) > 1:
                a, b = group[0], group[1]
                raise PlanError(
                    f"output {name!r} comes from two sources: {a.source}:{a.source_name} and "
                    f"{b.source}:{b.source_name}; add a method rule for it (--method PATTERN METHOD) "
                    f"or narrow the takes"
                )
            entries.append(_single_entry(group[0], ckpts))
            continue
        entries.append(_merged_entry(name, group, rule, ckpts, base, seed, validated))
        applied[index] = True
    for rule, was_used, was_applied in zip(methods, used, applied):
        if not was_used:
            outputs = [Draft("", n, n, "", ()) for n in contributions]
            raise _no_match(rule.describe(), rule.pattern, outputs)
        if not was_applied:
            raise RuleError(f"{rule.describe()} combines nothing: every output name it finds comes from one source "
                            f"only (or an earlier method rule takes it)")

    graph = None
    if graph_from is not None:
        candidates = [graph_from]
    else:
        candidates = ([base] if base is not None else []) + [t.source for t in takes]
    candidates = [a for a in dict.fromkeys(candidates) if OBJECT_GRAPH_KEY in ckpts[a]]
    if candidates:
        graph = _graph_from(ckpts, candidates[:1], entries, renamed[candidates[0]])
    dropped = [TensorRef(alias, name) for alias, name in skipped]
    return Plan(ckpts, entries, graph, dropped)


def _single_entry(draft: Draft, ckpts: dict[str, Checkpoint]) -> OutputEntry:
    info = ckpts[draft.source].info(draft.source_name)
    return OutputEntry(name=draft.name, inputs=(TensorRef(draft.source, draft.source_name),), dtype=info.dtype,
                       shape=info.shape, nbytes_in=info.nbytes, nbytes_out=out_nbytes(info.dtype, info.shape, info.nbytes))


def _merged_entry(name: str, group: list[Draft], rule: MethodRule, ckpts: dict[str, Checkpoint],
                  base: str | None, seed: int, validated: set[tuple]) -> OutputEntry:
    first = group[0]
    for d in group:
        if d.dtype not in FLOATING:
            raise PlanError(f"output {name!r}: {rule.describe()} cannot combine {d.dtype} tensor "
                            f"{d.source}:{d.source_name}; take it from one source only")
        if (d.dtype, d.shape) != (first.dtype, first.shape):
            raise PlanError(f"output {name!r}: {first.source}:{first.source_name} is {first.dtype}{list(first.shape)} "
                            f"but {d.source}:{d.source_name} is {d.dtype}{list(d.shape)}")
    refs = [TensorRef(d.source, d.source_name) for d in group]
    params: dict[str, Any] = dict(rule.params)
    if rule.needs_base:
        if base is None:
            raise PlanError(f"output {name!r}: {rule.describe()} needs a base; pass --base ALIAS")
        base_ckpt = ckpts[base]
        if name not in base_ckpt:
            raise PlanError(f"output {name!r}: {rule.describe()} needs the base's tensor of that name, "
                            f"but base {base!r} ({base_ckpt.prefix}) has none")
        info = base_ckpt.info(name)
        if (info.dtype, info.shape) != (first.dtype, first.shape):
            raise PlanError(f"output {name!r}: base {base}:{name} is {info.dtype}{list(info.shape)} "
                            f"but {first.source}:{first.source_name} is {first.dtype}{list(first.shape)}")
        refs.insert(0, TensorRef(base, name))
        params[BASE_INPUT] = True
    weights = _rule_weights(rule, name, group)
    if weights is not None:
        params[WEIGHTS] = weights
    key = (id(rule), len(group), None if weights is None else tuple(weights))
    if key not in validated:
        _check_method(rule, name, len(group), weights)
        validated.add(key)
    params[SEED] = derive_seed(seed, name)
    nbytes_in = sum(ckpts[r.source].info(r.name).nbytes for r in refs)
    return OutputEntry(name=name, inputs=tuple(refs), dtype=first.dtype, shape=first.shape, nbytes_in=nbytes_in,
                       nbytes_out=out_nbytes(first.dtype, first.shape, ckpts[first.source].info(first.source_name).nbytes),
                       method=rule.method, method_params=params)


def _rule_weights(rule: MethodRule, name: str, group: list[Draft]) -> list[float] | None:
    if rule.weights is None:
        return None
    if isinstance(rule.weights, Mapping):
        missing = [d.source for d in group if d.source not in rule.weights]
        if missing:
            raise PlanError(f"output {name!r}: {rule.describe()} has no weight for source {missing[0]!r}")
        return [float(rule.weights[d.source]) for d in group]
    if len(rule.weights) != len(group):
        sources = ", ".join(d.source for d in group)
        raise PlanError(f"output {name!r}: {rule.describe()} has {len(rule.weights)} weights "
                        f"for {len(group)} sources ({sources})")
    return list(rule.weights)


def _check_method(rule: MethodRule, name: str | None, count: int, weights: list[float] | None) -> None:
    """Check parameters, weights and input count now, on tiny dummy arrays, not mid-write."""
    dummy = [np.zeros(2) for _ in range(count)]
    try:
        apply_method(rule.method, dummy, weights=weights, base=np.zeros(2) if rule.needs_base else None,
                     seed=0, **rule.params)
    except UsageError as exc:
        where = f"output {name!r}: " if name is not None else ""
        raise RuleError(f"{where}{rule.describe()}: {exc}") from None


# -- the API mirrors the CLI -----------------------------------------------------------
def average(
    checkpoints: Sequence[PathLike],
    out: str | os.PathLike,
    *,
    weights: Sequence[float] | None = None,
    ema: float | None = None,
    int_policy: str = "last",
    keep_optimizer: bool = False,
    intersection: bool = False,
    allow_nonfinite: bool = False,
    dry_run: bool = False,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    workers: int = 1,
    force: bool = False,
    verify: bool = False,
    fsync: bool = True,
    progress: bool | None = None,
    crc_check: bool = True,
    byte_path: bool | None = None,
) -> WriteResult | Plan:
    """Average ``checkpoints`` into ``out`` (see :func:`plan_average`), streaming.

    A result with NaN or Inf raises :class:`NonFiniteError` naming the tensor
    unless ``allow_nonfinite``.  ``memory_budget``, ``workers``, ``force``,
    ``verify``, ``fsync``, ``progress``, ``crc_check`` and ``byte_path`` are the write options (see
    :mod:`ckptsurgery.options`), checked before anything is read;
    ``dry_run=True`` returns the plan.  For the last N saves of a run::

        average(last_checkpoints("runs/bert/", 5), "runs/bert-avg/model.ckpt")
    """
    options = check_write_options(dict(memory_budget=memory_budget, workers=workers, force=force, verify=verify,
                                       fsync=fsync, progress=progress,
                                       crc_check=crc_check, byte_path=byte_path))
    plan = plan_average(checkpoints, weights=weights, ema=ema, int_policy=int_policy,
                        keep_optimizer=keep_optimizer, intersection=intersection)
    return write_or_plan(plan, out, dry_run, allow_nonfinite=allow_nonfinite, **options)


def merge(
    sources: Mapping[str, PathLike],
    out: str | os.PathLike,
    *,
    takes: Sequence[Take],
    methods: Sequence[MethodRule] = (),
    base: str | None = None,
    seed: int = 0,
    keep_optimizer: bool = False,
    graph_from: str | None = None,
    allow_nonfinite: bool = False,
    dry_run: bool = False,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    workers: int = 1,
    force: bool = False,
    verify: bool = False,
    fsync: bool = True,
    progress: bool | None = None,
    crc_check: bool = True,
    byte_path: bool | None = None,
) -> WriteResult | Plan:
    """Merge parts of several ``sources`` (alias -> checkpoint) into ``out`` (see :func:`plan_merge`).

    Example: the encoder of ``a``, the decoder averaged from ``a`` and ``b``::

        merge({"a": "runs/a/", "b": "runs/b/"}, "merged/model.ckpt",
              takes=[Take("a", "."), Take("b", "^decoder/")],
              methods=[MethodRule("^decoder/", "linear", weights={"a": 0.3, "b": 0.7})])
    """
    options = check_write_options(dict(memory_budget=memory_budget, workers=workers, force=force, verify=verify,
                                       fsync=fsync, progress=progress,
                                       crc_check=crc_check, byte_path=byte_path))
    plan = plan_merge(sources, takes, methods=methods, base=base, seed=seed, keep_optimizer=keep_optimizer,
                      graph_from=graph_from)
    return write_or_plan(plan, out, dry_run, allow_nonfinite=allow_nonfinite, **options)


# -- plain-dict specs (recipes) --------------------------------------------------------
# One typed table per section (see :mod:`ckptsurgery.schema`); a wrong type is an error naming the key.
AVERAGE_FIELDS: dict[str, Kind] = {
    "checkpoints": Kind("a non-empty list of paths", lambda v: isinstance(v, list) and bool(v)),
    "last": MAPPING, "weights": NUMBERS.or_null(), "ema": NUMBER.or_null(), "int_policy": STRING,
    "keep_optimizer": BOOL, "intersection": BOOL, "allow_nonfinite": BOOL, "output": PATH.or_null(),
}
LAST_FIELDS: dict[str, Kind] = {"n": POSITIVE, "dir": PATH}
MERGE_FIELDS: dict[str, Kind] = {
    "sources": MAPPING, "take": LIST, "methods": LIST.or_null(), "base": STRING.or_null(), "seed": NON_NEGATIVE_INT,
    "keep_optimizer": BOOL, "object_graph": STRING.or_null(), "allow_nonfinite": BOOL, "output": PATH.or_null(),
}
TAKE_FIELDS: dict[str, Kind] = {"source": STRING, "pattern": PATTERN, "rename": RENAMES.or_null()}
METHOD_FIELDS: dict[str, Kind] = {
    "pattern": PATTERN, "method": STRING, "params": MAPPING.or_null(),
    "weights": Kind("a mapping of source alias -> weight, or a list of weights",
                    lambda v: isinstance(v, (dict, list))).or_null(),
}
AVERAGE_KEYS = set(AVERAGE_FIELDS)
MERGE_KEYS = set(MERGE_FIELDS)
TAKE_KEYS = set(TAKE_FIELDS)
METHOD_KEYS = set(METHOD_FIELDS)


def _renames(where: str, value: Any) -> list[tuple[str, str]]:
    """``[[pattern, replacement], ...]``, ``[{pattern:, replacement:}, ...]`` or ``{pattern: replacement}``."""
    if value is None:
        return []
    check_value(where, value, RENAMES)
    if isinstance(value, Mapping):
        return list(value.items())
    pairs = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if isinstance(item, list) and len(item) == 2:
            pairs.append((check_value(f"{at}[0]", item[0], PATTERN), check_value(f"{at}[1]", item[1], STRING)))
        else:
            data = check_fields(at, item, {"pattern": PATTERN, "replacement": STRING}, ("pattern", "replacement"))
            pairs.append((data["pattern"], data["replacement"]))
    return pairs


def _output(where: str, spec: dict, output: Any) -> str | None:
    if output is not None and spec.get("output") is not None:
        raise UsageError(f"{where}: output given twice (in the spec and by the caller)")
    value = output if output is not None else spec.get("output")
    return None if value is None else str(value)


@dataclass
class AverageSpec:
    """A checked ``average`` spec: what :func:`average` needs, paths resolved."""

    checkpoints: list[str]
    options: dict[str, Any]
    output: str | None = None

    def plan(self) -> Plan:
        opts = {k: v for k, v in self.options.items() if k != "allow_nonfinite"}
        return plan_average(self.checkpoints, **opts)


def parse_average_spec(spec: Mapping, *, resolve: Callable[[Any], str] = str, where: str = "average",
                       output: Any = None) -> AverageSpec:
    """Check an ``average`` dict: ``checkpoints: [paths]`` or ``last: {n, dir}``, plus
    ``weights``, ``ema``, ``int_policy``, ``keep_optimizer``, ``intersection``,
    ``allow_nonfinite``, ``output``.  Unknown keys are a :class:`UsageError` naming the key."""
    spec = check_fields(where, spec, AVERAGE_FIELDS)
    if ("checkpoints" in spec) == ("last" in spec):
        raise UsageError(f"{where}: give exactly one of 'checkpoints' (a list of paths) or 'last' ({{n, dir}})")
    if "checkpoints" in spec:
        paths = [resolve(check_value(f"{where}.checkpoints[{i}]", p, PATH)) for i, p in enumerate(spec["checkpoints"])]
    else:
        last = check_fields(f"{where}.last", spec["last"], LAST_FIELDS, ("n", "dir"))
        paths = last_checkpoints(resolve(last["dir"]), last["n"])
    options: dict[str, Any] = {}
    for key in ("weights", "ema", "int_policy", "keep_optimizer", "intersection", "allow_nonfinite"):
        if key in spec:
            options[key] = spec[key]
    out = _output(where, spec, output)
    return AverageSpec(paths, options, resolve(out) if out is not None else None)


@dataclass
class MergeSpec:
    """A checked ``merge`` spec: what :func:`merge` needs, paths resolved."""

    sources: dict[str, str]
    takes: list[Take]
    methods: list[MethodRule]
    base: str | None = None
    seed: int = 0
    keep_optimizer: bool = False
    graph_from: str | None = None
    allow_nonfinite: bool = False
    output: str | None = None

    def plan(self) -> Plan:
        return plan_merge(self.sources, self.takes, methods=self.methods, base=self.base, seed=self.seed,
                          keep_optimizer=self.keep_optimizer, graph_from=self.graph_from)


def parse_merge_spec(spec: Mapping, *, resolve: Callable[[Any], str] = str, where: str = "merge",
                     output: Any = None) -> MergeSpec:
    """Check a ``merge`` dict; unknown keys are a :class:`UsageError` naming the key::

        sources: {base: runs/base/, a: runs/ft_a/, b: runs/ft_b/}
        take:
          - {source: a, pattern: '.'}
          - {source: b, pattern: '^encoder/', rename: {'^encoder/': 'decoder/'}}
        methods:
          - {pattern: '^encoder/', method: ties, params: {density: 0.3}, weights: {a: 1.0, b: 0.5}}
        base: base
        seed: 0
        keep_optimizer: false
        object_graph: a           # alias whose TF2 object graph to carry (default: base, else first take)
        allow_nonfinite: false
        output: merged/model.ckpt
    """
    spec = check_fields(where, spec, MERGE_FIELDS, ("sources", "take"))
    sources = spec["sources"]
    if not sources:
        raise UsageError(f"{where}.sources: a mapping of alias -> checkpoint path, with at least one source")
    resolved = {alias: resolve(check_value(f"{where}.sources.{alias}", path, PATH)) for alias, path in sources.items()}
    takes = []
    for i, item in enumerate(spec["take"]):
        at = f"{where}.take[{i}]"
        data = check_fields(at, item, TAKE_FIELDS, ("source", "pattern"))
        try:
            takes.append(Take(data["source"], data["pattern"], _renames(f"{at}.rename", data.get("rename"))))
        except CkptSurgeryError as exc:
            raise type(exc)(f"{at}: {exc}") from None
    methods = []
    for i, item in enumerate(spec.get("methods", [])):
        at = f"{where}.methods[{i}]"
        data = check_fields(at, item, METHOD_FIELDS, ("pattern", "method"))
        params = data.get("params", {})
        try:
            defaults = get_method(data["method"]).params
        except CkptSurgeryError as exc:
            raise type(exc)(f"{at}: {exc}") from None
        for name, value in params.items():
            if name in defaults:  # an unknown parameter is named by MethodRule below
                check_value(f"{at}.params.{name}", value, BOOL if isinstance(defaults[name], bool) else NUMBER)
        weights = data.get("weights")
        if isinstance(weights, dict):
            for alias, w in weights.items():
                check_value(f"{at}.weights.{alias}", w, NUMBER)
        elif weights is not None:
            check_value(f"{at}.weights", weights, NUMBERS)
        try:
            methods.append(MethodRule(data["pattern"], data["method"], params, weights))
        except CkptSurgeryError as exc:
            raise type(exc)(f"{at}: {exc}") from None
    seed = spec.get("seed", 0)
    out = _output(where, spec, output)
    return MergeSpec(
        sources=resolved, takes=takes, methods=methods,
        base=spec.get("base"), seed=seed,
        keep_optimizer=spec.get("keep_optimizer", False),
        graph_from=spec.get("object_graph"),
        allow_nonfinite=spec.get("allow_nonfinite", False),
        output=resolve(out) if out is not None else None,
    )


def merge_plan_from_spec(spec: Mapping, *, resolve: Callable[[Any], str] = str, where: str = "merge") -> Plan:
    """The :class:`Plan` of a ``merge`` dict (see :func:`parse_merge_spec`); reads no tensor data."""
    return parse_merge_spec(spec, resolve=resolve, where=where).plan()


def average_plan_from_spec(spec: Mapping, *, resolve: Callable[[Any], str] = str, where: str = "average") -> Plan:
    """The :class:`Plan` of an ``average`` dict (see :func:`parse_average_spec`); reads no tensor data."""
    return parse_average_spec(spec, resolve=resolve, where=where).plan()


def _run_spec(parsed, where: str, dry_run: bool, options: dict) -> WriteResult | Plan:
    options = check_write_options(options, where)
    plan = parsed.plan()
    if parsed.output is None and not dry_run:
        raise UsageError(f"{where}: no output given")
    allow = parsed.options.get("allow_nonfinite", False) if isinstance(parsed, AverageSpec) else parsed.allow_nonfinite
    return write_or_plan(plan, parsed.output or "", dry_run, allow_nonfinite=allow, **options)


def merge_from_spec(spec: Mapping, output: Any = None, *, resolve: Callable[[Any], str] = str, dry_run: bool = False,
                    where: str = "merge", **options) -> WriteResult | Plan:
    """Run a ``merge`` dict (see :func:`parse_merge_spec`): write to ``output`` (or the
    spec's ``output``), or return the plan with ``dry_run``.  ``resolve`` turns the
    spec's paths into real ones (a recipe resolves them against its folder);
    ``options`` are write options."""
    return _run_spec(parse_merge_spec(spec, resolve=resolve, where=where, output=output), where, dry_run, options)


def average_from_spec(spec: Mapping, output: Any = None, *, resolve: Callable[[Any], str] = str,
                      dry_run: bool = False, where: str = "average", **options) -> WriteResult | Plan:
    """Run an ``average`` dict (see :func:`parse_average_spec`), like :func:`merge_from_spec`."""
    return _run_spec(parse_average_spec(spec, resolve=resolve, where=where, output=output), where, dry_run, options)
