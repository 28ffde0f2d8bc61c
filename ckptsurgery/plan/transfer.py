"""Transfer: move what an old and a new model share into the new model's variable set.

The seed workflow.  A user changed one module of a big model and wants to
retrain only that module on the frozen, pretrained rest.  ``NEW`` is a
checkpoint of the new model as initialized; the output has exactly NEW's
variable set (names, shapes, dtypes and, for TF2, object graph), and each
variable takes OLD's value where a name matches (after optional renames of
OLD's names, or an explicit map) and shape and dtype agree.  Everything
else keeps NEW's initial value.  The report says which is which, so the
training script can freeze exactly the transferred variables.

A warm start is a new training run, so step counters (``global_step``,
``save_counter``, optimizer iterations; see :mod:`step_counters`) keep NEW's
value unless ``old_step_counters`` asks for OLD's: an old step of 1,000,000
would put the new run's learning-rate schedule at its end.  Model state
that is not trained but belongs to the model (batch-norm moving statistics,
embedding tables) transfers like any weight.

No graph is imported and no session runs: this replaces the usual
``import_meta_graph`` + ``Session.restore`` + ``tf.assign`` + ``Saver.save``
recipe, which needs the old graph and holds the model in memory many times.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..text.display import display_name
from ..errors import PlanError, RuleError, UsageError
from .optimizer_state import is_optimizer_state
from .entries import ObjectGraphRewrite, OutputEntry, Plan, TensorRef, drafts_of, out_nbytes
from .rules import Draft, Rule, merge_adjacent_keeps
from ..io.reader import OBJECT_GRAPH_KEY, Checkpoint
from .step_counters import is_step_counter


@dataclass
class Mismatch:
    name: str
    old_name: str
    old_shape: list[int]
    new_shape: list[int]
    old_dtype: str
    new_dtype: str


@dataclass
class TransferReport:
    """What the transfer did, variable by variable.

    ``transferred`` maps each output (NEW) name to the OLD name its value came
    from; a training script freezes exactly these (see README).
    ``step_counters`` maps each NEW step counter to where its value came
    from, ``"new"`` (the default: a warm start is a new run) or ``"old"``;
    those from new are also in ``kept_from_new``.
    """

    transferred: dict[str, str] = field(default_factory=dict)
    kept_from_new: list[str] = field(default_factory=list)
    unused_from_old: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    step_counters: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "transferred": [{"name": k, "from": v} for k, v in self.transferred.items()],
            "kept_from_new": self.kept_from_new,
            "unused_from_old": self.unused_from_old,
            "mismatched": [asdict(m) for m in self.mismatched],
            "step_counters": [{"name": k, "from": v} for k, v in self.step_counters.items()],
            "counts": {
                "transferred": len(self.transferred), "kept_from_new": len(self.kept_from_new),
                "unused_from_old": len(self.unused_from_old), "mismatched": len(self.mismatched),
            },
        }

    def write(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=2)
            f.write("\n")

    def render(self) -> str:
        lines = [f"transferred {len(self.transferred)}, kept from new {len(self.kept_from_new)}, "
                 f"unused from old {len(self.unused_from_old)}, shape/dtype mismatches {len(self.mismatched)}"]
        for m in self.mismatched:
            lines.append(f"  mismatch {display_name(m.name)}: old {display_name(m.old_name)} {m.old_dtype}{m.old_shape} "
                         f"vs new {m.new_dtype}{m.new_shape} (kept new)")
        for name in self.kept_from_new:
            note = " (step counter: a warm start is a new run; --old-step-counters takes OLD's)" \
                if self.step_counters.get(name) == "new" else ""
            lines.append(f"  kept from new: {display_name(name)}{note}")
        for name, origin in self.step_counters.items():
            if origin == "old":
                lines.append(f"  step counter from old: {display_name(name)} (--old-step-counters)")
        for name in self.unused_from_old:
            lines.append(f"  unused from old: {display_name(name)}")
        return "\n".join(lines)


def load_name_map(path: str | os.PathLike) -> dict[str, str]:
    """Read ``--map FILE``: a YAML or JSON mapping ``old name: new name``."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read name map: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise UsageError(f"{path}: a name map must be a mapping of old name -> new name (strings)")
    return data


