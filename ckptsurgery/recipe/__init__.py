"""Recipes: a surgery written down in YAML, so it can be reviewed, versioned and repeated.

A recipe uses the same vocabulary as the command-line flags.  It has one
action section (``edit``, ``transfer``, ``average`` or ``merge``), an
``output`` and optional write ``options``.  Paths are relative to the
recipe file.  Unknown keys are errors that name the key, so a typo never
silently changes what a surgery does::

    edit:
      source: runs/old/
      rules:
        - drop_optimizer: true
        - rename: {pattern: '^bert/', replacement: 'encoder/'}
        - keep: ['^encoder/', '^cls/']
        - cast: {from: float32, to: bfloat16, pattern: 'encoder/'}
        - resize: {pattern: 'word_embeddings$', shape: '30600,*', init: mean}
    output: runs/slim/model.ckpt
    options: {memory_budget: 512MB}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..io.fs import normalize
from ..options import WRITE_OPTIONS, check_write_options
from ..plan.rules import Cast, Drop, DropOptimizer, Keep, Rename, Resize, Rule
from .call import RecipeCall
from .schema import (BOOL, MAPPING, NAME_MAP, NON_NEGATIVE_INT, PATH, PATTERN, PATTERNS, SHAPE, STRING, Kind,
                     check_fields, check_mapping, check_value)

ACTIONS = ("edit", "transfer", "average", "merge")
TOP_KEYS = set(ACTIONS) | {"output", "options", "description"}
OPTION_KEYS = set(WRITE_OPTIONS)

#: Bounds checked before YAML builds anything: a recipe is a page of text, not a data set.
MAX_RECIPE_BYTES = 1 << 20
MAX_DEPTH = 32

#: The top level of a recipe; each action's section is checked by its own table.
TOP_FIELDS: dict[str, Kind] = {
    "edit": MAPPING, "transfer": MAPPING, "average": MAPPING, "merge": MAPPING,
    "output": PATH, "options": MAPPING.or_null(), "description": STRING.or_null(),
}
EDIT_FIELDS: dict[str, Kind] = {"source": PATH, "rules": Kind("a non-empty list of rules",
                                                                 lambda v: isinstance(v, list) and bool(v))}
TRANSFER_FIELDS: dict[str, Kind] = {
    "from": PATH, "into": PATH, "rename": Kind("a list of renames", lambda v: isinstance(v, list)).or_null(),
    "map": NAME_MAP.or_null(), "strict": BOOL, "skip_optimizer": BOOL, "report": PATH.or_null(),
    "old_step_counters": BOOL,
}
PAIR_FIELDS: dict[str, Kind] = {"pattern": PATTERN, "replacement": STRING}
CAST_FIELDS: dict[str, Kind] = {"from": STRING, "to": STRING, "pattern": PATTERN.or_null()}
RESIZE_FIELDS: dict[str, Kind] = {"pattern": PATTERN, "shape": SHAPE, "init": STRING, "seed": NON_NEGATIVE_INT}


def _check_keys(where: str, data: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:
    """Key names only (values are checked by :func:`ckptsurgery.schema.check_fields`)."""
    check_mapping(where, data)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(data))
    if missing:
        raise UsageError(f"{where}: missing key {missing[0]!r}")
    return data


def _pair(where: str, value: Any, keys: tuple[str, str] = ("pattern", "replacement")) -> tuple[str, str]:
    """``[pattern, replacement]`` or ``{pattern: ..., replacement: ...}``, both strings."""
    if isinstance(value, list):
        if len(value) != 2:
            raise UsageError(f"{where}: expected [pattern, replacement], got a list of {len(value)}")
        return check_value(f"{where}[0]", value[0], PATTERN), check_value(f"{where}[1]", value[1], STRING)
    data = check_fields(where, value, PAIR_FIELDS, keys)
    return data[keys[0]], data[keys[1]]


def parse_rule(where: str, item: Any) -> Rule:
    """One list item of ``rules:`` -> a :class:`Rule`; the item has exactly one key."""
    if not isinstance(item, dict) or len(item) != 1:
        raise UsageError(f"{where}: each rule is a mapping with one key: rename, keep, drop, drop_optimizer, cast, resize")
    (kind, value), = item.items()
    at = f"{where}.{kind}"
    if kind == "rename":
        return Rename(*_pair(at, value))
    if kind == "keep":
        check_value(at, value, PATTERNS)
        return Keep(value if isinstance(value, list) else [value])
    if kind == "drop":
        if isinstance(value, list):
            raise UsageError(f"{at}: give one pattern per drop rule (or use a regex alternation a|b)")
        return Drop(check_value(at, value, PATTERN))
    if kind == "drop_optimizer":
        if value is not True:
            raise UsageError(f"{at}: write 'drop_optimizer: true' (or leave the rule out)")
        return DropOptimizer()
    if kind == "cast":
        data = check_fields(at, value, CAST_FIELDS, ("from", "to"))
        return Cast(data["from"], data["to"], data.get("pattern"))
    if kind == "resize":
        data = check_fields(at, value, RESIZE_FIELDS, ("pattern", "shape"))
        shape = data["shape"]
        if isinstance(shape, list):
            shape = ",".join(str(d) for d in shape)
        return Resize(data["pattern"], shape, data.get("init", "zeros"), data.get("seed", 0))
    raise UsageError(f"{where}: unknown rule {kind!r}; use rename, keep, drop, drop_optimizer, cast or resize")


class _RecipeError(Exception):
    """Raised inside the YAML loader; :func:`load_recipe` adds the file name."""


def _recipe_loader():
    """A SafeLoader that refuses aliases and deep nesting while it composes, before anything is expanded.

    An alias (``*a``) is where a few hundred bytes of YAML become gigabytes
    (``[*a, *a, ...]`` ten levels deep); a recipe never needs one.  Nesting is
    bounded so a ``[[[[...`` file is an error, not a recursion crash.
    """
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise _RecipeError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                                   "allowed in recipes; write the value out")
            self.depth += 1
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _RecipeError(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return RecipeLoader


def read_recipe_text(path: str | os.PathLike) -> str:
    """The recipe's text: at most :data:`MAX_RECIPE_BYTES`, UTF-8, else :class:`UsageError`."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read recipe: {exc.strerror}") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise UsageError(f"{path}: recipe larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a page of YAML")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: recipe is not UTF-8 text (invalid byte at offset {exc.start})") from None


def load_recipe(path: str | os.PathLike) -> dict:
    """Read a recipe and check its top level: keys, their types, one action, the options.

    Sections and rules are checked against their own tables when they are
    parsed, all before any checkpoint is opened.
    """
    import yaml

    text = read_recipe_text(path)
    try:
        data = yaml.load(text, Loader=_recipe_loader())  # noqa: S506 - a SafeLoader subclass
    except _RecipeError as exc:
        raise UsageError(f"{path}: {exc}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise UsageError(f"{path}: invalid YAML: {' '.join(str(exc).split())[:200]}") from None
    if data is None:
        raise UsageError(f"{path}: empty recipe; it needs one of {', '.join(ACTIONS)} and an output")
    data = check_fields(str(path), data, TOP_FIELDS)
    actions = [a for a in ACTIONS if a in data]
    if len(actions) != 1:
        raise UsageError(f"{path}: a recipe has exactly one of {', '.join(ACTIONS)} (found {len(actions)})")
    if "output" not in data:
        raise UsageError(f"{path}: missing key 'output'")
    options = data.get("options") or {}
    _check_keys(f"{path}: options", options, OPTION_KEYS)
    check_write_options(options, f"{path}: options")
    return data


def parse_recipe(path: str | os.PathLike, *, dry_run: bool = False, overrides: dict | None = None) -> RecipeCall:
    """Read and check the recipe at ``path``; returns the API call it asks for (nothing is run).

    ``overrides`` are write options given on the command line; they win over
    the recipe's ``options``.  ``dry_run`` matters only for what must be
    there: a dry run needs no output.
    """
    data = load_recipe(path)
    base = Path(path).resolve().parent

    def resolve(p: Any) -> str:
        text = normalize(str(p))  # refuses file://host/x, file:x, gs:/x before they become base/gs:/x
        return text if os.path.isabs(text) or "://" in text else str(base / text)  # a URL stays one

    options = dict(data.get("options") or {})
    options.update(check_write_options(overrides or {}, "command line"))
    output = resolve(data["output"])
    action = next(a for a in ACTIONS if a in data)
    section = data[action]
    where = f"{path}: {action}"

    if action == "edit":
        section = check_fields(where, section, EDIT_FIELDS, ("source", "rules"))
        rules = [parse_rule(f"{where}.rules[{i}]", item) for i, item in enumerate(section["rules"])]
        return RecipeCall("edit", (resolve(section["source"]), output, rules), options)

    if action == "transfer":
        section = check_fields(where, section, TRANSFER_FIELDS, ("from", "into"))
        renames = [Rename(*_pair(f"{where}.rename[{i}]", r)) for i, r in enumerate(section.get("rename", []))]
        name_map = section.get("map")
        if isinstance(name_map, str):
            from ..plan.transfer import load_name_map

            name_map = load_name_map(resolve(name_map))
        report = section.get("report")
        return RecipeCall("transfer", (resolve(section["from"]), resolve(section["into"]), output), dict(
            rules=renames, name_map=name_map, strict=section.get("strict", False),
            skip_optimizer=section.get("skip_optimizer", False),
            old_step_counters=section.get("old_step_counters", False), **options),
            report_path=resolve(report) if report else None)

    from .sections import average_call, merge_call

    make_call = {"average": average_call, "merge": merge_call}[action]
    return make_call(section, output, resolve=resolve, dry_run=dry_run, where=where, **options)
