"""Capability: the README's surgery recipes produce checkpoints that real TF loaders accept.

Two recipes people copy: growing BERT's vocabulary (every vocabulary-sized
tensor must be resized, or a shape-checking loader refuses the output) and
restoring a checkpoint after ``--drop-optimizer`` into a Keras model.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import ckptsurgery as cs
from models import make_keras_model

V1 = tf.compat.v1
VOCAB, GROWN, HIDDEN = 10, 13, 4


def _bert_like_graph(vocab: int, seed: int, use_resource: bool = True):
    """BERT's vocabulary-sized tensors: the input embedding and the output bias (weights tied to it).

    ``use_resource=False`` makes classic TF1 reference variables, whose restore checks shapes
    (resource variables silently take the checkpoint's shape).
    """
    rng = np.random.default_rng(seed)

    def variable(name, value):
        return V1.get_variable(name, initializer=value.astype(np.float32), use_resource=use_resource)

    emb = variable("bert/embeddings/word_embeddings", rng.normal(size=(vocab, HIDDEN)))
    kernel = variable("bert/encoder/kernel", rng.normal(size=(HIDDEN, HIDDEN)))
    bias = variable("cls/predictions/output_bias", rng.normal(size=(vocab,)))
    hidden = tf.matmul(tf.nn.embedding_lookup(emb, [1, 2, 3]), kernel)
    return tf.reduce_sum(tf.matmul(hidden, emb, transpose_b=True) + bias)


@pytest.fixture(scope="module")
def bert_like(tmp_path_factory) -> str:
    """A trained (Adam slots, global_step) BERT-shaped TF1 checkpoint."""
    folder = tmp_path_factory.mktemp("bert")
    with tf.Graph().as_default():
        loss = _bert_like_graph(VOCAB, seed=0)
        train = V1.train.AdamOptimizer(0.1).minimize(loss, global_step=V1.train.get_or_create_global_step())
        with V1.Session() as sess:
            sess.run(V1.global_variables_initializer())
            sess.run(train)
            return V1.train.Saver().save(sess, str(folder / "model.ckpt"))


def _restore_grown(prefix: str) -> dict[str, np.ndarray]:
    """Saver.restore into the grown model (TF1 reference variables: every shape is checked)."""
    with tf.Graph().as_default():
        _bert_like_graph(GROWN, seed=1, use_resource=False)
        with V1.Session() as sess:
            V1.train.Saver().restore(sess, prefix)
            return sess.run({v.op.name: v for v in V1.global_variables()})


def test_readme_vocabulary_growth_resizes_every_vocabulary_tensor(bert_like, tmp_path):
    out = str(tmp_path / "grown" / "model.ckpt")
    cs.edit(bert_like, out, [cs.DropOptimizer(),
                             cs.Resize("bert/embeddings/word_embeddings$", f"{GROWN},*", "normal:0.02"),
                             cs.Resize("cls/predictions/output_bias$", str(GROWN), "zeros")], progress=False)
    values, old = _restore_grown(out), tf.train.load_checkpoint(bert_like)
    np.testing.assert_array_equal(values["bert/embeddings/word_embeddings"][:VOCAB],
                                  old.get_tensor("bert/embeddings/word_embeddings"))
    np.testing.assert_array_equal(values["cls/predictions/output_bias"][:VOCAB], old.get_tensor("cls/predictions/output_bias"))
    np.testing.assert_array_equal(values["cls/predictions/output_bias"][VOCAB:], np.zeros(GROWN - VOCAB, np.float32))

    half = str(tmp_path / "half" / "model.ckpt")  # the incomplete resize the README used to show
    cs.edit(bert_like, half, [cs.DropOptimizer(), cs.Resize("word_embeddings$", f"{GROWN},*")], progress=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"lhs shape= \[{GROWN}\] rhs shape= \[{VOCAB}\]"):
        _restore_grown(half)


def test_readme_restore_after_drop_optimizer_into_keras(keras_ckpt, tmp_path):
    prefix, trained, _ = keras_ckpt
    out = str(tmp_path / "slim" / "ckpt")
    cs.edit(prefix, out, [cs.DropOptimizer()], progress=False)

    model, optimizer = make_keras_model(seed=5)  # compiled: the optimizer is attached and not in the checkpoint
    with pytest.raises(AssertionError):
        tf.train.Checkpoint(model=model, optimizer=optimizer).restore(out).assert_existing_objects_matched()

    model, optimizer = make_keras_model(seed=5, compile=False)  # the README way: restore, then compile
    tf.train.Checkpoint(model=model).restore(out).assert_existing_objects_matched()
    for restored, original in zip(model.variables, trained.variables):
        np.testing.assert_array_equal(restored.numpy(), original.numpy())
    model.compile(optimizer, "mse")
    model.fit(np.ones((4, 4)), np.ones((4, 2)), epochs=1, verbose=0)
    assert int(optimizer.iterations.numpy()) == 1

    model, optimizer = make_keras_model(seed=6)  # or: optimizer attached, expect_partial
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(out).expect_partial()
    for restored, original in zip(model.variables, trained.variables):
        np.testing.assert_array_equal(restored.numpy(), original.numpy())
