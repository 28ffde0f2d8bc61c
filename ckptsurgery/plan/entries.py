"""The plan: a pure list of output tensors, built and validated before any data is read.

Every command (copy, edit, transfer, average, merge) turns its sources and
rules into a :class:`Plan`.  Only then does the executor read tensors, and
it reads exactly what the plan names.  This split is what makes
``--dry-run`` honest (it prints the plan, byte totals included, and stops)
and what lets every error about names, shapes and dtypes surface before a
single byte is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..text.display import display_name
from ..dtypes import itemsize
from ..errors import PlanError
from ..errors import RuleError
from .optimizer_state import SlotTies, tie_slots
from .rules import Cast, Draft, Resize, Rule, merge_adjacent_keeps
from ..text.sizes import format_size
from ..io.reader import OBJECT_GRAPH_KEY, Checkpoint
from ..transforms import Step


@dataclass(frozen=True)
class TensorRef:
    """One tensor of one source: ``source`` is the source's alias."""

    source: str
    name: str


@dataclass(frozen=True)
class OutputEntry:
    """One tensor of the output and everything needed to produce it.

    One input: read it, apply ``steps``.  Several inputs: read each, combine
    them with merge ``method`` (float64 accumulation), then apply ``steps``.
    A merge's call is typed: ``params`` are the method's own parameters;
    ``weights`` one per merged input (base excluded; None: the method's
    default); ``seed`` the per-tensor seed (already derived from the name);
    ``base_input``: ``inputs[0]`` is the base tensor, not an input to merge.
    """

    name: str
    inputs: tuple[TensorRef, ...]
    dtype: str
    shape: tuple[int, ...]
    nbytes_in: int
    nbytes_out: int
    steps: tuple[Step, ...] = ()
    method: str | None = None
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    weights: tuple[float, ...] | None = None
    seed: int | None = None
    base_input: bool = False
    note: str = ""  # why this entry changed beyond its own rules, e.g. "slot of dense/kernel"

    @property
    def method_params(self) -> dict[str, Any]:
        """The merge call as one mapping (for display and ``--json``): the method's
        parameters, then ``base_input``, ``weights`` and ``seed`` where set."""
        out = dict(self.params)
        if self.base_input:
            out["base_input"] = True
        if self.weights is not None:
            out["weights"] = list(self.weights)
        if self.seed is not None:
            out["seed"] = self.seed
        return out

    @property
    def passthrough(self) -> bool:
        """Same dtype, shape and value as its one input (only the name may change): the
        executor may copy its bytes instead of decoding it (see :mod:`ckptsurgery.plan.byte_path`)."""
        return self.method is None and not self.steps and len(self.inputs) == 1

    def to_json(self) -> dict:
        out = {
            "name": self.name,
            "from": [{"source": r.source, "name": r.name} for r in self.inputs],
            "dtype": self.dtype,
            "shape": list(self.shape),
            "nbytes_in": self.nbytes_in,
            "nbytes_out": self.nbytes_out,
            "steps": [s.describe() for s in self.steps],
            "method": self.method,
            "method_params": {k: v for k, v in self.method_params.items() if k != "base_input"} or None,
        }
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class ObjectGraphRewrite:
    """Carry a TF2 object graph from ``source`` to the output.

    ``key_map`` maps each of the source's checkpoint keys to its output key,
    or to None when the key was dropped; see :mod:`ckptsurgery.plan.objectgraph`.
    """

    source: str
    key_map: dict[str, str | None]


@dataclass
class Plan:
    """Sources, output entries in write order, and what was left out."""

    sources: dict[str, Checkpoint]
    entries: list[OutputEntry]
    object_graph: ObjectGraphRewrite | None = None
    dropped: list[TensorRef] = field(default_factory=list)
    byte_path: bool | None = None  # the write option, for --dry-run's byte-path line (None: the environment)

    @property
    def nbytes_in(self) -> int:
        return sum(e.nbytes_in for e in self.entries)

    @property
    def nbytes_out(self) -> int:
        return sum(e.nbytes_out for e in self.entries)

    def output_names(self) -> list[str]:
        names = [e.name for e in self.entries]
        if self.object_graph is not None:
            names.append(OBJECT_GRAPH_KEY)
        return names

    def to_json(self) -> dict:
        return {
            "sources": {alias: ckpt.prefix for alias, ckpt in self.sources.items()},
            "entries": [_entry_json(self, e) for e in self.entries],
            "dropped": [{"source": r.source, "name": r.name} for r in self.dropped],
            "object_graph": self.object_graph.source if self.object_graph else None,
            "tensors_out": len(self.entries),
            "nbytes_in": self.nbytes_in,
            "nbytes_out": self.nbytes_out,
            "byte_path": _byte_path_summary(self),
        }

    def render(self) -> str:
        """A table for ``--dry-run``: each output, where it comes from, what changes."""
        from .byte_path import byte_path_enabled, entry_note

        single_source = len(self.sources) == 1
        byte_path_on = byte_path_enabled(self.byte_path)
        lines = []
        for e in self.entries:
            origin = ", ".join(
                r.name if single_source else r.source if r.name == e.name else f"{r.source}:{r.name}"
                for r in e.inputs
            )
            if e.method:
                origin = f"{e.method}({origin})"
            change = "" if origin == e.name else f"  <- {origin}"
            infos = [self.sources[r.source].info(r.name) for r in e.inputs]
            if infos and (infos[0].dtype != e.dtype or infos[0].shape != e.shape):
                change += f"  [{infos[0].dtype}{list(infos[0].shape)} -> {e.dtype}{list(e.shape)}]"
            if e.note:
                change += f"  ({e.note})"
            if byte_path_on and not e.passthrough:
                change += f"  [{entry_note(self, e)}]"
            lines.append(f"  {e.name}  {e.dtype}{list(e.shape)}  {format_size(e.nbytes_out)}{change}")
        for ref in self.dropped:
            lines.append(f"- {ref.name if single_source else f'{ref.source}:{ref.name}'}  (dropped)")
        if self.object_graph is not None:
            how = "rewritten to match" if self.object_graph.key_map else "carried unchanged"
            lines.append(f"  {OBJECT_GRAPH_KEY}  (object graph from {self.object_graph.source}, {how})")
        from .byte_path import describe

        lines.append(describe(self, self.byte_path))
        lines.append(
            f"plan: {len(self.entries)} tensors out, {len(self.dropped)} dropped; "
            f"{format_size(self.nbytes_in)} read, {format_size(self.nbytes_out)} written"
        )
        return "\n".join(display_name(line) for line in lines)  # one line per entry: names are input


