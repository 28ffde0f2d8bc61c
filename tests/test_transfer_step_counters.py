"""Capability: a warm start is a new run, so transfer keeps the new model's step counters.

An old ``global_step`` of 1,000,000 carried into a new model puts its
learning-rate schedule at the end, silently.  By default the output keeps
NEW's counters (``global_step``, ``save_counter``, optimizer iterations) and
the report lists them as kept from new; ``--old-step-counters`` takes OLD's.
Model state that is not trained (batch-norm moving statistics) still moves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.plan.step_counters import is_step_counter

V1 = tf.compat.v1


def _tf1_checkpoint(folder: Path, step: int, seed: int) -> str:
    """A TF1 Saver checkpoint: a dense kernel, batch-norm moving statistics and global_step=``step``."""
    rng = np.random.default_rng(seed)
    with tf.Graph().as_default():
        V1.get_variable("dense/kernel", initializer=rng.normal(size=(3, 2)).astype(np.float32))
        V1.get_variable("bn/moving_mean", initializer=rng.normal(size=(2,)).astype(np.float32), trainable=False)
        V1.get_variable("bn/moving_variance", initializer=rng.uniform(1, 2, size=(2,)).astype(np.float32),
                        trainable=False)
        step_var = V1.train.get_or_create_global_step()
        with V1.Session() as sess:
            sess.run(V1.global_variables_initializer())
            sess.run(step_var.assign(step))
            return V1.train.Saver().save(sess, str(folder / "model.ckpt"))


def _tf1_restore(prefix: str) -> dict[str, np.ndarray]:
    """Restore ``prefix`` into a fresh TF1 graph with Saver.restore; every value by name."""
    with tf.Graph().as_default():
        V1.get_variable("dense/kernel", shape=(3, 2))
        V1.get_variable("bn/moving_mean", shape=(2,), trainable=False)
        V1.get_variable("bn/moving_variance", shape=(2,), trainable=False)
        V1.train.get_or_create_global_step()
        with V1.Session() as sess:
            V1.train.Saver().restore(sess, prefix)
            return sess.run({v.op.name: v for v in V1.global_variables()})


@pytest.fixture(scope="module")
def tf1_pair(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("steps")
    return _tf1_checkpoint(folder / "old", 1_000_000, seed=1), _tf1_checkpoint(folder / "new", 0, seed=2)


def test_tf1_transfer_keeps_new_global_step_and_moves_batch_norm_statistics(tf1_pair, tmp_path):
    old, new = tf1_pair
    out = str(tmp_path / "warm" / "model.ckpt")
    _, report = cs.transfer(old, new, out, progress=False)
    restored, old_values = _tf1_restore(out), _tf1_restore(old)
    assert restored["global_step"] == 0
    assert "global_step" in report.kept_from_new and "global_step" not in report.transferred
    assert report.step_counters == {"global_step": "new"}
    assert report.to_json()["step_counters"] == [{"name": "global_step", "from": "new"}]
    assert "global_step" in report.unused_from_old
    for name in ("dense/kernel", "bn/moving_mean", "bn/moving_variance"):  # trained and untrained model state
        np.testing.assert_array_equal(restored[name], old_values[name], err_msg=name)
        assert report.transferred[name] == name


def test_tf1_transfer_old_step_counters_takes_old_global_step(tf1_pair, tmp_path):
    old, new = tf1_pair
    out = str(tmp_path / "warm" / "model.ckpt")
    _, report = cs.transfer(old, new, out, progress=False, old_step_counters=True)
    assert _tf1_restore(out)["global_step"] == 1_000_000
    assert report.transferred["global_step"] == "global_step" and report.step_counters == {"global_step": "old"}


def test_cli_transfer_reports_kept_step_counter_and_flag_takes_old(tf1_pair, tmp_path, cli):
    old, new = tf1_pair
    run = cli("transfer", "--from", old, "--into", new, "--out", tmp_path / "a" / "model.ckpt",
              "--report", tmp_path / "report.json")
    assert run.returncode == 0, run.stderr
    assert "kept from new: global_step (step counter" in run.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert "global_step" in report["kept_from_new"]
    assert tf.train.load_checkpoint(str(tmp_path / "a" / "model.ckpt")).get_tensor("global_step") == 0

    run = cli("transfer", "--from", old, "--into", new, "--out", tmp_path / "b" / "model.ckpt", "--old-step-counters")
    assert run.returncode == 0, run.stderr
    assert tf.train.load_checkpoint(str(tmp_path / "b" / "model.ckpt")).get_tensor("global_step") == 1_000_000


def test_recipe_transfer_old_step_counters_key(tf1_pair, tmp_path, cli):
    old, new = tf1_pair
    recipe = tmp_path / "warm.yaml"
    recipe.write_text(f"transfer:\n  from: {old}\n  into: {new}\n  old_step_counters: true\noutput: out/model.ckpt\n")
    run = cli("run", recipe)
    assert run.returncode == 0, run.stderr
    assert tf.train.load_checkpoint(str(tmp_path / "out" / "model.ckpt")).get_tensor("global_step") == 1_000_000


def _keras_run(seed: int, steps: int):
    """A compiled Keras model with batch norm, trained ``steps`` batches (0: as initialized)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam(0.01)
    model.compile(optimizer, "mse")
    if steps:
        rng = np.random.default_rng(seed)
        model.fit(rng.normal(size=(4 * steps, 4)), rng.normal(size=(4 * steps, 2)), batch_size=4, epochs=1, verbose=0)
    else:
        optimizer.build(model.trainable_variables)
    return model, optimizer


