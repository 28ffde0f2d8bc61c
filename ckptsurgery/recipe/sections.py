"""The ``average`` and ``merge`` sections of a recipe: plain dicts checked key by key, then run through the API.

One typed table per section (see :mod:`ckptsurgery.recipe.schema`); a wrong
type or an unknown key is a :class:`UsageError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import CkptSurgeryError, UsageError
from ..io.resolve import last_checkpoints
from ..merge_methods import get_method
from ..options import check_write_options
from ..plan.average import plan_average
from ..plan.entries import Plan
from ..plan.merge import MethodRule, Take, plan_merge
from .call import RecipeCall
from .schema import (BOOL, LIST, MAPPING, NON_NEGATIVE_INT, NUMBER, NUMBERS, PATH, PATTERN, POSITIVE, RENAMES, STRING,
                     Kind, check_fields, check_value)

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


def _check_output(parsed: AverageSpec | MergeSpec, where: str, dry_run: bool, options: dict) -> dict:
    """The write options, checked and named by ``where``; a missing output is an error after the plan's own."""
    options = check_write_options(options, where)
    if parsed.output is None and not dry_run:
        parsed.plan()  # a problem with the inputs is named first
        raise UsageError(f"{where}: no output given")
    return options


def merge_call(spec: Mapping, output: Any = None, *, resolve: Callable[[Any], str] = str, dry_run: bool = False,
               where: str = "merge", **options) -> RecipeCall:
    """The :func:`ckptsurgery.api.merge` call a ``merge`` dict (see :func:`parse_merge_spec`) asks for,
    writing to ``output`` (or the spec's ``output``).  ``resolve`` turns the spec's paths into real
    ones (a recipe resolves them against its folder); ``options`` are write options."""
    parsed = parse_merge_spec(spec, resolve=resolve, where=where, output=output)
    options = _check_output(parsed, where, dry_run, options)
    return RecipeCall("merge", (parsed.sources, parsed.output or ""), dict(
        takes=parsed.takes, methods=parsed.methods, base=parsed.base, seed=parsed.seed,
        keep_optimizer=parsed.keep_optimizer, graph_from=parsed.graph_from, allow_nonfinite=parsed.allow_nonfinite,
        **options))


def average_call(spec: Mapping, output: Any = None, *, resolve: Callable[[Any], str] = str,
                 dry_run: bool = False, where: str = "average", **options) -> RecipeCall:
    """The :func:`ckptsurgery.api.average` call an ``average`` dict asks for, like :func:`merge_call`."""
    parsed = parse_average_spec(spec, resolve=resolve, where=where, output=output)
    options = _check_output(parsed, where, dry_run, options)
    return RecipeCall("average", (parsed.checkpoints, parsed.output or ""), {**parsed.options, **options})
