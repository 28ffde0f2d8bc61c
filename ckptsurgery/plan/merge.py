"""``merge``: plan one checkpoint built from parts of several; no tensor data is read.

:func:`plan_merge` builds one checkpoint from several *sources* named by
alias: each :class:`Take` copies the variables whose name matches a pattern
from one source (optionally renamed); where two sources give the same
output name, a :class:`MethodRule` says how to combine them (``linear``,
``slerp``, ``task_arithmetic``, ``ties``, ``dare``; see
:mod:`ckptsurgery.merge_methods`), else planning fails.

Example::

    import ckptsurgery as cs

    cs.merge({"a": "runs/a/", "b": "runs/b/"}, "merged/model.ckpt",
             takes=[cs.Take("a", "^encoder/"), cs.Take("b", "^decoder/")])

How a multi-input entry is encoded in the plan (decoded by
:mod:`ckptsurgery.execute.accumulate`, which :func:`ckptsurgery.execute.executor.produce`
calls): ``entry.method`` is the merge method; ``entry.inputs`` are the
tensors to combine in order, except that when ``entry.base_input`` is true,
``inputs[0]`` is the base tensor (for methods that need one);
``entry.params`` are the method's own parameters, ``entry.weights`` one
weight per merged input (base excluded) and ``entry.seed`` the per-tensor
seed ``derive_seed(seed, output_name)``.  ``nbytes_in`` of a multi-input
entry is the sum over all its inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..dtypes import FLOATING
from ..errors import PlanError, RuleError, UsageError
from ..io.reader import OBJECT_GRAPH_KEY, Checkpoint, open_checkpoint
from ..merge_methods import apply_method, derive_seed, get_method
from .entries import OutputEntry, Plan, TensorRef, carry_object_graph, out_nbytes
from .optimizer_state import is_optimizer_state
from .rules import Draft, Rename, compile_pattern, no_match

PathLike = str | os.PathLike | Checkpoint
#: Not method parameters: a merge's weights and seed have their own places (rule weights, merge seed).
NOT_PARAMS = frozenset({"weights", "seed", "base_input"})


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
        self.regex = compile_pattern(self.pattern, self.describe())

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
        self.regex = compile_pattern(self.pattern, self.describe())
        self.method = get_method(self.method).name
        self.params = dict(self.params or {})
        reserved = sorted(set(self.params) & NOT_PARAMS)
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
        matched = [d for d in everything if take.regex.search(d.name)]
        drafts = matched if keep_optimizer else [d for d in matched if not is_optimizer_state(d.name)]
        if not drafts:
            if matched:
                raise RuleError(f"{take.describe()} matches only optimizer state; pass --keep-optimizer to take it")
            raise no_match(take.describe(), take.pattern, everything)
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
        index = next((i for i, r in enumerate(methods) if r.regex.search(name)), None)
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
            raise no_match(rule.describe(), rule.pattern, outputs)
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
        graph = carry_object_graph(ckpts, candidates[:1], entries, renamed[candidates[0]])
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
    base_input = False
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
        base_input = True
    weights = _rule_weights(rule, name, group)
    key = (id(rule), len(group), None if weights is None else tuple(weights))
    if key not in validated:
        _check_method(rule, name, len(group), weights)
        validated.add(key)
    nbytes_in = sum(ckpts[r.source].info(r.name).nbytes for r in refs)
    return OutputEntry(name=name, inputs=tuple(refs), dtype=first.dtype, shape=first.shape, nbytes_in=nbytes_in,
                       nbytes_out=out_nbytes(first.dtype, first.shape, ckpts[first.source].info(first.source_name).nbytes),
                       method=rule.method, params=dict(rule.params), weights=None if weights is None else tuple(weights),
                       seed=derive_seed(seed, name), base_input=base_input)


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
