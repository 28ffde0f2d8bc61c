"""Surgery rules: rename, keep, drop, drop-optimizer, cast, resize.

Rules are applied in the order given, each to the running list of
:class:`Draft` outputs, and know nothing about tensor data: planning with
rules reads only the index.  A rule that matches nothing is an error (a
typo in a pattern must not silently produce an unchanged checkpoint), and
the error names the rule and suggests the closest names.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field

from ..dtypes import KNOWN, NUMERIC
from ..errors import RuleError
from ..io.index import MAX_ELEMENTS
from .optimizer_state import is_optimizer_state
from ..transforms import Step, check_init


@dataclass
class Draft:
    """An output tensor while rules are being applied to it."""

    source: str
    source_name: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    steps: list[Step] = field(default_factory=list)
    slot_of: str | None = None  # source name of the variable this optimizer slot belongs to
    loose_slot: bool = False  # optimizer slot whose variable the checkpoint does not identify
    note: str = ""  # shown by --dry-run, e.g. "slot of dense/kernel"
    pending_error: str | None = None  # raised at the end of planning unless a later rule drops this draft


def _follow_note(slot: Draft, variable: Draft) -> None:
    slot.note = f"slot of {variable.name}"


def _flag_loose_slots(rule: str, drafts: list[Draft], changed: list[tuple[Draft, str, tuple[int, ...]]],
                      touched: set[int]) -> None:
    """Mark loose slots that may belong to a changed variable (same old dtype and shape).

    Their variable is unknown, so following it would be a guess; leaving them
    unchanged gives a checkpoint that loads and then fails (or silently
    misbehaves) at the first training step.  The error is raised after all
    rules ran, so ``--drop-optimizer`` before or after this rule clears it.
    """
    before = {(dtype, shape): variable for variable, dtype, shape in changed}
    for draft in drafts:
        if draft.loose_slot and id(draft) not in touched and (draft.dtype, draft.shape) in before:
            variable = before[(draft.dtype, draft.shape)]
            draft.pending_error = (
                f"{rule}: optimizer slot {draft.name!r} cannot be tied to its variable (the checkpoint does not "
                f"record it), so it cannot follow {variable.name!r}; add --drop-optimizer to drop optimizer state"
            )


def compile_pattern(pattern: str, rule: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise RuleError(f"{rule}: invalid regular expression {pattern!r}: {exc}") from None


def no_match(rule: str, pattern: str, drafts: list[Draft]) -> RuleError:
    """The error for a rule that matches nothing, with the closest names or scopes."""
    names = [d.name for d in drafts]
    scopes = {n.rsplit("/", i)[0] + "/" for n in names for i in range(1, n.count("/") + 1)}
    plain = re.sub(r"[\\^$.*+?()\[\]{}|]", "", pattern)
    close = difflib.get_close_matches(plain, sorted(scopes) + names, n=3, cutoff=0.5)
    if not close:
        close = [n for n in names if plain and plain in n][:3]
    hint = f"; closest names: {', '.join(close)}" if close else ""
    return RuleError(f"{rule} matches no tensor{hint}")


class Rule:
    """Base class: ``apply`` maps drafts to drafts, ``describe`` is the flag form."""

    def apply(self, drafts: list[Draft]) -> list[Draft]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def __str__(self) -> str:
        return self.describe()


@dataclass
class Rename(Rule):
    """``re.sub(pattern, replacement, name)`` on every name the pattern finds."""

    pattern: str
    replacement: str

    def __post_init__(self) -> None:
        self._regex = compile_pattern(self.pattern, self.describe())

    def describe(self) -> str:
        return f"--rename {self.pattern!r} {self.replacement!r}"

    def apply(self, drafts: list[Draft]) -> list[Draft]:
        matched = 0
        for draft in drafts:
            if self._regex.search(draft.name):
                matched += 1
                try:
                    draft.name = self._regex.sub(self.replacement, draft.name)
                except (re.error, IndexError) as exc:
                    raise RuleError(f"{self.describe()}: invalid replacement: {exc}") from None
                if not draft.name:
                    raise RuleError(f"{self.describe()}: renames {draft.source_name!r} to an empty name")
        if not matched:
            raise no_match(self.describe(), self.pattern, drafts)
        return drafts


@dataclass
class Keep(Rule):
    """Keep only tensors that some pattern finds (``re.search``); drop the rest."""

    patterns: list[str]

    def __post_init__(self) -> None:
        self._regexes = [compile_pattern(p, f"--keep {p!r}") for p in self.patterns]

    def describe(self) -> str:
        return " ".join(f"--keep {p!r}" for p in self.patterns)

    def apply(self, drafts: list[Draft]) -> list[Draft]:
        for pattern, regex in zip(self.patterns, self._regexes):
            if not any(regex.search(d.name) for d in drafts):
                raise no_match(f"--keep {pattern!r}", pattern, drafts)
        return [d for d in drafts if any(r.search(d.name) for r in self._regexes)]


@dataclass
class Drop(Rule):
    """Drop tensors the pattern finds (``re.search``)."""

    pattern: str

    def __post_init__(self) -> None:
        self._regex = compile_pattern(self.pattern, self.describe())

    def describe(self) -> str:
        return f"--drop {self.pattern!r}"

    def apply(self, drafts: list[Draft]) -> list[Draft]:
        kept = [d for d in drafts if not self._regex.search(d.name)]
        if len(kept) == len(drafts):
            raise no_match(self.describe(), self.pattern, drafts)
        return kept


@dataclass
class DropOptimizer(Rule):
    """Drop optimizer slots, accumulators and counters (see :mod:`optimizer_state`)."""

    def describe(self) -> str:
        return "--drop-optimizer"

    def apply(self, drafts: list[Draft]) -> list[Draft]:
        kept = [d for d in drafts if not is_optimizer_state(d.name)]
        if len(kept) == len(drafts):
            raise RuleError("--drop-optimizer finds no optimizer state in this checkpoint")
        return kept


@dataclass
class Cast(Rule):
    """Cast tensors of dtype ``from_dtype`` (optionally only those ``pattern`` finds)."""

    from_dtype: str
    to_dtype: str
    pattern: str | None = None

    def __post_init__(self) -> None:
        for dtype in (self.from_dtype, self.to_dtype):
            if dtype not in KNOWN:
                raise RuleError(f"{self.describe()}: unknown dtype {dtype!r}; known: {', '.join(sorted(KNOWN))}")
            if dtype not in NUMERIC and dtype != "bool":
                raise RuleError(f"{self.describe()}: cannot cast {dtype} tensors (only numeric dtypes)")
        self._regex = compile_pattern(self.pattern, self.describe()) if self.pattern else None

    def describe(self) -> str:
        return f"--cast {self.from_dtype}:{self.to_dtype}" + (f" {self.pattern!r}" if self.pattern else "")

    def apply(self, drafts: list[Draft]) -> list[Draft]:
        changed: list[tuple[Draft, str, tuple[int, ...]]] = []
        for draft in drafts:
            if draft.dtype == self.from_dtype and (self._regex is None or self._regex.search(draft.name)):
                changed.append((draft, draft.dtype, draft.shape))
                draft.dtype = self.to_dtype
                draft.steps.append(Step("cast", {"to": self.to_dtype}))
        if not changed:
            raise RuleError(f"{self.describe()} matches no {self.from_dtype} tensor")
        self._cast_slots(drafts, changed)
        return drafts

    def _cast_slots(self, drafts: list[Draft], changed: list[tuple[Draft, str, tuple[int, ...]]]) -> None:
        """Optimizer slots follow their variable: TF restores a slot only into its variable's dtype."""
        touched = {id(d) for d, _, _ in changed}
        variables = {d.source_name: d for d, _, _ in changed}
        for draft in drafts:
            variable = variables.get(draft.slot_of) if draft.slot_of else None
            if variable is None or id(draft) in touched:
                continue
            touched.add(id(draft))
            _follow_note(draft, variable)
            if draft.dtype != self.to_dtype:
                draft.dtype = self.to_dtype
                draft.steps.append(Step("cast", {"to": self.to_dtype}))
        _flag_loose_slots(self.describe(), drafts, changed, touched)


