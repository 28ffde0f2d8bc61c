"""Capability: the terminal sees only what we mean it to see.

Tensor names are input, and TensorFlow stores any characters in a key: a
newline, a carriage return, an ANSI escape, a bidi override.  Every
human-facing line (inspect's table and tree, diff, messages, errors) shows
them escaped (``\\n``, ``\\x1b``, ``\\u202e``); ``--json`` keeps names exact.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.text.display import display_name

HOSTILE = ["enc\noder/kernel", "enc\x1b[31moder/bias", "head\r/kernel", "rev\u202eersed/w", "plain/w"]
# Raw control bytes (C0 except nothing, DEL, C1) and bidi/format characters: none may reach the terminal.
RAW = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def hostile_ckpt(tmp_path_factory) -> str:
    """A checkpoint whose tensor names hold control characters, written by TF's own SaveV2."""
    prefix = str(tmp_path_factory.mktemp("hostile") / "model.ckpt")
    values = [tf.constant(np.full((2, 3), i, np.float32)) for i in range(len(HOSTILE))]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=HOSTILE, shape_and_slices=[""] * len(HOSTILE), tensors=values)
    return prefix


def _assert_clean(text: str) -> None:
    stray = RAW.findall(text.replace("\n", ""))  # line breaks of our own are fine; nothing else
    assert not stray, f"raw control characters reached the terminal: {stray!r}"


def test_display_name_escapes_controls_and_keeps_printable_text():
    assert display_name("bert/encoder/layer_0/kernel") == "bert/encoder/layer_0/kernel"
    assert display_name("wörld/日本/ß") == "wörld/日本/ß"
    assert display_name("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert display_name("x\x1b[31my\x7f\x85") == "x\\x1b[31my\\x7f\\x85"
    assert display_name("a\u202eb\u200bc\U000e0001") == "a\\u202eb\\u200bc\\U000e0001"


def test_inspect_table_and_tree_escape_names_and_json_keeps_them(hostile_ckpt, cli):
    run = cli("inspect", hostile_ckpt)
    assert run.returncode == 0, run.stderr
    _assert_clean(run.stdout + run.stderr)
    assert len(run.stdout.splitlines()) == 1 + len(HOSTILE) + 1  # header, one row per tensor, totals
    assert "enc\\noder/kernel" in run.stdout and "enc\\x1b[31moder/bias" in run.stdout
    assert "rev\\u202eersed/w" in run.stdout

    run = cli("inspect", hostile_ckpt, "--tree")
    assert run.returncode == 0, run.stderr
    _assert_clean(run.stdout + run.stderr)
    assert "head\\r/" in run.stdout

    run = cli("inspect", hostile_ckpt, "--json")
    assert run.returncode == 0, run.stderr
    assert sorted(t["name"] for t in json.loads(run.stdout)["tensors"]) == sorted(HOSTILE)


def test_no_match_error_is_one_escaped_line(hostile_ckpt, tmp_path, cli):
    run = cli("edit", hostile_ckpt, tmp_path / "o" / "model.ckpt", "--keep", "encoder")
    assert run.returncode == 2
    _assert_clean(run.stdout + run.stderr)
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith("ckptsurgery: error: --keep 'encoder' matches no tensor; closest names:")
    assert "enc\\noder/" in run.stderr
    assert not (tmp_path / "o").exists()


def test_edit_diff_and_dry_run_escape_names(hostile_ckpt, tmp_path, cli):
    out = tmp_path / "o" / "model.ckpt"
    run = cli("edit", hostile_ckpt, out, "--drop", "^enc", "--drop", "^rev", "--verbose")
    assert run.returncode == 0, run.stderr
    _assert_clean(run.stdout + run.stderr)
    assert "enc\\x1b[31moder/bias  (matched --drop '^enc')" in run.stdout

    plan = cs.edit(hostile_ckpt, tmp_path / "p" / "model.ckpt", [cs.Drop("^head")], dry_run=True)
    _assert_clean(plan.render())
    assert "- head\\r/kernel  (dropped)" in plan.render()

    run = cli("diff", hostile_ckpt, out)
    assert run.returncode == 1, run.stderr
    _assert_clean(run.stdout + run.stderr)
    assert "- enc\\noder/kernel  (only in A)" in run.stdout

    run = cli("diff", hostile_ckpt, out, "--json")
    assert set(json.loads(run.stdout)["only_in_a"]) == {n for n in HOSTILE if n.startswith(("enc", "rev"))}
