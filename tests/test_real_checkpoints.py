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
