"""Capability: a malformed recipe is one line and exit 2, at bounded cost; options have one name and one type.

Every recipe key has a type (``ckptsurgery.schema``, ``ckptsurgery.options``), so
``force: "false"`` or ``memory_budget: true`` is an error naming the key, not a
silent ``bool("false")``.  Aliases, deep nesting, huge or non-UTF-8 files are
refused before YAML expands anything.  The table-driven cases run in-process
through ``cli.main`` (one TensorFlow import), with and without ``--dry-run``;
a seeded fuzz mutates valid recipes; a few cases run as real processes.
"""

from __future__ import annotations

import hashlib
import random
import tracemalloc
from pathlib import Path

import pytest
import yaml

import ckptsurgery as cs
from ckptsurgery import cli
from ckptsurgery.errors import EXIT_INTERNAL

MEMORY_LIMIT = 300 * 10**6

ALIAS_BOMB = "edit:\n  source: SRC\n  rules:\n    - keep: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"    - keep: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 10)
) + "    - keep: *a9\noutput: out/ckpt\n"  # 10 levels of 10: ~10**10 strings once expanded


def _edit(**extra) -> str:
    """A valid edit recipe on SRC with one top-level key changed."""
    data = {"edit": {"source": "SRC", "rules": [{"drop_optimizer": True}]}, "output": "out/ckpt"}
    data.update(extra)
    return yaml.safe_dump(data)


def _rule(rule) -> str:
    return yaml.safe_dump({"edit": {"source": "SRC", "rules": [rule]}, "output": "out/ckpt"})


