"""Capability: what a surgery dropped is one short line, counted by kind; names with --verbose or --json."""

from __future__ import annotations

import json

import ckptsurgery as cs


def test_edit_prints_one_line_count_by_kind(tf1_ckpt, tmp_path, cli):
    run = cli("edit", tf1_ckpt, tmp_path / "o" / "model.ckpt", "--drop-optimizer", "--drop", "^head/")
    assert run.returncode == 0, run.stderr
    names = set(cs.open_checkpoint(tf1_ckpt).names)
    optimizer = {n for n in names if n.endswith(("/Adam", "/Adam_1")) or "_power" in n}
    head = {n for n in names - optimizer if n.startswith("head/")}
    lines = run.stdout.splitlines()
    assert lines[0] == (f"dropped {len(optimizer) + len(head)} tensors: {len(optimizer)} optimizer state, "
                        f"{len(head)} matched --drop '^head/' (names: --verbose or --json)")
    assert lines[1].startswith("wrote ") and len(lines) == 2
    assert "..." not in run.stdout


def test_edit_counts_step_counters_apart_and_verbose_lists_names(keras_ckpt, tmp_path, cli):
    prefix, _, _ = keras_ckpt
    optimizer_names = [n for n in cs.open_checkpoint(prefix).names if "optimizer/_variables/" in n
                       or n.startswith("optimizer/_learning_rate")]
    run = cli("edit", prefix, tmp_path / "o" / "ckpt", "--drop-optimizer", "--verbose")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"dropped {len(optimizer_names) + 1} tensors: {len(optimizer_names)} optimizer state, 1 step counter"
    listed = dict(line.strip().rsplit("  ", 1) for line in lines[1:-1])
    assert listed.pop("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == "(step counter)"
    assert set(listed) == set(optimizer_names) and set(listed.values()) == {"(optimizer state)"}


def test_edit_json_carries_every_dropped_name(tf1_ckpt, tmp_path, cli):
    run = cli("edit", tf1_ckpt, tmp_path / "o" / "model.ckpt", "--keep", "^encoder/", "--json")
    assert run.returncode == 0, run.stderr
    payload = json.loads(run.stdout)
    expected = {n for n in cs.open_checkpoint(tf1_ckpt).names if not n.startswith("encoder/")}
    assert set(payload["dropped"]) == expected


def test_summary_line_words():
    from ckptsurgery.report.dropped import summary_line

    why = {f"v{i}/Adam": "optimizer state" for i in range(1200)}
    why.update({"Adam/iterations": "step counters", "x": "matched --drop 'x'"})
    assert summary_line(why) == "dropped 1,202 tensors: 1,200 optimizer state, 1 step counter, 1 matched --drop 'x'"


def test_left_out_line_for_average_and_merge_guesses_kind_from_names():
    from ckptsurgery.report.dropped import dropped_by_name, render_dropped

    names = ["dense/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE",
             "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE", "extra/w/.ATTRIBUTES/VARIABLE_VALUE", "bad\nname"]
    text = render_dropped(dropped_by_name(names, other="not in every input"), verbose=False, verb="left out")
    assert text == ("left out 4 tensors: 2 not in every input, 1 optimizer state, 1 step counter "
                    "(names: --verbose or --json)")
    listed = render_dropped(dropped_by_name(names), verbose=True, verb="left out").splitlines()
    assert listed[1:] == [f"  {names[0]}  (optimizer state)", f"  {names[1]}  (step counter)",
                          f"  {names[2]}  (other)", "  bad\\nname  (other)"]
