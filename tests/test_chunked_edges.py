"""Capability: the chunked computation at its edges gives what the TF path gives, or refuses it the same way.

* a first-axis resize of a tensor whose rows hold no element (shape ``[3, 0]``)
  is computed chunk by chunk like any other, equal to the TF path, and restores;
* a float -> integer cast of NaN, Inf or an out-of-range value is refused on both
  paths (numpy's integer for such a value depends on the CPU and on how many
  elements one call converts, so the chunked and whole results differed), one
  line naming the tensor, exit code 2, nothing at the destination; an in-range
  float -> integer cast still equals the TF path bit for bit and restores;
* an average of float64 tensors beyond float32's range (1e300) is finite and written, on both
  paths (the NaN/Inf check used to look at the values narrowed to float32, where they are Inf);
* a first-axis resize of a matrix whose one row is larger than ``--memory-budget`` is
  computed in chunks within the budget (a chunk used to be at least one row), equal to the TF path;
* a random resize fill into an integer tensor is refused when a draw fits no integer of its
  dtype (negative for uint, beyond the range), with the same message on both paths, and written
  equal on both when every draw fits;
* ``--dry-run --json`` gives each computed entry ``"compute": {"kind", "reason"}``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.errors import EXIT_USAGE, UsageError
from ckptsurgery.execute import chunked
from ckptsurgery.plan.byte_path import chunk_plans
from conftest import run_cli
from helpers import tf_values

KEY = "/.ATTRIBUTES/VARIABLE_VALUE"
SMALL = "48B"  # a few elements per chunk


class Edges(tf.Module):
    """A tensor with empty rows, floats every integer dtype holds, and floats no integer dtype holds."""

    def __init__(self, empty_rows: int = 3):
        super().__init__()
        self.empty = tf.Variable(tf.zeros([empty_rows, 0], tf.float32))
        self.fine = tf.Variable(tf.constant([0.0, -0.0, 0.9, -0.9, 1.9, 100.5, 127.9, 3.7] * 3))
        self.bad = tf.Variable(tf.constant([1.0, np.nan, np.inf, -np.inf, 3e9, -3e9, 7.0] * 5))


@pytest.fixture(scope="module")
def edges(tmp_path_factory) -> str:
    return tf.train.Checkpoint(m=Edges()).save(str(tmp_path_factory.mktemp("edges") / "ckpt"))


def both_ways(run, tmp_path) -> tuple[str, str]:
    by_chunks, by_tf = str(tmp_path / "chunks" / "m"), str(tmp_path / "tf" / "m")
    run(by_chunks, progress=False, memory_budget=SMALL)
    run(by_tf, progress=False, memory_budget=SMALL, byte_path=False)
    assert tf_values(by_chunks) == tf_values(by_tf)
    return by_chunks, by_tf


@pytest.mark.parametrize("rows", [5, 1, 0])
def test_resize_of_a_tensor_with_empty_rows_is_chunked_and_equals_the_tf_path(edges, rows, tmp_path):
    rule = cs.Resize("^m/empty/", f"{rows},*", "normal", seed=2)
    plan = cs.edit(edges, tmp_path / "plan" / "m", [rule], dry_run=True)
    assert f"m/empty{KEY}" in chunk_plans(plan)
    out, _ = both_ways(lambda dest, **o: cs.edit(edges, dest, [rule], **o), tmp_path)
    model = Edges(empty_rows=rows)
    tf.train.Checkpoint(m=model).restore(out).assert_consumed()
    assert model.empty.shape == (rows, 0)


@pytest.mark.parametrize("to", ["int32", "uint8", "int64", "uint32", "int8"])
def test_float_to_integer_cast_of_in_range_values_equals_the_tf_path(edges, to, tmp_path):
    rule = cs.Cast("float32", to, "^m/fine/")
    out, _ = both_ways(lambda dest, **o: cs.edit(edges, dest, [rule], **o), tmp_path)
    expected = tf.train.load_checkpoint(edges).get_tensor(f"m/fine{KEY}").astype(to)
    got = tf.train.load_checkpoint(out).get_tensor(f"m/fine{KEY}")
    assert got.dtype == np.dtype(to) and got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("byte_path", [True, False])
@pytest.mark.parametrize("to", ["uint32", "int32", "int64", "uint8"])
def test_float_to_integer_cast_of_nan_inf_or_overflow_is_refused(edges, to, byte_path, tmp_path):
    dest = tmp_path / "out" / "m"
    with pytest.raises(UsageError, match=rf"tensor 'm/bad{KEY}': cast float32 -> {to} refused"):
        cs.edit(edges, dest, [cs.Cast("float32", to, "^m/bad/")], progress=False, memory_budget=SMALL,
                byte_path=byte_path)
    assert not dest.parent.exists() or not os.listdir(dest.parent)


def test_refused_cast_on_the_cli_is_one_line_exit_2_nothing_written(edges, tmp_path):
    before = tf_values(edges)
    dest = tmp_path / "out" / "m"
    result = run_cli("edit", edges, dest, "--memory-budget", SMALL, "--cast", "float32:uint32", "^m/bad/")
    assert result.returncode == EXIT_USAGE, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ckptsurgery")]
    assert len(lines) == 1 and "m/bad" in lines[0] and "refused" in lines[0] and "Traceback" not in result.stderr
    assert not dest.parent.exists() or not os.listdir(dest.parent)
    assert tf_values(edges) == before


def test_dry_run_json_gives_each_computed_entry_a_kind_and_a_reason(edges, tmp_path):
    rules = [cs.Resize("^m/empty/", "5,*"), cs.Resize("^m/fine/", "30", "mean")]
    result = run_cli("edit", edges, tmp_path / "o" / "m", "--resize", "^m/empty/", "5,*", "--resize", "^m/fine/",
                     "30", "mean", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    entries = {e["name"]: e for e in json.loads(result.stdout)["entries"]}
    assert entries[f"m/empty{KEY}"]["compute"] == {"kind": "chunked", "reason": None}
    assert entries[f"m/fine{KEY}"]["compute"] == {"kind": "held whole",
                                                  "reason": "resize init=mean needs the whole first axis"}
    assert "compute" not in entries[f"m/bad{KEY}"]
    off = cs.edit(edges, tmp_path / "o" / "m", rules, dry_run=True, byte_path=False).to_json()
    assert all("compute" not in e for e in off["entries"])


@pytest.mark.parametrize("byte_path", [True, False])
def test_average_of_large_finite_float64_values_is_not_called_infinite(byte_path, tmp_path):
    values = [np.array([1e300, -1e300, 3.5e38, 1.0], np.float64), np.array([3e300, 1e300, 3.5e38, 2.0], np.float64)]
    prefixes = [tf.train.Checkpoint(w=tf.Variable(v)).save(str(tmp_path / f"in{i}" / "ckpt"))
                for i, v in enumerate(values)]
    out = tmp_path / "avg" / "m"
    cs.average(prefixes, out, progress=False, memory_budget=SMALL, byte_path=byte_path)
    restored = tf.Variable(np.zeros(4, np.float64))
    tf.train.Checkpoint(w=restored).restore(str(out)).assert_consumed()
    np.testing.assert_array_equal(restored.numpy(), (values[0] + values[1]) / 2)


@pytest.mark.parametrize("rows, init", [(5, "normal:0.5"), (7, "uniform"), (2, "zeros"), (6, "zeros")])
def test_resize_of_rows_wider_than_the_budget_stays_within_it(rows, init, monkeypatch, tmp_path):
    wide = np.random.default_rng(4).normal(size=(4, 3000)).astype(np.float32)  # 12 kB rows
    source = tf.train.Checkpoint(w=tf.Variable(wide)).save(str(tmp_path / "in" / "ckpt"))
    chunk_bytes: list[int] = []
    real = chunked.output_chunks

    def spy(*args, **kwargs):
        for chunk in real(*args, **kwargs):
            chunk_bytes.append(chunk.nbytes)
            yield chunk

    monkeypatch.setattr(chunked, "output_chunks", spy)
    rule = cs.Resize("^w/", f"{rows},*", init, seed=1)
    budget = 4096
    out, _ = both_ways(lambda dest, **o: cs.edit(source, dest, [rule], **{**o, "memory_budget": budget}), tmp_path)
    assert sum(chunk_bytes) == rows * 3000 * 4 and max(chunk_bytes) <= budget
    restored = tf.Variable(np.zeros((rows, 3000), np.float32))
    tf.train.Checkpoint(w=restored).restore(out).assert_consumed()
    np.testing.assert_array_equal(restored.numpy()[: min(rows, 4)], wide[: min(rows, 4)])


@pytest.mark.parametrize("byte_path", [True, False])
@pytest.mark.parametrize("variable, init", [("counts", "uniform:1e12"), ("ids", "normal:3"), ("counts", "normal:1e10")])
def test_random_fill_that_fits_no_integer_is_refused(variable, init, byte_path, tmp_path):
    source = tf.train.Checkpoint(counts=tf.Variable(np.arange(40, dtype=np.int32).reshape(10, 4)),
                                 ids=tf.Variable(np.arange(40, dtype=np.uint32))).save(str(tmp_path / "in" / "ckpt"))
    dest = tmp_path / "out" / "m"
    with pytest.raises(UsageError, match=rf"tensor '{variable}{KEY}': resize fill {init} into u?int32 refused"):
        cs.edit(source, dest, [cs.Resize(f"^{variable}/", "400" if variable == "ids" else "40,*", init)],
                progress=False, memory_budget=SMALL, byte_path=byte_path)
    assert not dest.parent.exists() or not os.listdir(dest.parent)


def test_random_fill_into_integers_that_fit_equals_the_tf_path(tmp_path):
    source = tf.train.Checkpoint(counts=tf.Variable(np.arange(40, dtype=np.int32).reshape(10, 4)),
                                 ids=tf.Variable(np.arange(40, dtype=np.uint8))).save(str(tmp_path / "in" / "ckpt"))
    rules = [cs.Resize("^counts/", "30,*", "normal:100", seed=3), cs.Resize("^ids/", "90", "uniform:0.9")]
    out, _ = both_ways(lambda dest, **o: cs.edit(source, dest, rules, **o), tmp_path)
    counts = tf.Variable(np.zeros((30, 4), np.int32))
    ids = tf.Variable(np.zeros(90, np.uint8))
    tf.train.Checkpoint(counts=counts, ids=ids).restore(out).assert_consumed()
    np.testing.assert_array_equal(counts.numpy()[:10], np.arange(40).reshape(10, 4))
    assert np.abs(counts.numpy()[10:]).max() > 0 and not ids.numpy()[40:].any()


class Wide(tf.Module):
    """float32 values float16 cannot hold (a Keras metric's count of 203442 samples), and infinities already there."""

    def __init__(self):
        super().__init__()
        self.count = tf.Variable(tf.constant([1.0, 203442.0, -7e4, 2.0] * 4))
        self.already = tf.Variable(tf.constant([np.inf, -np.inf, np.nan, 1.5] * 4))


@pytest.mark.parametrize("byte_path", [True, False])
def test_narrowing_cast_that_overflows_to_infinity_is_refused(byte_path, tmp_path):
    """A finite value that float16 turns into Inf would load, and poison training later: refused on
    both paths, naming the tensor and the value; infinities the input already holds stay as they are."""
    source = tf.train.Checkpoint(m=Wide()).save(str(tmp_path / "wide" / "ckpt"))
    dest = tmp_path / "out" / "m"
    with pytest.raises(UsageError, match=rf"tensor 'm/count{KEY}': cast float32 -> float16 refused: "
                                         r"value 203442.0 overflows to infinity"):
        cs.edit(source, dest, [cs.Cast("float32", "float16")], progress=False, memory_budget=SMALL,
                byte_path=byte_path)
    assert not dest.parent.exists()
    out, _ = both_ways(lambda d, **o: cs.edit(source, d, [cs.Cast("float32", "float16", "^m/already/")], **o),
                       tmp_path / "kept")
    got = tf.train.load_checkpoint(out).get_tensor(f"m/already{KEY}")
    assert got.dtype == np.float16 and np.isposinf(got[0]) and np.isneginf(got[1]) and np.isnan(got[2])
    out, _ = both_ways(lambda d, **o: cs.edit(source, d, [cs.Cast("float32", "bfloat16")], **o), tmp_path / "bf")
    assert float(tf.train.load_checkpoint(out).get_tensor(f"m/count{KEY}")[1]) == 203776.0  # bfloat16 rounds
