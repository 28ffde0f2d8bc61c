"""Capability: inspect from the index alone, and a command line that behaves for people and scripts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import tensorflow as tf

import ckptsurgery as cs


def test_inspect_json_lists_every_tensor_like_tf_does(tf1_ckpt, cli):
    run = cli("inspect", tf1_ckpt, "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    reader = tf.train.load_checkpoint(tf1_ckpt)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    assert {t["name"] for t in data["tensors"]} == set(shapes)
    for t in data["tensors"]:
        assert t["shape"] == shapes[t["name"]] and t["dtype"] == dtypes[t["name"]].name
    kernel = next(t for t in data["tensors"] if t["name"] == "encoder/dense/kernel")
    assert kernel["nbytes"] == 4 * 8 * 4
    assert data["total_bytes"] == sum(t["nbytes"] for t in data["tensors"]) and data["kind"] == "tf1-name"


def test_inspect_table_and_tree(tf1_ckpt, cli):
    table = cli("inspect", tf1_ckpt)
    assert table.returncode == 0 and "encoder/dense/kernel" in table.stdout and "float32" in table.stdout
    assert "tensors" in table.stdout.splitlines()[-1]
    tree = cli("inspect", tf1_ckpt, "--tree")
    assert tree.returncode == 0
    assert any(line.strip().startswith("encoder/") for line in tree.stdout.splitlines())


def test_console_script_and_module_agree(tf1_ckpt):
    exe = shutil.which("ckptsurgery", path=os.path.dirname(os.sys.executable))
    if exe is None:
        pytest.skip("console script not installed (package not pip-installed)")
    run = subprocess.run([exe, "inspect", tf1_ckpt, "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and json.loads(run.stdout)["num_tensors"] == len(cs.open_checkpoint(tf1_ckpt))


def test_help_teaches_with_examples(cli):
    run = cli("--help")
    assert run.returncode == 0 and "examples:" in run.stdout and "exit codes" in run.stdout
    for command in ("inspect", "copy", "edit", "transfer", "diff", "run"):
        sub = cli(command, "--help")
        assert sub.returncode == 0 and "example" in sub.stdout, command


def test_existing_destination_needs_force_and_input_is_never_a_destination(tf1_ckpt, tmp_path, cli):
    out = tmp_path / "o" / "m"
    assert cli("copy", tf1_ckpt, out).returncode == 0
    again = cli("copy", tf1_ckpt, out)
    assert again.returncode == 4 and "pass --force" in again.stderr
    assert cli("copy", tf1_ckpt, out, "--force").returncode == 0
    self_copy = cli("copy", tf1_ckpt, tf1_ckpt, "--force")
    assert self_copy.returncode == 4 and "destination is one of the inputs" in self_copy.stderr
    assert cs.diff(tf1_ckpt, out).identical


def test_missing_input_is_one_line_exit_3(tmp_path, cli):
    run = cli("inspect", tmp_path / "nothing" / "model.ckpt")
    assert run.returncode == 3
    assert run.stderr.strip().startswith("ckptsurgery: error:") and "\n" not in run.stderr.strip()
    assert "nothing/model.ckpt" in run.stderr


def test_copy_json_result_for_scripts(tf1_ckpt, tmp_path, cli):
    run = cli("copy", tf1_ckpt, tmp_path / "j" / "m", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["output"] == str(tmp_path / "j" / "m") and result["tensors"] == len(cs.open_checkpoint(tf1_ckpt))
    assert tf.train.latest_checkpoint(str(tmp_path / "j")) == result["output"]


def test_copy_into_a_folder_keeps_the_source_base_name(tf1_ckpt, tmp_path):
    (tmp_path / "dir").mkdir()
    result = cs.copy(tf1_ckpt, tmp_path / "dir", progress=False)
    assert result.prefix == str(tmp_path / "dir" / os.path.basename(tf1_ckpt))


def test_state_file_keeps_other_checkpoints_of_the_folder(tf1_ckpt, tmp_path):
    cs.copy(tf1_ckpt, tmp_path / "run" / "a", progress=False)
    cs.copy(tf1_ckpt, tmp_path / "run" / "b", progress=False)
    state = tf.train.get_checkpoint_state(str(tmp_path / "run"))
    assert state.model_checkpoint_path.endswith("b")
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["a", "b"]
