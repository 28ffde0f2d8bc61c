"""Capability: checkpoints written by other people's TF code (../shared/realckpt) open,
inspect, round-trip bit-exactly, and survive optimizer surgery with a consistent object graph."""

from __future__ import annotations

import pytest
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.plan.objectgraph import checkpoint_keys
from ckptsurgery.plan.optimizer_state import is_optimizer_state
from conftest import REALCKPT, realckpt_rows

ROWS = realckpt_rows()
pytestmark = pytest.mark.skipif(not ROWS, reason=f"real checkpoint corpus not present at {REALCKPT}")


@pytest.mark.parametrize("row", ROWS, ids=[r["short_name"] for r in ROWS])
def test_real_checkpoint_inspects_and_round_trips_bit_exactly(row, tmp_path):
    prefix = str(REALCKPT / row["local_prefix"])
    info = cs.inspect(prefix)
    assert info["num_tensors"] == int(row["n_tensors"])
    tf_names = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    assert {t["name"] for t in info["tensors"]} == set(tf_names)
    assert info["kind"] == ("tf2-object" if "_CHECKPOINTABLE_OBJECT_GRAPH" in tf_names else "tf1-name")
    out = tmp_path / "copy" / "ckpt"
    cs.copy(prefix, out, progress=False, memory_budget="4KB")
    assert cs.diff(prefix, out).identical
    reader_in, reader_out = tf.train.load_checkpoint(prefix), tf.train.load_checkpoint(str(out))
    assert reader_in.get_variable_to_dtype_map() == reader_out.get_variable_to_dtype_map()
    assert reader_in.get_variable_to_shape_map() == reader_out.get_variable_to_shape_map()


@pytest.mark.parametrize("row", ROWS, ids=[r["short_name"] for r in ROWS])
def test_real_checkpoint_drop_optimizer_keeps_weights_and_graph_consistent(row, tmp_path):
    prefix = str(REALCKPT / row["local_prefix"])
    ckpt = cs.open_checkpoint(prefix)
    optimizer_keys = [n for n in ckpt.names if is_optimizer_state(n)]
    if not optimizer_keys:
        with pytest.raises(cs.RuleError, match="finds no optimizer state"):
            cs.edit(prefix, tmp_path / "x", [cs.DropOptimizer()])
        return
    out = tmp_path / "slim" / "ckpt"
    result = cs.edit(prefix, out, [cs.DropOptimizer()], progress=False)
    assert sorted(result.dropped) == sorted(optimizer_keys)
    slim = cs.open_checkpoint(out)
    report = cs.diff(prefix, out)
    assert sorted(report.only_in_a) == sorted(optimizer_keys) and report.only_in_b == []
    assert report.dtype_or_shape == []
    assert [v.name for v in report.values] in ([], ["_CHECKPOINTABLE_OBJECT_GRAPH"])  # weights bit-identical
    if slim.kind == "tf2-object":
        keys = checkpoint_keys(slim.read_object_graph())
        assert keys == set(slim.names) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}


def _all_values(prefix: str) -> dict:
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _same_bits(a: dict, b: dict) -> None:
    import numpy as np

    assert sorted(a) == sorted(b)
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes() if x.dtype != object else x.tolist() == y.tolist(), name


@pytest.mark.parametrize("row", ROWS, ids=[r["short_name"] for r in ROWS])
def test_real_checkpoint_computed_tensors_chunked_equal_the_tf_path(row, tmp_path):
    """Casts and averages of other people's checkpoints, computed chunk by chunk from their bytes,
    are bit-identical to TensorFlow's decode-compute-encode path, and TF's reader reads every value."""
    prefix = str(REALCKPT / row["local_prefix"])
    ckpt = cs.open_checkpoint(prefix)
    has_float = any(t.dtype == "float32" for t in ckpt if t.name != "_CHECKPOINTABLE_OBJECT_GRAPH")
    rules = [cs.DropOptimizer()] if any(is_optimizer_state(n) for n in ckpt.names) else []
    outputs = {}
    for byte_path in (True, False):
        where = tmp_path / ("bytes" if byte_path else "tf")
        if has_float:
            cast = cs.Cast("float32", "float16")
            try:
                cs.edit(prefix, where / "cast" / "ckpt", rules + [cast], progress=False, memory_budget="4KB",
                        byte_path=byte_path)
            except cs.UsageError as exc:  # a value beyond float16 (a Keras metric's count): refused, both ways
                assert "overflows to infinity" in str(exc)
                cast = cs.Cast("float32", "float16", "^(?!keras_api/metrics/)")
                cs.edit(prefix, where / "cast" / "ckpt", rules + [cast], progress=False, memory_budget="4KB",
                        byte_path=byte_path)
        cs.average([prefix, prefix], where / "avg" / "ckpt", progress=False, memory_budget="4KB",
                   byte_path=byte_path)
        outputs[byte_path] = {kind: _all_values(str(where / kind / "ckpt"))
                              for kind in (("cast", "avg") if has_float else ("avg",))}
    for kind in outputs[True]:
        _same_bits(outputs[True][kind], outputs[False][kind])
    averaged, original = outputs[True]["avg"], _all_values(prefix)
    for name, value in averaged.items():  # the mean of a tensor with itself is that tensor
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH" and not is_optimizer_state(name):
            _same_bits({name: value}, {name: original[name]})