# (id, recipe text or bytes, a phrase the one-line error must contain)
CASES = [
    ("force-string", _edit(options={"force": "false"}), "option 'force': expected true or false, got 'false'"),
    ("budget-bool", _edit(options={"memory_budget": True}), "option 'memory_budget': expected a positive size"),
    ("budget-junk", _edit(options={"memory_budget": "lots"}), "option 'memory_budget'"),
    ("workers-string", _edit(options={"workers": "abc"}), "option 'workers': expected an integer"),
    ("workers-zero", _edit(options={"workers": 0}), "option 'workers'"),
    ("workers-huge", _edit(options={"workers": 10**12}), "option 'workers'"),
    ("fsync-string", _edit(options={"fsync": "no"}), "option 'fsync'"),
    ("verify-int", _edit(options={"verify": 1}), "option 'verify'"),
    ("progress-string", _edit(options={"progress": "yes"}), "option 'progress'"),
    ("durable-old-name", _edit(options={"durable": False}), "unknown key 'durable'"),
    ("options-list", _edit(options=[1, 2]), "options: expected a mapping"),
    ("output-null", "edit: {source: SRC, rules: [drop_optimizer: true]}\noutput: ~\n", "output: expected a path"),
    ("output-int", _edit(output=5), "output: expected a path"),
    ("output-list", _edit(output=["a"]), "output: expected a path"),
    ("output-nul", _edit(output="a\0b"), "output: expected a path"),
    ("description-int", _edit(description=3), "description: expected a string"),
    ("source-int", _edit(edit={"source": 3, "rules": [{"drop_optimizer": True}]}), "edit.source: expected a path"),
    ("rules-string", _edit(edit={"source": "SRC", "rules": "drop"}), "edit.rules: expected a non-empty list"),
    ("rules-empty", _edit(edit={"source": "SRC", "rules": []}), "edit.rules: expected a non-empty list"),
    ("edit-list", _edit(edit=["SRC"]), "edit: expected a mapping"),
    ("cast-pattern-int", _rule({"cast": {"from": "float32", "to": "float16", "pattern": 123}}),
     "cast.pattern: expected a regular expression"),
    ("cast-pattern-list", _rule({"cast": {"from": "float32", "to": "float16", "pattern": ["a"]}}),
     "cast.pattern: expected a regular expression"),
    ("cast-from-int", _rule({"cast": {"from": 32, "to": "float16"}}), "cast.from: expected a string"),
    ("cast-list", _rule({"cast": ["float32", "float16"]}), "cast: expected a mapping"),
    ("resize-seed-string", _rule({"resize": {"pattern": "w", "shape": "3,*", "seed": "abc"}}),
     "resize.seed: expected an integer"),
    ("resize-seed-bool", _rule({"resize": {"pattern": "w", "shape": "3,*", "seed": True}}), "resize.seed"),
    ("resize-shape-dict", _rule({"resize": {"pattern": "w", "shape": {"a": 1}}}), "resize.shape: expected a shape"),
    ("resize-init-int", _rule({"resize": {"pattern": "w", "shape": "3", "init": 0}}), "resize.init"),
    ("rename-int", _rule({"rename": {"pattern": 1, "replacement": "x"}}), "rename.pattern"),
    ("rename-three", _rule({"rename": ["a", "b", "c"]}), "expected [pattern, replacement]"),
    ("keep-int", _rule({"keep": 5}), "keep: expected a regular expression"),
    ("keep-mixed-list", _rule({"keep": ["a", 5]}), "keep: expected a regular expression"),
    ("drop-null", _rule({"drop": None}), "drop: expected a regular expression"),
    ("drop-optimizer-string", _rule({"drop_optimizer": "true"}), "drop_optimizer: true"),
    ("rule-two-keys", _rule({"drop": "a", "keep": "b"}), "each rule is a mapping with one key"),
    ("transfer-strict-string",
     yaml.safe_dump({"transfer": {"from": "SRC", "into": "SRC", "strict": "false"}, "output": "o/c"}),
     "transfer.strict: expected true or false"),
    ("transfer-map-int", yaml.safe_dump({"transfer": {"from": "SRC", "into": "SRC", "map": 3}, "output": "o/c"}),
     "transfer.map"),
    ("transfer-rename-dict",
     yaml.safe_dump({"transfer": {"from": "SRC", "into": "SRC", "rename": {"a": 1}}, "output": "o/c"}),
     "transfer.rename"),
    ("merge-seed-string",
     yaml.safe_dump({"merge": {"sources": {"a": "SRC"}, "take": [{"source": "a", "pattern": "."}], "seed": "abc"},
                     "output": "o/c"}), "merge.seed: expected an integer"),
    ("merge-take-pattern-int",
     yaml.safe_dump({"merge": {"sources": {"a": "SRC"}, "take": [{"source": "a", "pattern": 1}]}, "output": "o/c"}),
     "take[0].pattern"),
    ("merge-param-string",
     yaml.safe_dump({"merge": {"sources": {"a": "SRC", "b": "SRC"}, "take": [{"source": "a", "pattern": "."}],
                               "methods": [{"pattern": ".", "method": "slerp", "params": {"t": "half"}}]},
                     "output": "o/c"}), "params.t: expected a finite number"),
    ("merge-weights-string",
     yaml.safe_dump({"merge": {"sources": {"a": "SRC"}, "take": [{"source": "a", "pattern": "."}],
                               "methods": [{"pattern": ".", "method": "linear", "weights": ["x"]}]},
                     "output": "o/c"}), "weights"),
    ("average-ema-string", yaml.safe_dump({"average": {"checkpoints": ["SRC"], "ema": "abc"}, "output": "o/c"}),
     "average.ema: expected a finite number"),
    ("average-weights-bool", yaml.safe_dump({"average": {"checkpoints": ["SRC"], "weights": [True]}, "output": "o/c"}),
     "average.weights"),
    ("average-last-n-string",
     yaml.safe_dump({"average": {"last": {"n": "5", "dir": "."}}, "output": "o/c"}), "last.n: expected a positive"),
    ("alias-bomb", ALIAS_BOMB, "YAML aliases (*a0) are not allowed"),
    ("alias-merge-key", "base: &b {source: SRC}\nedit: {<<: *b, rules: [drop_optimizer: true]}\noutput: o\n",
     "aliases"),
    ("deep-flow", "edit: " + "[" * 5000 + "]" * 5000 + "\noutput: o\n", "nested more than"),
    ("deep-block", "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n", "nested more than"),
    ("not-utf8", b"edit: {source: SRC, rules: [drop: '\xff\xfe']}\noutput: o\n", "not UTF-8"),
    ("huge", "description: '" + "x" * (10 * 10**6) + "'\n", "larger than"),
    ("empty", "", "empty recipe"),
    ("only-comment", "# nothing\n", "empty recipe"),
    ("top-list", "- edit: {}\n", "expected a mapping, got list"),
    ("top-string", "hello\n", "expected a mapping, got str"),
    ("top-int-key", "1: a\nedit: {source: SRC, rules: [drop_optimizer: true]}\noutput: o\n", "key 1 is not a string"),
    ("python-tag", "output: !!python/object:os.system x\n", "invalid YAML"),
    ("binary-output", "edit: {source: SRC, rules: [drop_optimizer: true]}\noutput: !!binary aGVsbG8=\n",
     "output: expected a path"),
    ("date-output", "edit: {source: SRC, rules: [drop_optimizer: true]}\noutput: 2020-01-01\n", "output: expected a path"),
    ("two-documents", "output: a\n---\noutput: b\n", "invalid YAML"),
]