def _entry_json(plan: Plan, entry: OutputEntry) -> dict:
    """An entry for ``--json``; a computed one says how, on the byte path (chunked, held whole, falls back)."""
    from .byte_path import byte_path_enabled, entry_compute_json, entry_note

    out = entry.to_json()
    if not entry.passthrough and byte_path_enabled(plan.byte_path):
        out["computed"] = entry_note(plan, entry)
        out["compute"] = entry_compute_json(plan, entry)
    return out


def _byte_path_summary(plan: Plan) -> dict:
    from .byte_path import summary

    return summary(plan, plan.byte_path)


def out_nbytes(dtype: str, shape: tuple[int, ...], nbytes_in: int) -> int:
    """Output size: exact for fixed-size dtypes, the input's size for strings."""
    return nbytes_in if dtype == "string" else math.prod(shape) * itemsize(dtype)


def drafts_of(ckpt: Checkpoint, alias: str) -> list[Draft]:
    """A draft for every tensor of ``ckpt`` except its object graph."""
    return [Draft(alias, t.name, t.name, t.dtype, t.shape) for t in ckpt if t.name != OBJECT_GRAPH_KEY]


def mark_slots(drafts: list[Draft], ties: SlotTies) -> None:
    """Tell each draft which variable it is a slot of, so a cast or resize of the variable carries it along."""
    for draft in drafts:
        draft.slot_of = ties.tied.get(draft.source_name)
        draft.loose_slot = draft.source_name in ties.loose


def entry_from_draft(draft: Draft, ckpt: Checkpoint) -> OutputEntry:
    info = ckpt.info(draft.source_name)
    return OutputEntry(
        name=draft.name,
        inputs=(TensorRef(draft.source, draft.source_name),),
        dtype=draft.dtype,
        shape=draft.shape,
        nbytes_in=info.nbytes,
        nbytes_out=out_nbytes(draft.dtype, draft.shape, info.nbytes),
        steps=tuple(draft.steps),
        note=draft.note,
    )


def check_unique_outputs(drafts: list[Draft]) -> None:
    """Two inputs mapped to one output name would silently lose one: refuse."""
    seen: dict[str, Draft] = {}
    for draft in drafts:
        if draft.name == OBJECT_GRAPH_KEY:
            raise PlanError(f"{draft.source_name!r} would be renamed to the reserved name {OBJECT_GRAPH_KEY}")
        if draft.name in seen:
            first = seen[draft.name]
            raise PlanError(
                f"two tensors map to output {draft.name!r}: {first.source_name!r} and {draft.source_name!r}"
            )
        seen[draft.name] = draft


def plan_edit(ckpt: Checkpoint, rules: list[Rule], alias: str = "src") -> Plan:
    """Apply ``rules`` in order to every tensor of ``ckpt``; no data is read.

    With no rules this is the plan of a plain copy.
    """
    drafts = source_drafts = drafts_of(ckpt, alias)
    rules = merge_adjacent_keeps(list(rules))
    if any(isinstance(rule, (Cast, Resize)) for rule in rules):
        mark_slots(drafts, tie_slots(ckpt))
    for rule in rules:
        drafts = rule.apply(drafts)
    for draft in drafts:
        if draft.pending_error:
            raise RuleError(draft.pending_error)
    check_unique_outputs(drafts)
    if not drafts and source_drafts:
        raise PlanError("the rules leave no tensor to write")
    if not drafts and OBJECT_GRAPH_KEY not in ckpt:
        raise PlanError(f"{ckpt.prefix} holds no tensor to write")
    # A bundle holding only its object graph (a SavedModel of a model without variables) is written as it is.
    kept = {d.source_name for d in drafts}
    dropped = [TensorRef(alias, t.name) for t in ckpt if t.name != OBJECT_GRAPH_KEY and t.name not in kept]
    graph = None
    if OBJECT_GRAPH_KEY in ckpt:
        key_map: dict[str, str | None] = {t.name: None for t in ckpt if t.name != OBJECT_GRAPH_KEY}
        key_map.update({d.source_name: d.name for d in drafts})
        graph = ObjectGraphRewrite(alias, key_map)
    entries = [entry_from_draft(d, ckpt) for d in drafts]
    return Plan({alias: ckpt}, entries, graph, dropped)


def carry_object_graph(sources: dict[str, Checkpoint], candidates: Sequence[str], entries: list[OutputEntry],
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
