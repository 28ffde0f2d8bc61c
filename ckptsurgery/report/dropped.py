"""The "dropped" line: what a surgery left out, counted by why, on one line.

A BERT checkpoint loses 800 optimizer slots to ``--drop-optimizer``; listing
them all on one line (and cutting it with "...") tells a user nothing.  The
summary counts dropped tensors by kind, ``dropped 1,204 tensors: 812
optimizer state, 2 step counters, 390 matched --drop 'x'``; ``--verbose``
lists the names, one a line, and ``--json`` carries them exactly.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ..text.display import display_name
from ..plan.optimizer_state import is_optimizer_state
from ..plan.entries import drafts_of
from ..plan.rules import Drop, DropOptimizer, Keep, Rule, merge_adjacent_keeps
from ..io.reader import Checkpoint
from ..plan.step_counters import is_step_counter

OPTIMIZER_STATE = "optimizer state"
STEP_COUNTER = "step counters"


def _counter_or_optimizer(name: str, ckpt: Checkpoint | None) -> str | None:
    info = ckpt.info(name) if ckpt is not None and name in ckpt else None
    if is_step_counter(name, info.dtype if info else None, info.shape if info else None):
        return STEP_COUNTER
    if is_optimizer_state(name):
        return OPTIMIZER_STATE
    return None


def dropped_by_rule(ckpt: Checkpoint, rules: Sequence[Rule]) -> dict[str, str]:
    """Each tensor the rules leave out of ``ckpt`` -> why, by replaying the rules on the index.

    Why is ``"step counters"`` or ``"optimizer state"`` for ``--drop-optimizer``,
    ``"matched --drop 'x'"`` for a drop rule, ``"not matched by --keep 'a'"``
    for a keep rule.  Reads no tensor data.
    """
    drafts = drafts_of(ckpt, "src")
    why: dict[str, str] = {}
    for rule in merge_adjacent_keeps(list(rules)):
        before = [d.source_name for d in drafts]
        drafts = rule.apply(drafts)
        left = {d.source_name for d in drafts}
        for name in before:
            if name in left:
                continue
            if isinstance(rule, DropOptimizer):
                why[name] = _counter_or_optimizer(name, ckpt) or OPTIMIZER_STATE
            elif isinstance(rule, Drop):
                why[name] = f"matched {rule.describe()}"
            elif isinstance(rule, Keep):
                why[name] = f"not matched by {rule.describe()}"
            else:
                why[name] = f"left out by {rule.describe()}"
    return why


def dropped_by_name(names: Iterable[str], other: str = "other", ckpt: Checkpoint | None = None) -> dict[str, str]:
    """Why, guessed from each name alone: step counter, optimizer state, or ``other``."""
    return {name: _counter_or_optimizer(name, ckpt) or other for name in names}


def summary_line(why: dict[str, str], verb: str = "dropped") -> str:
    """``dropped 1,204 tensors: 812 optimizer state, 2 step counters, 390 matched --drop 'x'``."""
    counts: dict[str, int] = {}
    for kind in why.values():
        counts[kind] = counts.get(kind, 0) + 1
    total = len(why)
    ranked = sorted(counts.items(), key=lambda item: -item[1])  # largest first; ties in order seen
    parts = ", ".join(f"{n:,} {_singular(kind) if n == 1 else kind}" for kind, n in ranked)
    return display_name(f"{verb} {total:,} tensor{'' if total == 1 else 's'}: {parts}")


def _singular(kind: str) -> str:
    return "step counter" if kind == STEP_COUNTER else kind


def render_dropped(why: dict[str, str], verbose: bool, verb: str = "dropped") -> str:
    """The summary line, then (``verbose``) each name and why, or a hint where the names are."""
    line = summary_line(why, verb)
    if not verbose:
        return f"{line} (names: --verbose or --json)"
    return "\n".join([line] + [f"  {display_name(name)}  ({display_name(_singular(kind))})" for name, kind in why.items()])