def _write(tmp_path: Path, name: str, text: str | bytes, src: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    data = text.replace("SRC", src) if isinstance(text, str) else text.replace(b"SRC", src.encode())
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _digest(prefix: str) -> dict[str, str]:
    folder = Path(prefix).parent
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _run_main(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "write"])
def test_every_malformed_recipe_is_one_line_and_exit_2(tf1_ckpt, tmp_path, capsys, dry_run):
    before = _digest(tf1_ckpt)
    failures = []
    for name, text, phrase in CASES:
        recipe = _write(tmp_path, name, text, tf1_ckpt)
        tracemalloc.start()
        try:
            code, err = _run_main(capsys, "run", str(recipe), *(["--dry-run"] if dry_run else []))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        lines = err.strip().splitlines()
        if (code != 2 or len(lines) != 1 or not lines[0].startswith("ckptsurgery: error: ")
                or phrase not in lines[0] or peak > MEMORY_LIMIT):
            failures.append(f"{name}: exit {code}, peak {peak / 1e6:.0f} MB, stderr {err.strip()[:300]!r}")
    assert not failures, "\n".join(failures)
    assert not any((tmp_path / d).exists() for d in ("out", "o"))
    assert _digest(tf1_ckpt) == before


def test_error_names_key_value_and_type(tf1_ckpt, tmp_path):
    recipe = _write(tmp_path, "r", _edit(options={"force": "false"}), tf1_ckpt)
    with pytest.raises(cs.UsageError) as info:
        cs.run_recipe(recipe, dry_run=True)
    assert str(info.value) == f"{recipe}: options: option 'force': expected true or false, got 'false'"


def test_force_string_does_not_replace_an_existing_checkpoint(tf1_ckpt, tmp_path, capsys):
    """The bug: ``force: "false"`` was ``bool("false") == True`` and replaced the checkpoint."""
    out = tmp_path / "out" / "ckpt"
    cs.copy(tf1_ckpt, out, progress=False)
    before = _digest(str(out))
    recipe = _write(tmp_path, "r", _edit(options={"force": "false"}), tf1_ckpt)
    code, err = _run_main(capsys, "run", str(recipe))
    assert code == 2 and "option 'force'" in err
    assert _digest(str(out)) == before


