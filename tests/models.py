"""Real TensorFlow models that write the checkpoints the tests operate on.

Each builder writes a checkpoint with real TF code (TF1 ``Saver``,
``tf.train.Checkpoint``, Keras, SavedModel) and can rebuild the same objects
to restore a checkpoint into, so tests compare what TensorFlow itself
restores, not what our reader says.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")


# -- TF1 name-based: Saver, Adam slots, global_step, partitioned, string ------------
def _build_tf1_graph(seed: int = 0):
    """The variables of a small TF1 model, created in the current default graph."""
    v1 = tf.compat.v1
    rng = np.random.default_rng(seed)
    with v1.variable_scope("encoder"):
        kernel = v1.get_variable("dense/kernel", initializer=rng.normal(size=(4, 8)).astype(np.float32))
        bias = v1.get_variable("dense/bias", initializer=rng.normal(size=(8,)).astype(np.float32))
    with v1.variable_scope("embed"):
        table = v1.get_variable(
            "table", shape=(10, 3), dtype=tf.float32,
            initializer=v1.random_normal_initializer(seed=seed + 1),
            partitioner=v1.fixed_size_partitioner(3),
        )
    head = v1.get_variable("head/kernel", initializer=rng.normal(size=(8, 2)).astype(np.float32))
    v1.Variable(np.array([b"<pad>", b"hello", b"w\xc3\xb6rld"], dtype=object), name="vocab", trainable=False)
    v1.Variable(np.arange(5, dtype=np.int32), name="counts", trainable=False)
    gs = v1.train.get_or_create_global_step()
    x = tf.constant(rng.normal(size=(5, 4)).astype(np.float32))
    ids = tf.constant([1, 4, 7])
    emb = tf.reduce_sum(tf.nn.embedding_lookup(table, ids))
    loss = tf.reduce_sum(tf.matmul(tf.nn.relu(tf.matmul(x, kernel) + bias), head)) + emb
    train = v1.train.AdamOptimizer(0.1).minimize(loss, global_step=gs)
    return train


def write_tf1_checkpoint(folder: Path, steps: int = 2, seed: int = 0) -> str:
    """Train a few Adam steps in graph mode and save with ``tf.compat.v1.train.Saver``."""
    with tf.Graph().as_default():
        train = _build_tf1_graph(seed)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(steps):
                sess.run(train)
            return saver.save(sess, str(folder / "model.ckpt"), global_step=tf.compat.v1.train.get_global_step())


def write_tf1_v1_checkpoint(folder: Path, seed: int = 5) -> str:
    """The same graph saved untrained in TF's pre-0.12 V1 format: one file ``model.ckpt``, no state file."""
    with tf.Graph().as_default():
        _build_tf1_graph(seed)
        saver = tf.compat.v1.train.Saver(write_version=tf.compat.v1.train.SaverDef.V1)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return saver.save(sess, str(folder / "model.ckpt"), write_state=False, write_meta_graph=False)


def restore_tf1(prefix: str, var_list_filter=None) -> dict[str, np.ndarray]:
    """Rebuild the TF1 graph, restore ``prefix`` with ``Saver.restore``, return every value by name.

    Partitioned variables come back whole (their parts concatenated).
    """
    with tf.Graph().as_default():
        _build_tf1_graph(seed=99)  # different init: values must come from the checkpoint
        variables = tf.compat.v1.global_variables()
        if var_list_filter is not None:
            variables = [v for v in variables if var_list_filter(v.op.name)]
        saver = tf.compat.v1.train.Saver(var_list=variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.restore(sess, prefix)
            values = sess.run({v.op.name: v for v in variables})
    whole: dict[str, list] = {}
    out: dict[str, np.ndarray] = {}
    for name, value in sorted(values.items()):
        part = re.search(r"/part_(\d+)", name)
        if part:  # embed/table/part_1/Adam -> piece 1 of embed/table/Adam
            whole.setdefault(name[:part.start()] + name[part.end():], []).append((int(part.group(1)), value))
        else:
            out[name] = value
    for name, parts in whole.items():
        out[name] = np.concatenate([v for _, v in sorted(parts, key=lambda p: p[0])])
    return out


# -- TF2 object-based: tf.train.Checkpoint with nested modules, bfloat16 ------------
class Block(tf.Module):
    def __init__(self, seed: int, width: int = 6):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w = tf.Variable(rng.normal(size=(width, width)).astype(np.float32))
        self.b = tf.Variable(rng.normal(size=(width,)).astype(np.float32))


class TinyModel(tf.Module):
    def __init__(self, seed: int = 0, head_width: int = 3):
        super().__init__()
        rng = np.random.default_rng(seed + 1000)
        self.encoder = Block(seed)
        self.decoder = Block(seed + 1)
        self.head = tf.Variable(rng.normal(size=(6, head_width)).astype(np.float32))
        self.scale = tf.Variable(tf.cast(rng.normal(size=(4,)), tf.bfloat16))
        self.step = tf.Variable(np.int64(seed + 7))


def write_tf2_checkpoint(folder: Path, seed: int = 0) -> tuple[str, TinyModel]:
    model = TinyModel(seed)
    prefix = tf.train.Checkpoint(model=model).save(str(folder / "ckpt"))
    return prefix, model


# -- Keras with an optimizer ---------------------------------------------------------
def make_keras_model(seed: int = 0, compile: bool = True):
    """A small Keras model; compiled models track their optimizer, uncompiled ones do not."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam(0.01)
    if compile:
        model.compile(optimizer, "mse")
    return model, optimizer


def write_keras_checkpoint(folder: Path, seed: int = 0) -> tuple[str, object, object]:
    """A trained Keras model and its Adam state, saved object-based with ``tf.train.Checkpoint``."""
    model, optimizer = make_keras_model(seed)
    rng = np.random.default_rng(seed)
    model.fit(rng.normal(size=(16, 4)), rng.normal(size=(16, 2)), epochs=2, verbose=0)
    prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(folder / "keras"))
    return prefix, model, optimizer


# -- SavedModel ------------------------------------------------------------------------
def write_saved_model(folder: Path, seed: int = 0) -> tuple[str, TinyModel]:
    model = TinyModel(seed)
    model.__call__ = tf.function(lambda x: tf.matmul(x, model.encoder.w), input_signature=[tf.TensorSpec([None, 6])])
    path = folder / "saved_model"
    tf.saved_model.save(model, str(path))
    return str(path), model


def module_values(module: tf.Module) -> dict[str, np.ndarray]:
    return {v.name + f"#{i}": v.numpy() for i, v in enumerate(module.variables)}


def assert_same_variables(a: tf.Module | list, b: tf.Module | list) -> None:
    """Every variable of ``a`` equals the corresponding one of ``b``, bit for bit."""
    va = a.variables if hasattr(a, "variables") else a
    vb = b.variables if hasattr(b, "variables") else b
    assert len(va) == len(vb) and len(va) > 0
    for x, y in zip(va, vb):
        assert x.dtype == y.dtype and x.shape == y.shape, (x.name, y.name)
        np.testing.assert_array_equal(np.asarray(x.numpy()), np.asarray(y.numpy()), err_msg=x.name)
