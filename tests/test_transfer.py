"""Capability: transfer an old model's shared variables into a new model's variable set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.plan.transfer import transfer_into_variables
from models import TinyModel, restore_tf1


def test_transfer_into_tf2_template_keeps_changed_module_and_restores(tmp_path):
    old = TinyModel(seed=1, head_width=3)
    old_prefix = tf.train.Checkpoint(model=old).save(str(tmp_path / "old" / "ckpt"))
    new = TinyModel(seed=2, head_width=5)  # the changed module: a wider head
    new_prefix = tf.train.Checkpoint(model=new).save(str(tmp_path / "new" / "ckpt"))

    out = str(tmp_path / "warm" / "ckpt")
    result, report = cs.transfer(old_prefix, new_prefix, out, progress=False)
    assert result.prefix == out
    assert [m.name for m in report.mismatched] == ["model/head/.ATTRIBUTES/VARIABLE_VALUE"]
    assert report.mismatched[0].old_shape == [6, 3] and report.mismatched[0].new_shape == [6, 5]
    assert "model/encoder/w/.ATTRIBUTES/VARIABLE_VALUE" in report.transferred
    assert "save_counter/.ATTRIBUTES/VARIABLE_VALUE" in report.kept_from_new  # a new run counts its own saves

    restored = TinyModel(seed=9, head_width=5)
    tf.train.Checkpoint(model=restored).restore(out).assert_consumed()
    for name in ("encoder", "decoder"):
        for var in ("w", "b"):
            np.testing.assert_array_equal(getattr(getattr(restored, name), var).numpy(),
                                          getattr(getattr(old, name), var).numpy())
    np.testing.assert_array_equal(restored.head.numpy(), new.head.numpy())  # kept as initialized
    np.testing.assert_array_equal(restored.scale.numpy(), old.scale.numpy())


def test_strict_transfer_refuses_a_shape_mismatch(tmp_path):
    old_prefix = tf.train.Checkpoint(model=TinyModel(1, 3)).save(str(tmp_path / "o" / "c"))
    new_prefix = tf.train.Checkpoint(model=TinyModel(2, 5)).save(str(tmp_path / "n" / "c"))
    with pytest.raises(cs.PlanError, match=r"--strict: 'model/head/.ATTRIBUTES/VARIABLE_VALUE' is float32\[6, 5\]"):
        cs.transfer(old_prefix, new_prefix, tmp_path / "x" / "c", strict=True)
    assert not (tmp_path / "x").exists()


def test_tf1_name_based_checkpoint_moves_into_tf2_template_with_renames(tf1_ckpt, tmp_path):
    """A TF1 Saver checkpoint's weights land in a TF2 tf.Module through rename rules."""

    class Encoder(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.zeros([4, 8]))
            self.bias = tf.Variable(tf.zeros([8]))
            self.extra = tf.Variable(tf.ones([2]))  # new in the new model

    new = Encoder()
    new_prefix = tf.train.Checkpoint(encoder=new).save(str(tmp_path / "tpl" / "ckpt"))
    out = str(tmp_path / "out" / "ckpt")
    _, report = cs.transfer(tf1_ckpt, new_prefix, out, progress=False, skip_optimizer=True,
                            rules=[cs.Rename(r"^encoder/dense/(kernel|bias)$", r"encoder/\1/.ATTRIBUTES/VARIABLE_VALUE")])
    assert set(report.transferred) == {"encoder/kernel/.ATTRIBUTES/VARIABLE_VALUE",
                                       "encoder/bias/.ATTRIBUTES/VARIABLE_VALUE"}
    assert "encoder/extra/.ATTRIBUTES/VARIABLE_VALUE" in report.kept_from_new
    assert "head/kernel" in report.unused_from_old
    restored = Encoder()
    tf.train.Checkpoint(encoder=restored).restore(out).assert_consumed()
    original = restore_tf1(tf1_ckpt)
    np.testing.assert_array_equal(restored.kernel.numpy(), original["encoder/dense/kernel"])
    np.testing.assert_array_equal(restored.bias.numpy(), original["encoder/dense/bias"])
    np.testing.assert_array_equal(restored.extra.numpy(), np.ones(2, np.float32))


