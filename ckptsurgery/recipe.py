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

from .errors import UsageError
from .rules import Cast, Drop, DropOptimizer, Keep, Rename, Resize, Rule

ACTIONS = ("edit", "transfer", "average", "merge")
TOP_KEYS = set(ACTIONS) | {"output", "options", "description"}
OPTION_KEYS = {"memory_budget", "workers", "force", "verify", "fsync", "progress"}


def _check_keys(where: str, data: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(data))
    if missing:
        raise UsageError(f"{where}: missing key {missing[0]!r}")
    return data


def _pair(where: str, value: Any, keys: tuple[str, str]) -> tuple[str, str]:
    if isinstance(value, list) and len(value) == 2:
        return str(value[0]), str(value[1])
    data = _check_keys(where, value, set(keys), set(keys))
    return str(data[keys[0]]), str(data[keys[1]])


def parse_rule(where: str, item: Any) -> Rule:
    """One list item of ``rules:`` -> a :class:`Rule`; the item has exactly one key."""
    if not isinstance(item, dict) or len(item) != 1:
        raise UsageError(f"{where}: each rule is a mapping with one key: rename, keep, drop, drop_optimizer, cast, resize")
    (kind, value), = item.items()
    at = f"{where}.{kind}"
    if kind == "rename":
        return Rename(*_pair(at, value, ("pattern", "replacement")))
    if kind == "keep":
        return Keep([str(p) for p in (value if isinstance(value, list) else [value])])
    if kind == "drop":
        if isinstance(value, list):
            raise UsageError(f"{at}: give one pattern per drop rule (or use a regex alternation a|b)")
        return Drop(str(value))
    if kind == "drop_optimizer":
        if value is not True:
            raise UsageError(f"{at}: write 'drop_optimizer: true' (or leave the rule out)")
        return DropOptimizer()
    if kind == "cast":
        data = _check_keys(at, value, {"from", "to", "pattern"}, {"from", "to"})
        return Cast(str(data["from"]), str(data["to"]), data.get("pattern"))
    if kind == "resize":
        data = _check_keys(at, value, {"pattern", "shape", "init", "seed"}, {"pattern", "shape"})
        shape = data["shape"]
        if isinstance(shape, list):
            shape = ",".join(str(d) for d in shape)
        return Resize(str(data["pattern"]), str(shape), str(data.get("init", "zeros")), int(data.get("seed", 0)))
    raise UsageError(f"{where}: unknown rule {kind!r}; use rename, keep, drop, drop_optimizer, cast or resize")


def load_recipe(path: str | os.PathLike) -> dict:
    """Read and structurally check a recipe (key names only; rules are checked when parsed)."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read recipe: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: invalid YAML: {' '.join(str(exc).split())[:200]}") from None
    data = _check_keys(str(path), data, TOP_KEYS, {"output"})
    actions = [a for a in ACTIONS if a in data]
    if len(actions) != 1:
        raise UsageError(f"{path}: a recipe has exactly one of {', '.join(ACTIONS)} (found {len(actions)})")
    _check_keys(f"{path}: options", data.get("options") or {}, OPTION_KEYS)
    return data


def run_recipe(path: str | os.PathLike, *, dry_run: bool = False, overrides: dict | None = None):
    """Run the recipe at ``path``; returns ``(WriteResult or Plan, report or None)``.

    ``overrides`` are write options given on the command line; they win over
    the recipe's ``options``.
    """
    from . import api

    data = load_recipe(path)
    base = Path(path).resolve().parent

    def resolve(p: Any) -> str:
        return str(p) if os.path.isabs(str(p)) else str(base / str(p))

    options = dict(data.get("options") or {})
    if "fsync" in options:
        options["durable"] = bool(options.pop("fsync"))
    options.update(overrides or {})
    output = resolve(data["output"])
    action = next(a for a in ACTIONS if a in data)
    section = data[action]
    where = f"{path}: {action}"

    if action == "edit":
        section = _check_keys(where, section, {"source", "rules"}, {"source", "rules"})
        if not isinstance(section["rules"], list) or not section["rules"]:
            raise UsageError(f"{where}.rules: a non-empty list of rules")
        rules = [parse_rule(f"{where}.rules[{i}]", item) for i, item in enumerate(section["rules"])]
        return api.edit(resolve(section["source"]), output, rules, dry_run=dry_run, **options), None

    if action == "transfer":
        section = _check_keys(where, section, {"from", "into", "rename", "map", "strict", "skip_optimizer", "report",
                                               "old_step_counters"}, {"from", "into"})
        renames = [Rename(*_pair(f"{where}.rename[{i}]", r, ("pattern", "replacement")))
                   for i, r in enumerate(section.get("rename") or [])]
        name_map = section.get("map")
        if isinstance(name_map, str):
            from .warmstart import load_name_map

            name_map = load_name_map(resolve(name_map))
        elif name_map is not None and not isinstance(name_map, dict):
            raise UsageError(f"{where}.map: a mapping of old name -> new name, or a file path")
        result, report = api.transfer(resolve(section["from"]), resolve(section["into"]), output, rules=renames,
                                      name_map=name_map, strict=bool(section.get("strict", False)),
                                      skip_optimizer=bool(section.get("skip_optimizer", False)),
                                      old_step_counters=bool(section.get("old_step_counters", False)),
                                      dry_run=dry_run, **options)
        if section.get("report") and not dry_run:
            report.write(resolve(section["report"]))
        return result, report

    from . import batch  # average and merge live with the batch planner

    builder = getattr(batch, f"{action}_from_spec", None)
    if builder is None:
        raise UsageError(f"{where}: this version cannot run {action} recipes")
    return builder(section, output, resolve=resolve, dry_run=dry_run, where=where, **options), None