def old_names_as_new(
    old: Checkpoint, rules: Sequence[Rule] = (), name_map: Mapping[str, str] | None = None,
    skip_optimizer: bool = False,
) -> dict[str, str]:
    """OLD's tensors under the names they would have in NEW: ``{new-style name: old name}``."""
    drafts = [d for d in drafts_of(old, "old") if not (skip_optimizer and is_optimizer_state(d.name))]
    if name_map:
        missing = [k for k in name_map if k not in old]
        if missing:
            raise RuleError(f"--map: {missing[0]!r} is not a tensor of the old checkpoint ({len(missing)} such names)")
        for draft in drafts:
            draft.name = name_map.get(draft.source_name, draft.name)
    for rule in merge_adjacent_keeps(list(rules)):
        drafts = rule.apply(drafts)
    by_new: dict[str, Draft] = {}
    for draft in drafts:
        if draft.name in by_new:
            raise PlanError(f"two old tensors map to {draft.name!r}: {by_new[draft.name].source_name!r} "
                            f"and {draft.source_name!r}")
        by_new[draft.name] = draft
    return {name: d.source_name for name, d in by_new.items()}


class _Matcher:
    """Decides, name by name, whether a new variable takes OLD's value; builds the report."""

    def __init__(self, old: Checkpoint, candidates: dict[str, str], strict: bool, old_step_counters: bool = False):
        self.old, self.candidates, self.strict = old, candidates, strict
        self.old_step_counters = old_step_counters
        self.report = TransferReport()
        self.used: set[str] = set()

    def match(self, name: str, shape: tuple[int, ...], dtype: str) -> str | None:
        """The OLD name to take ``name``'s value from, or None to keep NEW's value."""
        old_name = self.candidates.get(name)
        info = self.old.info(old_name) if old_name is not None else None
        counter = is_step_counter(name, dtype, shape) or (
            info is not None and is_step_counter(old_name, info.dtype, info.shape))
        if counter and not (self.old_step_counters and old_name is not None):
            self.report.step_counters[name] = "new"  # a warm start is a new run: OLD's count stays unused
            self.report.kept_from_new.append(name)
            return None
        if old_name is None:
            self.report.kept_from_new.append(name)
            return None
        self.used.add(old_name)
        if info.shape == shape and info.dtype == dtype:
            self.report.transferred[name] = old_name
            if counter:
                self.report.step_counters[name] = "old"
            return old_name
        if self.strict:
            raise PlanError(f"--strict: {name!r} is {dtype}{list(shape)} in the new model but "
                            f"{old_name!r} is {info.dtype}{list(info.shape)} in the old one")
        self.report.mismatched.append(Mismatch(name, old_name, list(info.shape), list(shape), info.dtype, dtype))
        self.report.kept_from_new.append(name)
        return None

    def finish(self) -> TransferReport:
        self.report.unused_from_old = sorted(set(self.candidates.values()) - self.used)
        return self.report


def plan_transfer(
    old: Checkpoint,
    new: Checkpoint,
    *,
    rules: Sequence[Rule] = (),
    name_map: Mapping[str, str] | None = None,
    strict: bool = False,
    skip_optimizer: bool = False,
    old_step_counters: bool = False,
) -> tuple[Plan, TransferReport]:
    """Plan the output (NEW's variable set, OLD's values where they fit) and its report.

    ``rules`` (usually :class:`Rename`) act on OLD's names; ``name_map`` maps
    old names to new names first.  A shape or dtype mismatch keeps NEW's
    value and is reported, or raises :class:`PlanError` when ``strict``.
    Step counters keep NEW's value unless ``old_step_counters``.
    No tensor data is read.
    """
    matcher = _Matcher(old, old_names_as_new(old, rules, name_map, skip_optimizer), strict, old_step_counters)
    entries: list[OutputEntry] = []
    for info in new:
        if info.name == OBJECT_GRAPH_KEY:
            continue
        old_name = matcher.match(info.name, info.shape, info.dtype)
        ref = TensorRef("old", old_name) if old_name else TensorRef("new", info.name)
        src_info = (old if old_name else new).info(ref.name)
        entries.append(OutputEntry(
            name=info.name, inputs=(ref,), dtype=info.dtype, shape=info.shape,
            nbytes_in=src_info.nbytes, nbytes_out=out_nbytes(info.dtype, info.shape, src_info.nbytes),
        ))
    report = matcher.finish()
    if not report.transferred:
        raise PlanError("no variable of the old checkpoint matches the new one by name, shape and dtype; "
                        "add --rename rules or a --map file")
    graph = ObjectGraphRewrite("new", {}) if OBJECT_GRAPH_KEY in new else None
    return Plan({"old": old, "new": new}, entries, graph, []), report


