"""Optimizer slots follow their variable through --cast and --resize.

A cast or resize that leaves a variable's Adam moments at the old dtype or
shape gives a checkpoint that loads and then fails at the first training
step (or, in TF1, keeps a stale slot).  Each test trains a real model,
edits its checkpoint with the CLI, restores the result into a real model of
the new dtype or shape, compares the slots, and runs one training step.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

X = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
Y = np.ones((8, 2), np.float32)


# -- tf_keras: save_weights / load_weights ---------------------------------------------
def _tf_keras_model(first_dtype: str = "float32", legacy: bool = False, widths=(5, 2), inputs: int = 4):
    tf_keras = pytest.importorskip("tf_keras")
    tf_keras.utils.set_random_seed(1)
    first, second = widths
    model = tf_keras.Sequential([tf_keras.Input((inputs,)), tf_keras.layers.Dense(first, dtype=first_dtype),
                                 tf_keras.layers.Dense(second)])
    optimizer = (tf_keras.optimizers.legacy.Adam if legacy else tf_keras.optimizers.Adam)(0.01)
    model.compile(optimizer, "mse")
    return model


# The legacy optimizer's slot keys start with the layer's path, so the pattern names only the variables.
@pytest.mark.parametrize("legacy, pattern", [(False, "layer_with_weights-0/"),
                                             (True, r"layer_with_weights-0/\w+/\.ATTRIBUTES/")],
                         ids=["adam", "legacy-adam"])
def test_tf_keras_cast_one_layer_casts_its_slots(tmp_path: Path, cli, legacy: bool, pattern: str) -> None:
    model = _tf_keras_model(legacy=legacy)
    model.fit(X, Y, epochs=2, verbose=0)
    model.save_weights(str(tmp_path / "src" / "w"))
    before = tf.train.load_checkpoint(str(tmp_path / "src" / "w"))

    run = cli("edit", tmp_path / "src" / "w", tmp_path / "out" / "w", "--cast", "float32:float16", pattern)
    assert run.returncode == 0, run.stderr

    after = tf.train.load_checkpoint(str(tmp_path / "out" / "w"))
    dtypes = {k: v.name for k, v in after.get_variable_to_dtype_map().items()}
    slots = [k for k in dtypes if ("OPTIMIZER_SLOT" in k and k.startswith("layer_with_weights-0/"))
             or (k.startswith("optimizer/_variables/") and before.get_tensor(k).shape in [(4, 5), (5,)])]
    assert len(slots) == 4, sorted(dtypes)  # m and v of kernel and bias
    for key in slots:
        assert dtypes[key] == "float16", key
        np.testing.assert_array_equal(after.get_tensor(key), before.get_tensor(key).astype(np.float16), err_msg=key)
    assert all(dtypes[k] == "float32" for k in dtypes if k.startswith("layer_with_weights-1/"))

    fresh = _tf_keras_model("float16", legacy=legacy)
    fresh.load_weights(str(tmp_path / "out" / "w")).assert_existing_objects_matched()
    loss = fresh.train_on_batch(X, Y)  # restores the slots (deferred) and applies one Adam step
    assert np.isfinite(loss)
    assert fresh.layers[0].kernel.dtype == tf.float16


def test_slot_without_a_link_is_an_error_unless_dropped(tmp_path: Path, cli) -> None:
    # Two layers of one width: tf_keras's optimizer records no slot links, and shapes no longer tell them apart.
    model = _tf_keras_model(widths=(5, 5), inputs=5)
    model.fit(np.ones((8, 5), np.float32), np.ones((8, 5), np.float32), verbose=0)
    model.save_weights(str(tmp_path / "src" / "w"))

    run = cli("edit", tmp_path / "src" / "w", tmp_path / "out" / "w", "--cast", "float32:float16", "layer_with_weights-0/")
    assert run.returncode == 2
    assert "optimizer slot 'optimizer/_variables/" in run.stderr and "--drop-optimizer" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()

    run = cli("edit", tmp_path / "src" / "w", tmp_path / "out" / "w", "--cast", "float32:float16", "layer_with_weights-0/",
              "--drop-optimizer")
    assert run.returncode == 0, run.stderr
    assert not any(k.startswith("optimizer/_variables/") for k, _ in tf.train.list_variables(str(tmp_path / "out" / "w")))


# -- Keras 3: tf.train.Checkpoint(model=..., optimizer=...) -----------------------------
def _keras3_model(first_dtype: str = "float32"):
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, dtype=first_dtype), keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam(0.01)
    model.compile(optimizer, "mse")
    return model, optimizer


def test_keras3_slots_follow_trainable_variables(tmp_path: Path, cli) -> None:
    model, optimizer = _keras3_model()
    model.fit(X, Y, epochs=2, verbose=0)
    prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "src" / "ckpt"))
    # Keras 3 reaches the model's variables through optimizer/_trainable_variables/N (0, 1: the first layer).
    rule = ["--cast", "float32:float16", "_trainable_variables/[01]/"]

    dry = cli("edit", prefix, tmp_path / "out" / "ckpt", *rule, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    slot_lines = [line for line in dry.stdout.splitlines() if "(slot of optimizer/_trainable_variables/" in line]
    assert len(slot_lines) == 4 and all("-> float16" in line for line in slot_lines), dry.stdout
    plan = json.loads(cli("edit", prefix, tmp_path / "out" / "ckpt", *rule, "--dry-run", "--json").stdout)
    assert sum(1 for e in plan["entries"] if e.get("note", "").startswith("slot of")) == 4

    run = cli("edit", prefix, tmp_path / "out" / "ckpt", *rule)
    assert run.returncode == 0, run.stderr
    fresh, fresh_optimizer = _keras3_model("float16")
    fresh_optimizer.build(fresh.trainable_variables)
    tf.train.Checkpoint(model=fresh, optimizer=fresh_optimizer).restore(
        str(tmp_path / "out" / "ckpt")).assert_existing_objects_matched()
    for new, old in zip(fresh_optimizer.variables, optimizer.variables):
        np.testing.assert_array_equal(new.numpy(), np.asarray(old.numpy()).astype(new.dtype), err_msg=new.path)
    assert np.isfinite(fresh.train_on_batch(X, Y))


# -- TF1: Saver with AdamOptimizer -----------------------------------------------------
def _tf1_graph(vocab: int, out_width: int, scope: str):
    """Embedding [vocab, 3] -> dense [3, out_width], Adam; returns (train op, variables by name).

    With a ``scope``, ``minimize`` runs inside it and the slots are named
    ``<scope>/embed/table/Adam`` (as tensor2tensor's ``training/...``).
    """
    v1 = tf.compat.v1
    rng = np.random.default_rng(7)
    table = v1.get_variable("embed/table", initializer=rng.normal(size=(vocab, 3)).astype(np.float32))
    kernel = v1.get_variable("dense/kernel", initializer=rng.normal(size=(3, out_width)).astype(np.float32))
    rows = tf.nn.embedding_lookup(table, tf.constant([0, 2, vocab - 1]))
    loss = tf.reduce_sum(tf.square(tf.matmul(rows, kernel)))
    with v1.variable_scope(scope or v1.get_variable_scope()):
        train = v1.train.AdamOptimizer(0.1).minimize(loss)
    return train, {v.op.name.removeprefix(f"{scope}/"): v for v in v1.global_variables()}


@pytest.mark.parametrize("scope", ["", "training"], ids=["beside-variable", "under-scope"])
def test_tf1_adam_resize_resizes_slots_with_zero_rows(tmp_path: Path, cli, scope: str) -> None:
    with tf.Graph().as_default():
        train, variables = _tf1_graph(vocab=10, out_width=2, scope=scope)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train)
            before = sess.run(variables)
            prefix = tf.compat.v1.train.Saver().save(sess, str(tmp_path / "src" / "model.ckpt"))
    assert before["embed/table/Adam"].any() and before["embed/table/Adam_1"].any()

    # 'embed/table' also finds the slots: they still get zero rows, not the variable's normal:0.5.
    run = cli("edit", prefix, tmp_path / "out" / "model.ckpt",
              "--resize", "embed/table", "12,*", "normal:0.5", "--resize", "dense/kernel$", "*,1")
    assert run.returncode == 0, run.stderr

    with tf.Graph().as_default():
        train, variables = _tf1_graph(vocab=12, out_width=1, scope=scope)
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver().restore(sess, str(tmp_path / "out" / "model.ckpt"))
            after = sess.run(variables)
            sess.run(train)  # one Adam step on the resized graph
            stepped = sess.run(variables)

    for slot in ("embed/table/Adam", "embed/table/Adam_1"):
        assert after[slot].shape == (12, 3)
        np.testing.assert_array_equal(after[slot][:10], before[slot])
        np.testing.assert_array_equal(after[slot][10:], 0.0)
    np.testing.assert_array_equal(after["embed/table"][:10], before["embed/table"])
    assert after["embed/table"][10:].std() > 0.1  # the variable itself took the requested init
    for name in ("dense/kernel", "dense/kernel/Adam", "dense/kernel/Adam_1"):
        np.testing.assert_array_equal(after[name], before[name][:, :1])  # shrinking slices the slots too
    for scalar in ("beta1_power", "beta2_power"):  # counters, not slots: untouched
        assert after[scalar] == before[scalar]
    assert not np.array_equal(stepped["embed/table/Adam"][11], after["embed/table/Adam"][11])


def test_help_says_slots_follow(cli) -> None:
    text = " ".join(cli("edit", "--help").stdout.split())
    assert "optimizer slots are cast with them" in text and "new rows of moments being zeros" in text


# -- Checkpoints written by other people's code, years apart -----------------------------
def test_real_checkpoints_tie_every_named_slot() -> None:
    """Every slot of the corpus is tied to a variable of its shape, except Keras-TF1's unnamed ``training/SGD/Variable_N``."""
    import re

    from conftest import REALCKPT, realckpt_rows

    from ckptsurgery.plan.optimizer_state import tie_slots
    from ckptsurgery.io.reader import open_checkpoint

    rows = realckpt_rows()
    if not rows:
        pytest.skip(f"real checkpoint corpus not present at {REALCKPT}")
    unnamed = re.compile(r"^training/\w+/Variable(_\d+)?$")
    tied_total = 0
    for row in rows:
        ckpt = open_checkpoint(REALCKPT / row["local_prefix"])
        ties = tie_slots(ckpt)
        assert all(unnamed.match(key) for key in ties.loose), (row["short_name"], sorted(ties.loose))
        for slot, variable in ties.tied.items():
            assert ckpt.info(slot).shape == ckpt.info(variable).shape, (row["short_name"], slot, variable)
        tied_total += len(ties.tied)
    assert tied_total > 100