def test_seeded_mutations_of_valid_recipes(tf1_ckpt, tf2_ckpt, tmp_path, capsys):
    """Random wrong values, deleted and added keys in valid recipes: never a traceback or an internal error."""
    tf2_prefix = tf2_ckpt[0]
    valid = [
        {"edit": {"source": tf1_ckpt, "rules": [
            {"drop_optimizer": True}, {"rename": {"pattern": "^encoder/", "replacement": "enc/"}},
            {"cast": {"from": "float32", "to": "float16", "pattern": "^enc/"}},
            {"resize": {"pattern": "head/kernel$", "shape": [8, 3], "init": "normal:0.02", "seed": 1}},
            {"keep": ["^enc/", "^head/", "^embed/"]}]},
         "output": "out/a", "options": {"memory_budget": "1KB", "workers": 2, "fsync": False, "progress": False}},
        {"transfer": {"from": tf2_prefix, "into": tf2_prefix, "rename": [["^model/", "model/"]], "strict": False,
                      "skip_optimizer": True}, "output": "out/b", "options": {"progress": False}},
        {"average": {"checkpoints": [tf1_ckpt, tf1_ckpt], "weights": [1, 2], "int_policy": "last"},
         "output": "out/c", "options": {"progress": False}},
        {"merge": {"sources": {"a": tf1_ckpt, "b": tf1_ckpt}, "take": [{"source": "a", "pattern": "^encoder/"},
                   {"source": "b", "pattern": "^encoder/"}],
                   "methods": [{"pattern": ".", "method": "slerp", "params": {"t": 0.3}}], "seed": 3},
         "output": "out/d", "options": {"progress": False}},
    ]
    wrong = ["abc", "false", "", 123, -1, 2**70, 1.5, float("nan"), True, False, None, [], [1, "a"], {}, {"k": 1},
             "a\0b", "[", "*"]
    rng = random.Random(20261126)
    before = {p: _digest(p) for p in (tf1_ckpt, tf2_prefix)}

    def paths(node, at=()):
        yield at
        if isinstance(node, dict):
            for k, v in node.items():
                yield from paths(v, at + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from paths(v, at + (i,))

    failures = []
    for case in range(160):
        recipe = yaml.safe_load(yaml.safe_dump(rng.choice(valid)))
        for _ in range(rng.randint(1, 2)):
            at = rng.choice([p for p in paths(recipe) if p])
            parent = recipe
            for step in at[:-1]:
                parent = parent[step]
            action = rng.random()
            if action < 0.7:
                parent[at[-1]] = rng.choice(wrong)
            elif action < 0.85:
                del parent[at[-1]]
            elif isinstance(parent, dict):
                parent[rng.choice(["bogus", "fsync ", "Output"])] = 1
        path = tmp_path / f"m{case}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        dry = case % 4 != 0  # every fourth case really writes
        code, err = _run_main(capsys, "run", str(path), *(["--dry-run"] if dry else []))
        lines = err.strip().splitlines()
        if code not in (0, 2, 3, 4) or "Traceback" in err or (code and len(lines) != 1):
            failures.append(f"case {case}: exit {code}: {err.strip()[:300]!r}\n{yaml.safe_dump(recipe)}")
    assert not failures, "\n".join(failures[:5])
    assert {p: _digest(p) for p in (tf1_ckpt, tf2_prefix)} == before


@pytest.mark.parametrize("name", ["alias-bomb", "deep-flow", "not-utf8", "cast-pattern-int"])
def test_malformed_recipes_through_the_real_cli(tf1_ckpt, tmp_path, cli, name):
    text = next(t for n, t, _ in CASES if n == name)
    recipe = _write(tmp_path, name, text, tf1_ckpt)
    run = cli("run", recipe, "--dry-run", timeout=60)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("ckptsurgery: error: "), run.stderr


# -- the API: one name per option, checked before anything happens --------------------------
def test_api_rejects_a_misspelled_option_even_in_a_dry_run(tf1_ckpt, tmp_path):
    for dry_run in (True, False):
        with pytest.raises(TypeError, match="memory_budgett"):
            cs.copy(tf1_ckpt, tmp_path / "o", dry_run=dry_run, memory_budgett="1MB")
    with pytest.raises(TypeError, match="durable"):
        cs.edit(tf1_ckpt, tmp_path / "o", [cs.DropOptimizer()], durable=False)
    with pytest.raises(TypeError, match="budget"):
        cs.average([tf1_ckpt], tmp_path / "o", dry_run=True, budget="1MB")
    with pytest.raises(TypeError, match="forse"):
        cs.run_recipe(tmp_path / "none.yaml", forse=True)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option, value", [("force", "false"), ("memory_budget", True), ("workers", "2"),
                                           ("fsync", 0), ("verify", None), ("progress", "no")])
def test_api_rejects_a_mistyped_option_before_reading(tmp_path, option, value):
    with pytest.raises(cs.UsageError, match=f"option '{option}'"):
        cs.copy(tmp_path / "not-a-checkpoint", tmp_path / "o", dry_run=True, **{option: value})


def test_fsync_has_one_name_in_api_cli_and_recipe(tf1_ckpt, tmp_path, capsys):
    cs.copy(tf1_ckpt, tmp_path / "api" / "ckpt", fsync=False, progress=False)
    code, err = _run_main(capsys, "copy", tf1_ckpt, str(tmp_path / "cli" / "ckpt"), "--no-fsync", "--no-progress")
    assert code == 0, err
    recipe = _write(tmp_path, "r", _edit(options={"fsync": False, "progress": False}), tf1_ckpt)
    code, err = _run_main(capsys, "run", str(recipe), "--fsync")
    assert code == 0, err


def test_unexpected_exception_is_one_line_with_its_own_exit_code(tf1_ckpt, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise ZeroDivisionError("a bug of ours")

    # inspect's CLI takes summary_json from where api.inspect does (not loading the writing machinery)
    monkeypatch.setattr("ckptsurgery.report.inspect.summary_json", boom)
    code, err = _run_main(capsys, "inspect", tf1_ckpt, "--json")
    assert code == EXIT_INTERNAL == 5
    assert err.strip() == "ckptsurgery: internal error: ZeroDivisionError: a bug of ours; rerun with --debug"
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", "inspect", tf1_ckpt, "--json"])


def test_exit_codes_are_documented():
    from ckptsurgery import errors
    from ckptsurgery.cli.common import EPILOG_EXIT_CODES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for code in (errors.EXIT_INTERNAL, errors.EXIT_INTERRUPTED):
        assert f"{code} " in EPILOG_EXIT_CODES and f"| {code} |" in readme and f"\n{code} " in errors.__doc__
