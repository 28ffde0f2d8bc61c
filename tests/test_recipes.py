"""Capability: surgeries written as YAML recipes, reviewed and repeated."""

from __future__ import annotations

import pytest
import tensorflow as tf

import ckptsurgery as cs
from models import TinyModel


def test_edit_recipe_matches_the_same_flags(tf1_ckpt, tmp_path, cli):
    recipe = tmp_path / "slim.yaml"
    recipe.write_text(f"""
description: drop Adam state, move the encoder, halve its precision
edit:
  source: {tf1_ckpt}
  rules:
    - drop_optimizer: true
    - rename: {{pattern: '^encoder/', replacement: 'enc/'}}
    - cast: {{from: float32, to: float16, pattern: '^enc/'}}
output: out/model.ckpt
options: {{memory_budget: 1KB}}
""")
    run = cli("run", recipe, "--dry-run")
    assert run.returncode == 0, run.stderr
    assert "plan:" in run.stdout and not (tmp_path / "out").exists()
    run = cli("run", recipe)
    assert run.returncode == 0, run.stderr
    flags = tmp_path / "flags" / "model.ckpt"
    cs.edit(tf1_ckpt, flags, [cs.DropOptimizer(), cs.Rename("^encoder/", "enc/"), cs.Cast("float32", "float16", "^enc/")],
            progress=False)
    assert cs.diff(tmp_path / "out" / "model.ckpt", flags).identical


def test_transfer_recipe_writes_report(tmp_path):
    tf.train.Checkpoint(model=TinyModel(1, 3)).save(str(tmp_path / "old" / "ckpt"))
    tf.train.Checkpoint(model=TinyModel(2, 4)).save(str(tmp_path / "new" / "ckpt"))
    recipe = tmp_path / "warm.yaml"
    recipe.write_text("transfer:\n  from: old/ckpt-1\n  into: new/ckpt-1\n  report: report.json\noutput: warm/ckpt\n")
    result, report = cs.run_recipe(recipe, progress=False)
    assert (tmp_path / "report.json").is_file() and len(report.mismatched) == 1
    restored = TinyModel(9, 4)
    tf.train.Checkpoint(model=restored).restore(result.prefix).assert_consumed()


@pytest.mark.parametrize("text, message", [
    ("edit: {source: x, rules: [drop_optimizer: true]}\noutput: o\nbogus: 1\n", "unknown key 'bogus'"),
    ("edit: {source: x, rules: [{renam: [a, b]}]}\noutput: o\n", "unknown rule 'renam'"),
    ("edit: {source: x, rules: [{cast: {from: float32, too: int8}}]}\noutput: o\n", "unknown key 'too'"),
    ("output: o\n", "exactly one of edit, transfer, average, merge"),
    ("edit: {source: x, rules: []}\n", "missing key 'output'"),
    ("edit: [unclosed\n", "invalid YAML"),
    ("edit: {source: x, rules: [drop_optimizer: true]}\noutput: o\noptions: {budget: 1}\n", "unknown key 'budget'"),
])
def test_recipe_mistakes_are_named(tmp_path, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(cs.UsageError, match=message):
        cs.run_recipe(recipe)


def test_recipe_rule_that_matches_nothing_fails(tf1_ckpt, tmp_path, cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"edit:\n  source: {tf1_ckpt}\n  rules:\n    - drop: '^nothing_here/'\noutput: o/m\n")
    run = cli("run", recipe)
    assert run.returncode == 2 and "--drop '^nothing_here/' matches no tensor" in run.stderr
    assert not (tmp_path / "o").exists()