def variable_key(variable: Any) -> str:
    """The checkpoint-style name of a live variable: ``encoder/dense/kernel``.

    Keras 3 variables have a ``path``; TF variables a ``name`` with ``:0``.
    """
    path = getattr(variable, "path", None)
    if isinstance(path, str) and path:
        return path
    return variable.name.split(":")[0]


def transfer_into_variables(
    old: Checkpoint,
    target: Any,
    *,
    rules: Sequence[Rule] = (),
    name_map: Mapping[str, str] | None = None,
    strict: bool = False,
    skip_optimizer: bool = False,
    old_step_counters: bool = False,
    key: Any = None,
) -> TransferReport:
    """Assign OLD's values into live ``tf.Variable``s, one variable at a time.

    ``target`` is a trackable (``tf.train.Checkpoint(model=m)``, a ``tf.Module``,
    a Keras model), whose variables are named by the keys TF2 would save them
    under (:func:`variables_by_key`), or a list of variables, named by
    :func:`variable_key` (``v.path`` or ``v.name``); ``key`` overrides either.
    Step counters (``global_step``, optimizer iterations) keep their value
    unless ``old_step_counters``.  Memory: one tensor at a time.
    """
    if key is None and not isinstance(target, (list, tuple)):
        named = list(variables_by_key(target).items())  # a trackable: name variables the way TF saves them
    else:
        variables: Iterable[Any] = target.variables if hasattr(target, "variables") else target
        named = [((key or variable_key)(v), v) for v in variables]
    matcher = _Matcher(old, old_names_as_new(old, rules, name_map, skip_optimizer), strict, old_step_counters)
    for name, variable in named:
        old_name = matcher.match(name, tuple(int(d) for d in variable.shape), _dtype_name(variable.dtype))
        if old_name is not None:
            variable.assign(old.read(old_name))
    report = matcher.finish()
    return report


def _dtype_name(dtype: Any) -> str:
    name = getattr(dtype, "name", str(dtype))
    return {"half": "float16", "float": "float32", "double": "float64"}.get(name, name)


def variables_by_key(root: Any) -> dict[str, Any]:
    """Live variables under ``root`` by the checkpoint key TF2 would save them as.

    ``root`` is what you pass to ``tf.train.Checkpoint`` (or the Checkpoint
    itself): ``variables_by_key(tf.train.Checkpoint(model=model))`` gives
    ``{"model/encoder/kernel/.ATTRIBUTES/VARIABLE_VALUE": <tf.Variable>, ...}``,
    the names a transfer report uses, so a training script can freeze exactly
    the transferred variables.  Like TF, it walks the object graph breadth
    first and names each object by the first path that reaches it.
    """
    from .._tf import tf

    tf_ = tf()
    view = tf_.train.TrackableView(root)
    seen: set[int] = {id(root)}
    queue: list[tuple[str, Any]] = [("", root)]
    found: dict[str, Any] = {}
    while queue:
        path, obj = queue.pop(0)
        for name, child in view.children(obj).items():
            if id(child) in seen:
                continue
            seen.add(id(child))
            child_path = f"{path}/{_escape(name)}" if path else _escape(name)
            if isinstance(child, tf_.Variable) or _looks_like_variable(child):
                found[f"{child_path}/.ATTRIBUTES/VARIABLE_VALUE"] = child
            queue.append((child_path, child))
    return found


def _escape(local_name: str) -> str:
    """TF's escaping of object names inside checkpoint keys ('.' -> '.S', '/' -> '..')."""
    return local_name.replace(".", ".S").replace("/", "..")


def _looks_like_variable(obj: Any) -> bool:
    """Keras 3 variables wrap a tf.Variable without subclassing it; they save like one."""
    return all(hasattr(obj, attr) for attr in ("assign", "shape", "dtype", "numpy"))
