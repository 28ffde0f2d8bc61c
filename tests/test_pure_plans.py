"""Planning is pure: ``plan_edit`` and ``plan_transfer`` read the index only, never tensor data.

Every way a Checkpoint can read tensor data is made to fail, then real plans
are built from real TF checkpoints and checked against the index.
"""

from __future__ import annotations

import pytest

import ckptsurgery as cs
from ckptsurgery.io.reader import Checkpoint


@pytest.fixture
def no_tensor_reads(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("a planner read tensor data")

    for method in ("read", "read_many", "read_slice", "prefetch", "read_object_graph"):
        monkeypatch.setattr(Checkpoint, method, refuse)


def test_plan_edit_reads_no_tensor_data(tf1_ckpt, no_tensor_reads):
    src = cs.open_checkpoint(tf1_ckpt)
    plan = cs.plan_edit(src, [cs.DropOptimizer(), cs.Rename("^encoder/", "enc/"), cs.Cast("float32", "bfloat16", "^enc/")])
    out = {e.name: e for e in plan.entries}
    assert "enc/dense/kernel" in out and out["enc/dense/kernel"].dtype == "bfloat16"
    assert out["enc/dense/kernel"].shape == src.info("encoder/dense/kernel").shape
    assert not any(name.endswith(("/Adam", "/Adam_1")) for name in out)
    assert {ref.name for ref in plan.dropped} >= {"encoder/dense/kernel/Adam"}


def test_plan_transfer_reads_no_tensor_data(tf1_ckpt, tmp_path_factory, no_tensor_reads):
    from models import write_tf1_checkpoint

    old = cs.open_checkpoint(tf1_ckpt)
    new = cs.open_checkpoint(write_tf1_checkpoint(tmp_path_factory.mktemp("new"), seed=1))
    plan, report = cs.plan_transfer(old, new)
    assert sorted(e.name for e in plan.entries) == sorted(t.name for t in new)
    for entry in plan.entries:
        assert entry.inputs[0].source in plan.sources
        assert (entry.dtype, entry.shape) == (new.info(entry.name).dtype, new.info(entry.name).shape)
