"""Capability: edit a checkpoint in one pass with ordered rules, and refuse bad rules up front."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.errors import RuleError
from models import TinyModel, make_keras_model, restore_tf1
from helpers import names


def test_drop_optimizer_rename_and_cast_in_one_pass_tf1(tf1_ckpt, tmp_path):
    out = str(tmp_path / "slim" / "model.ckpt")
    result = cs.edit(tf1_ckpt, out, [cs.DropOptimizer(), cs.Rename("^encoder/", "enc/"),
                                     cs.Cast("float32", "bfloat16", "^enc/")], progress=False)
    got = names(out)
    assert not any(n.endswith(("/Adam", "/Adam_1")) or "beta1_power" in n for n in got)
    assert {"enc/dense/kernel", "enc/dense/bias", "head/kernel", "embed/table", "global_step", "vocab"} <= got
    assert "encoder/dense/kernel/Adam" in result.dropped
    reader, source = tf.train.load_checkpoint(out), tf.train.load_checkpoint(tf1_ckpt)
    assert reader.get_variable_to_dtype_map()["enc/dense/kernel"] == tf.bfloat16
    assert reader.get_variable_to_dtype_map()["head/kernel"] == tf.float32
    want = tf.cast(source.get_tensor("encoder/dense/kernel"), tf.bfloat16).numpy()
    np.testing.assert_array_equal(reader.get_tensor("enc/dense/kernel"), want)
    np.testing.assert_array_equal(reader.get_tensor("head/kernel"), source.get_tensor("head/kernel"))


def test_renamed_tf1_checkpoint_restores_with_saver_under_old_names(tf1_ckpt, tmp_path):
    """Rename there and back: Saver.restore of the real graph must see every original value."""
    there = str(tmp_path / "there" / "m")
    back = str(tmp_path / "back" / "m")
    cs.edit(tf1_ckpt, there, [cs.Rename("^(encoder|head)/", r"model/\1/")], progress=False)
    assert "model/encoder/dense/kernel" in names(there)
    cs.edit(there, back, [cs.Rename("^model/", "")], progress=False)
    original, restored = restore_tf1(tf1_ckpt), restore_tf1(back)
    for name, value in original.items():
        np.testing.assert_array_equal(value, restored[name], err_msg=name)


def test_keep_and_drop_filters(tf1_ckpt, tmp_path):
    out = str(tmp_path / "k" / "m")
    cs.edit(tf1_ckpt, out, [cs.Keep(["^encoder/"]), cs.Keep(["^head/"]), cs.Drop("Adam")], progress=False)
    assert names(out) == {"encoder/dense/kernel", "encoder/dense/bias", "head/kernel"}


def test_resize_pads_and_slices_with_initializers(tf1_ckpt, tmp_path):
    out = str(tmp_path / "r" / "m")
    cs.edit(tf1_ckpt, out, [cs.Resize("^embed/table$", "12,*", "mean"), cs.Resize("^head/kernel$", "5,2")],
            progress=False)
    reader, source = tf.train.load_checkpoint(out), tf.train.load_checkpoint(tf1_ckpt)
    table, old_table = reader.get_tensor("embed/table"), source.get_tensor("embed/table")
    assert table.shape == (12, 3)
    np.testing.assert_array_equal(table[:10], old_table)
    np.testing.assert_allclose(table[10], old_table.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(reader.get_tensor("head/kernel"), source.get_tensor("head/kernel")[:5])


def test_drop_optimizer_on_keras_checkpoint_restores_model_with_assert_consumed(keras_ckpt, tmp_path):
    prefix, model, _ = keras_ckpt
    out = str(tmp_path / "noopt" / "ckpt")
    result = cs.edit(prefix, out, [cs.DropOptimizer()], progress=False)
    assert result.dropped and all("optimizer" in n for n in result.dropped)
    fresh, _ = make_keras_model(seed=42, compile=False)  # fine-tuning starts with a fresh optimizer
    tf.train.Checkpoint(model=fresh).restore(out).assert_consumed()
    for a, b in zip(model.variables, fresh.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_renamed_tf2_checkpoint_rewrites_object_graph_and_restores(tf2_ckpt, tmp_path):
    prefix, model = tf2_ckpt
    out = str(tmp_path / "tf2" / "ckpt")
    # Swap encoder and decoder keys: the object graph must follow, so restore swaps the values.
    cs.edit(prefix, out, [cs.Rename("^model/encoder/", "TMP/"), cs.Rename("^model/decoder/", "model/encoder/"),
                          cs.Rename("^TMP/", "model/decoder/")], progress=False)
    fresh = TinyModel(seed=3)
    tf.train.Checkpoint(model=fresh).restore(out).assert_consumed()
    np.testing.assert_array_equal(fresh.encoder.w.numpy(), model.encoder.w.numpy())
    np.testing.assert_array_equal(fresh.decoder.b.numpy(), model.decoder.b.numpy())


def test_dropping_a_tf2_module_prunes_it_from_the_object_graph(tf2_ckpt, tmp_path):
    prefix, model = tf2_ckpt
    out = str(tmp_path / "tf2d" / "ckpt")
    cs.edit(prefix, out, [cs.Drop("^model/decoder/")], progress=False)
    partial = TinyModel(seed=3)
    del partial.decoder  # the model without the dropped module restores fully
    tf.train.Checkpoint(model=partial).restore(out).assert_consumed()
    np.testing.assert_array_equal(partial.head.numpy(), model.head.numpy())
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(out).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    child_names = {c.local_name for n in graph.nodes for c in n.children}
    assert "decoder" not in child_names and "encoder" in child_names


@pytest.mark.parametrize("rules, message", [
    ([cs.Rename("^nope/", "x/")], "--rename '^nope/' 'x/' matches no tensor"),
    ([cs.Drop("encodr/")], "closest names: encoder/"),
    ([cs.Keep(["^zzz"])], "--keep '^zzz' matches no tensor"),
    ([cs.Cast("float64", "float32")], "matches no float64 tensor"),
    ([cs.Rename("^encoder/dense/(kernel|bias)$", "same")], "two tensors map to output 'same'"),
    ([cs.Resize("^head/kernel$", "3")], "has rank 2"),
])
def test_bad_rules_fail_before_anything_is_written(tf1_ckpt, tmp_path, rules, message):
    out = tmp_path / "never" / "m"
    with pytest.raises(cs.UsageError, match=message.replace("(", r"\(").replace("|", r"\|").replace("^", r"\^")):
        cs.edit(tf1_ckpt, out, rules)
    assert not out.parent.exists()


@pytest.mark.parametrize("make", [
    lambda: cs.Rename("(unclosed", "x"), lambda: cs.Cast("string", "float32"),
    lambda: cs.Cast("float32", "int4"), lambda: cs.Resize("x", "3,a"), lambda: cs.Resize("x", "3", "gauss:1"),
])
def test_invalid_rules_are_rejected_when_built(make):
    with pytest.raises(cs.RuleError):
        make()


def test_dry_run_prints_plan_with_bytes_and_writes_nothing(tf1_ckpt, tmp_path, cli):
    out = tmp_path / "dry" / "m"
    run = cli("edit", tf1_ckpt, out, "--drop-optimizer", "--cast", "float32:float16", "--dry-run")
    assert run.returncode == 0, run.stderr
    assert "(dropped)" in run.stdout and "float32[4, 8] -> float16[4, 8]" in run.stdout
    assert "plan:" in run.stdout and "written" in run.stdout
    assert not out.parent.exists()
    run = cli("edit", tf1_ckpt, out, "--drop-optimizer", "--dry-run", "--json")
    plan = json.loads(run.stdout)
    assert plan["nbytes_out"] < plan["nbytes_in"] or plan["dropped"]
    assert not out.parent.exists()


def test_cli_rule_error_is_one_line_with_exit_2(tf1_ckpt, tmp_path, cli):
    run = cli("edit", tf1_ckpt, tmp_path / "o" / "m", "--rename", "^encodr/", "e/")
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "closest names: encoder/" in run.stderr


def test_resize_to_an_impossible_size_is_a_rule_error_before_anything_is_read(tf1_ckpt, tmp_path):
    with pytest.raises(RuleError, match="at most"):
        cs.edit(tf1_ckpt, tmp_path / "o" / "m", [cs.Resize("head/kernel$", "99999999999999999999999,*")], dry_run=True)
    assert not (tmp_path / "o").exists()