def parse_shape(text: str, rule: str) -> tuple[int | None, ...]:
    """Parse ``"30600,768"``; ``*`` keeps that dimension.  ``""`` is a scalar."""
    dims: list[int | None] = []
    for part in [p.strip() for p in text.strip("()[] ").split(",") if p.strip()]:
        if part == "*":
            dims.append(None)
            continue
        if not part.isdigit():
            raise RuleError(f"{rule}: invalid shape {text!r}: use comma-separated sizes such as 30600,768 (* keeps a size)")
        dims.append(int(part))
    return tuple(dims)


@dataclass
class Resize(Rule):
    """Slice or pad tensors the pattern finds to ``shape`` (a vocabulary grows or shrinks)."""

    pattern: str
    shape: str
    init: str = "zeros"
    seed: int = 0

    def __post_init__(self) -> None:
        self._regex = compile_pattern(self.pattern, self.describe())
        self._dims = parse_shape(self.shape, self.describe())
        problem = check_init(self.init)
        if problem:
            raise RuleError(f"{self.describe()}: {problem}")

    def describe(self) -> str:
        return f"--resize {self.pattern!r} {self.shape}" + (f" {self.init}" if self.init != "zeros" else "")

    def apply(self, drafts: list[Draft]) -> list[Draft]:
        hits = [d for d in drafts if self._regex.search(d.name)]
        hit_sources = {d.source_name for d in hits}
        # A slot of a resized variable is resized with it (below, zero-filled), even if the pattern finds it too.
        followers = [d for d in drafts if d.slot_of is not None and d.slot_of in hit_sources]
        follower_ids = {id(d) for d in followers}
        changed: list[tuple[Draft, str, tuple[int, ...]]] = []
        for draft in hits:
            if id(draft) in follower_ids:
                continue
            if len(self._dims) != len(draft.shape):
                raise RuleError(f"{self.describe()}: {draft.name!r} has rank {len(draft.shape)} "
                                f"(shape {list(draft.shape)}), the new shape has rank {len(self._dims)}")
            if draft.dtype == "string" and self.init != "zeros":
                raise RuleError(f"{self.describe()}: string tensor {draft.name!r} can only be padded with empty strings")
            new_shape = tuple(old if new is None else new for old, new in zip(draft.shape, self._dims))
            if math.prod(new_shape) > MAX_ELEMENTS:
                raise RuleError(f"{self.describe()}: {draft.name!r} would have {math.prod(new_shape):,} elements "
                                f"(shape {list(new_shape)}); a checkpoint tensor holds at most {MAX_ELEMENTS:,}")
            changed.append((draft, draft.dtype, draft.shape))
            if new_shape != draft.shape:
                draft.steps.append(Step("resize", {"shape": new_shape, "init": self.init, "seed": self.seed}))
                draft.shape = new_shape
        if not hits:
            raise no_match(self.describe(), self.pattern, drafts)
        self._resize_slots(drafts, followers, changed)
        return drafts

    def _resize_slots(self, drafts: list[Draft], followers: list[Draft],
                      changed: list[tuple[Draft, str, tuple[int, ...]]]) -> None:
        """Resize each slot like its variable; new rows of moments and accumulators are zeros."""
        variables = {d.source_name: (d, shape) for d, _, shape in changed}
        pending = list(followers)
        while pending:  # a slot's own slot (an average of a moment) follows once the moment is done
            ready = [s for s in pending if s.slot_of in variables]
            if not ready:
                break
            pending = [s for s in pending if s.slot_of not in variables]
            for slot in ready:
                old_shape = slot.shape
                self._resize_slot(slot, *variables[slot.slot_of])
                variables[slot.source_name] = (slot, old_shape)
        resized = [(d, dtype, shape) for d, dtype, shape in changed if d.shape != shape]
        _flag_loose_slots(self.describe(), drafts, resized, {id(d) for d in followers} | {id(d) for d, _, _ in changed})

    def _resize_slot(self, slot: Draft, variable: Draft, old_shape: tuple[int, ...]) -> None:
        """Give ``slot`` its variable's new shape: slice, or pad with zeros (fresh moments are zero).

        An exponential moving average of the variable is a copy of weights, not
        a moment: its new cells take the rule's INIT like the variable's.
        """
        _follow_note(slot, variable)
        if slot.shape != old_shape:
            slot.pending_error = (f"{self.describe()}: optimizer slot {slot.name!r} has shape {list(slot.shape)}, "
                                  f"its variable {variable.name!r} {list(old_shape)}: cannot resize it along; "
                                  "add --drop-optimizer to drop optimizer state")
        elif variable.shape != slot.shape:
            init = self.init if slot.source_name.endswith("/ExponentialMovingAverage") else "zeros"
            slot.steps.append(Step("resize", {"shape": variable.shape, "init": init, "seed": self.seed}))
            slot.shape = variable.shape


def merge_adjacent_keeps(rules: list[Rule]) -> list[Rule]:
    """``--keep a --keep b`` means a OR b, not a AND b: fold neighbours into one rule."""
    folded: list[Rule] = []
    for rule in rules:
        if isinstance(rule, Keep) and folded and isinstance(folded[-1], Keep):
            folded[-1] = Keep(folded[-1].patterns + rule.patterns)
        else:
            folded.append(rule)
    return folded