def test_transfer_into_live_variables_assigns_one_at_a_time(tf1_ckpt):
    original = restore_tf1(tf1_ckpt)
    kernel = tf.Variable(tf.zeros([4, 8]), name="encoder/dense/kernel")
    wrong = tf.Variable(tf.zeros([3, 3]), name="head/kernel")
    fresh = tf.Variable(tf.ones([2]), name="brand_new")
    report = transfer_into_variables(cs.open_checkpoint(tf1_ckpt), [kernel, wrong, fresh])
    np.testing.assert_array_equal(kernel.numpy(), original["encoder/dense/kernel"])
    assert report.transferred == {"encoder/dense/kernel": "encoder/dense/kernel"}
    assert report.mismatched[0].name == "head/kernel" and report.kept_from_new == ["head/kernel", "brand_new"]
    np.testing.assert_array_equal(wrong.numpy(), np.zeros([3, 3]))


def test_transfer_cli_writes_report_and_map_file(tf1_ckpt, tmp_path, cli):
    new_prefix = tf.train.Checkpoint(h=tf.Variable(tf.zeros([8, 2]))).save(str(tmp_path / "tpl" / "ckpt"))
    mapping = tmp_path / "map.yaml"
    mapping.write_text("head/kernel: h/.ATTRIBUTES/VARIABLE_VALUE\n")
    report_path = tmp_path / "report.json"
    run = cli("transfer", "--from", tf1_ckpt, "--into", new_prefix, "--out", tmp_path / "o" / "ckpt",
              "--map", mapping, "--report", report_path)
    assert run.returncode == 0, run.stderr
    report = json.loads(report_path.read_text())
    assert report["transferred"] == [{"name": "h/.ATTRIBUTES/VARIABLE_VALUE", "from": "head/kernel"}]
    value = tf.train.load_checkpoint(str(tmp_path / "o" / "ckpt")).get_tensor("h/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(value, restore_tf1(tf1_ckpt)["head/kernel"])

    mapping.write_text("no/such/tensor: h/.ATTRIBUTES/VARIABLE_VALUE\n")
    run = cli("transfer", "--from", tf1_ckpt, "--into", new_prefix, "--out", tmp_path / "o2" / "ckpt", "--map", mapping)
    assert run.returncode == 2 and "'no/such/tensor' is not a tensor of the old checkpoint" in run.stderr


def test_variables_by_key_names_live_variables_like_the_checkpoint_does(keras_ckpt, tf2_ckpt):
    from ckptsurgery.plan.transfer import variables_by_key

    prefix, model = tf2_ckpt
    keys = variables_by_key(tf.train.Checkpoint(model=model))
    saved = set(cs.open_checkpoint(prefix).names) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert set(keys) == saved - {"save_counter/.ATTRIBUTES/VARIABLE_VALUE"}
    assert keys["model/encoder/w/.ATTRIBUTES/VARIABLE_VALUE"] is model.encoder.w
    prefix, kmodel, optimizer = keras_ckpt
    keys = variables_by_key(tf.train.Checkpoint(model=kmodel, optimizer=optimizer))
    saved = set(cs.open_checkpoint(prefix).names) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert set(keys) == saved - {"save_counter/.ATTRIBUTES/VARIABLE_VALUE"}


def test_api_transfer_into_a_live_model_uses_checkpoint_keys(tmp_path):
    old = TinyModel(seed=1, head_width=3)
    old_prefix = tf.train.Checkpoint(model=old).save(str(tmp_path / "old" / "ckpt"))
    live = TinyModel(seed=2, head_width=4)
    head_before = live.head.numpy().copy()
    result, report = cs.transfer(old_prefix, tf.train.Checkpoint(model=live))
    assert result is None
    np.testing.assert_array_equal(live.encoder.w.numpy(), old.encoder.w.numpy())
    np.testing.assert_array_equal(live.scale.numpy(), old.scale.numpy())
    np.testing.assert_array_equal(live.head.numpy(), head_before)  # shape changed: kept
    assert [m.name for m in report.mismatched] == ["model/head/.ATTRIBUTES/VARIABLE_VALUE"]
    assert "model/decoder/b/.ATTRIBUTES/VARIABLE_VALUE" in report.transferred
    # A bare tf.Module is the root itself: its keys lack the "model/" edge, so rename old names to match.
    other = TinyModel(seed=3, head_width=4)
    _, report = cs.transfer(old_prefix, other, rules=[cs.Rename("^model/", "")])
    np.testing.assert_array_equal(other.decoder.w.numpy(), old.decoder.w.numpy())