def test_tf2_keras_transfer_keeps_new_iterations_and_save_counter(tmp_path):
    old_model, old_opt = _keras_run(seed=1, steps=5)
    old_ckpt = tf.train.Checkpoint(model=old_model, optimizer=old_opt)
    for _ in range(3):
        old_prefix = old_ckpt.save(str(tmp_path / "old" / "ckpt"))  # save_counter 3
    new_model, new_opt = _keras_run(seed=2, steps=0)
    new_prefix = tf.train.Checkpoint(model=new_model, optimizer=new_opt).save(str(tmp_path / "new" / "ckpt"))
    out = str(tmp_path / "warm" / "ckpt")
    _, report = cs.transfer(old_prefix, new_prefix, out, progress=False)
    iterations, save_counter = ("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE",
                                "save_counter/.ATTRIBUTES/VARIABLE_VALUE")
    assert report.step_counters == {iterations: "new", save_counter: "new"}
    assert {iterations, save_counter} <= set(report.kept_from_new)

    model, optimizer = _keras_run(seed=3, steps=0)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    ckpt.restore(out).assert_consumed()
    assert int(optimizer.iterations.numpy()) == 0 and int(ckpt.save_counter.numpy()) == 1
    for restored, original in zip(model.variables, old_model.variables):  # moving mean/variance included
        np.testing.assert_array_equal(restored.numpy(), original.numpy(), err_msg=restored.path)
    assert any("moving_variance" in v.path for v in model.non_trainable_variables)

    _, report = cs.transfer(old_prefix, new_prefix, tmp_path / "old_steps" / "ckpt", progress=False,
                            old_step_counters=True)
    assert report.step_counters == {iterations: "old", save_counter: "old"}
    reader = tf.train.load_checkpoint(str(tmp_path / "old_steps" / "ckpt"))
    assert reader.get_tensor(iterations) == 5 and reader.get_tensor(save_counter) == 3


def test_transfer_into_a_live_model_keeps_its_step_counters(tmp_path):
    old_model, old_opt = _keras_run(seed=1, steps=5)
    old_prefix = tf.train.Checkpoint(model=old_model, optimizer=old_opt).save(str(tmp_path / "old" / "ckpt"))
    model, optimizer = _keras_run(seed=2, steps=0)
    _, report = cs.transfer(old_prefix, tf.train.Checkpoint(model=model, optimizer=optimizer))
    assert int(optimizer.iterations.numpy()) == 0
    assert report.step_counters == {"optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE": "new"}
    for restored, original in zip(model.variables, old_model.variables):
        np.testing.assert_array_equal(restored.numpy(), original.numpy(), err_msg=restored.path)

    _, report = cs.transfer(old_prefix, tf.train.Checkpoint(model=model, optimizer=optimizer), old_step_counters=True)
    assert int(optimizer.iterations.numpy()) == 5


def test_transfer_into_live_tf1_variables_keeps_global_step(tf1_pair):
    old, _ = tf1_pair
    kernel = tf.Variable(tf.zeros([3, 2]), name="dense/kernel")
    step = tf.Variable(np.int64(7), name="global_step")
    report = cs.transfer_into_variables(cs.open_checkpoint(old), [kernel, step])
    assert int(step.numpy()) == 7 and report.step_counters == {"global_step": "new"}
    assert report.transferred == {"dense/kernel": "dense/kernel"}


@pytest.mark.parametrize("name, dtype, shape, expected", [
    ("global_step", "int64", (), True),
    ("scope/global_step", "int64", (), True),
    ("Adam/iterations", "int64", (), True),
    ("training/Adam/iterations", "int64", (), True),
    ("training/SGD/iter", "int64", (), True),
    ("adam/iteration", "int64", (), True),
    ("save_counter/.ATTRIBUTES/VARIABLE_VALUE", "int64", (), True),
    ("step/.ATTRIBUTES/VARIABLE_VALUE", "int64", (), True),
    ("optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE", "int64", (), True),
    ("model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE", "int64", (), True),
    ("model/step/.ATTRIBUTES/VARIABLE_VALUE", "int64", (), False),  # a model's own attribute, not a counter
    ("encoder/iterations", "int64", (), False),
    ("global_step", "float32", (), False),
    ("bn/moving_mean", "float32", (2,), False),
])
def test_step_counter_names(name, dtype, shape, expected):
    assert is_step_counter(name, dtype, shape) is expected
