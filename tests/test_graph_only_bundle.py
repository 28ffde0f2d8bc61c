"""A bundle holding only the object graph (a SavedModel of a model without variables) is copied as it is,
and every message about it is true of it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import ckptsurgery as cs
from ckptsurgery.errors import PlanError
from models import tf


class Doubler(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([2], tf.float32)])
    def __call__(self, x):
        return x * 2.0


def test_object_graph_only_bundle_copies_and_the_saved_model_loads(tmp_path):
    original = tmp_path / "sm"
    tf.saved_model.save(Doubler(), str(original))
    ckpt = cs.open_checkpoint(original)
    assert ckpt.names == ["_CHECKPOINTABLE_OBJECT_GRAPH"]

    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(original, rebuilt)
    shutil.rmtree(rebuilt / "variables")
    cs.copy(original, rebuilt / "variables" / "variables", progress=False)
    assert cs.diff(original, rebuilt).identical
    loaded = tf.saved_model.load(str(rebuilt))
    np.testing.assert_array_equal(loaded(tf.constant([1.0, 3.0])).numpy(), [2.0, 6.0])

    with pytest.raises(PlanError, match="hold no variables") as err:
        cs.average([original, original], tmp_path / "avg" / "m", progress=False)
    assert "optimizer" not in str(err.value)
