"""Streaming verification: ``verify`` and ``--verify`` hold a budget, never a whole tensor.

* ``verify`` of a V2 bundle reads each tensor's byte ranges in pieces, checks
  their CRC32C and never calls TensorFlow's reader, with the same report as the
  TF path (``CKPTSURGERY_BYTE_PATH=0``) for good and corrupt checkpoints;
* ``verify --against`` compares piece by piece with the same counts as the
  whole-tensor comparison (one element, NaN payloads, -0.0, bfloat16, complex,
  strings, a partitioned variable against a whole one), both ways;
* ``--verify`` on copy, cast and average compares byte copies and chunked
  computations piece by piece (no whole recomputation) and still catches bytes
  altered after writing, publishing nothing.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.errors import OutputError
from ckptsurgery.execute import executor
from ckptsurgery.io.bytecopy import ShardInput
from ckptsurgery.io.reader import OBJECT_GRAPH_KEY, Checkpoint
from ckptsurgery.io.shard_writer import RawGroups, ShardWriter
from ckptsurgery.report.verify import BAD, DIFFERENT, OK, verify
from conftest import run_cli
from helpers import copy_files, flip_in, nothing_at
from models import write_tf1_checkpoint

TINY = "64B"  # pieces of 32 bytes alone, 8 with --against: every tensor in many pieces


def save(prefix, tensors: dict[str, np.ndarray]) -> str:
    """A checkpoint written by TensorFlow's SaveV2 op, with exactly these tensors."""
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    return str(prefix)


def tf_path_report(monkeypatch, *args, **kwargs) -> dict:
    """The report of today's TF path (every tensor read whole through TF's reader)."""
    with monkeypatch.context() as m:
        m.setenv("CKPTSURGERY_BYTE_PATH", "0")
        return verify(*args, **kwargs).to_json()


@pytest.fixture
def no_tf_reads(monkeypatch):
    """Fail any whole-tensor read through TensorFlow's reader (the byte path must not need one)."""
    reads: list[str] = []
    real = Checkpoint.read

    def read(self, name):
        reads.append(name)
        return real(self, name)

    monkeypatch.setattr(Checkpoint, "read", read)
    return reads


@pytest.fixture
def read_sizes(monkeypatch):
    """The size of every ranged read of a data shard."""
    sizes: list[int] = []
    real = ShardInput.read

    def read(self, offset, size):
        sizes.append(size)
        return real(self, offset, size)

    monkeypatch.setattr(ShardInput, "read", read)
    return sizes


@pytest.fixture
def no_whole_recompute(monkeypatch):
    """--verify must not recompute a byte-path entry whole (``produce``): fail the test if it does."""
    def produce(plan, entry, *args):
        raise AssertionError(f"{entry.name} recomputed whole")

    monkeypatch.setattr(executor, "produce", produce)


@pytest.fixture(scope="module")
def tf1b(tmp_path_factory) -> str:
    return write_tf1_checkpoint(tmp_path_factory.mktemp("tf1b"), seed=1)


# -- verify: good checkpoints -------------------------------------------------------------------------
def test_good_checkpoints_stream_without_tf_and_match_the_tf_path(tf1_ckpt, tf2_ckpt, keras_ckpt, monkeypatch,
                                                                  no_tf_reads, read_sizes):
    for prefix in (tf1_ckpt, tf2_ckpt[0], keras_ckpt[0]):
        want = tf_path_report(monkeypatch, prefix)
        assert want["ok"] and no_tf_reads  # the TF path reads every tensor whole
        no_tf_reads.clear()
        assert verify(prefix).to_json() == want
        read_sizes.clear()
        assert verify(prefix, memory_budget=TINY).to_json() == want
        assert no_tf_reads == [], "the byte path read a tensor whole through TensorFlow"
        index = cs.open_checkpoint(prefix).bundle_index
        graph = index.entries.get(OBJECT_GRAPH_KEY)  # decoded whole: metadata, not a weight
        assert read_sizes and max(read_sizes) <= 32 or read_sizes.count(max(read_sizes)) == 1 == (graph is not None)
        assert sorted(read_sizes)[-2] <= 32, "a piece larger than the budget allows"
        stored = [e for e in index.entries.values() if e.has_data] + [p for ps in index.slice_entries.values() for p in ps]
        assert sum(read_sizes) == sum(e.size for e in stored)  # every byte, once


def test_cli_memory_budget(tf1_ckpt):
    result = run_cli("verify", tf1_ckpt, "--memory-budget", TINY, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"]
    result = run_cli("verify", tf1_ckpt, "--memory-budget", "lots")
    assert result.returncode == 2 and "memory_budget" in result.stderr.replace("-", "_")


# -- verify: corruption ----------------------------------------------------------------------------------
def test_flipped_bytes_are_reported_as_the_tf_path_does(tf1_ckpt, tmp_path, monkeypatch, no_tf_reads):
    bad = copy_files(tf1_ckpt, tmp_path / "bad")
    flip_in(bad, "encoder/dense/kernel")
    flip_in(bad, "vocab")  # a string tensor: its CRC32C covers the length table and the bytes
    flip_in(bad, "embed/table", slice_number=2)  # one part of a partitioned variable
    want = tf_path_report(monkeypatch, bad)
    no_tf_reads.clear()
    for budget in ("128MB", TINY):
        got = verify(bad, memory_budget=budget).to_json()
        assert got["bad"] == want["bad"] == ["embed/table", "encoder/dense/kernel", "vocab"]
        status = {t["name"]: t["status"] for t in got["tensors"]}
        assert status == {t["name"]: t["status"] for t in want["tensors"]}
        assert all(s == OK for n, s in status.items() if n not in got["bad"])
        detail = {t["name"]: t["detail"] for t in got["tensors"]}
        for name in ("encoder/dense/kernel", "vocab"):  # TF's own words, numbers included
            assert detail[name] == {t["name"]: t["detail"] for t in want["tensors"]}[name]
        assert "Checksum does not match" in detail["embed/table"]
        assert verify(bad, memory_budget=budget).exit_code == 3
    assert no_tf_reads == []


# -- verify --against --------------------------------------------------------------------------------------
def nan(payload: int) -> np.float32:
    return np.array([0x7FC00000 | payload], np.uint32).view(np.float32)[0]


def test_against_counts_like_the_whole_tensor_comparison(tmp_path, monkeypatch, no_tf_reads):
    rng = np.random.default_rng(0)
    big = rng.normal(size=(50, 7)).astype(np.float32)
    base = {
        "big": big, "nan": np.array([nan(1), 0.0, 1.5, nan(3)], np.float32), "zero": np.zeros(6, np.float32),
        "bf": np.array([np.nan, 2.0, 3.0], tf.bfloat16.as_numpy_dtype),
        "cx": np.array([1 + 2j, np.nan, 3j], np.complex128), "ints": np.arange(40, dtype=np.int64),
        "s": np.array([b"a", b"\x00b", b"ccc"], dtype=object), "empty": np.zeros((3, 0), np.float32),
    }
    changed = dict(base, big=big.copy(), nan=np.array([nan(7), 0.0, 1.5, nan(9)], np.float32),  # payloads: equal
                   zero=np.array([0, 0, -0.0, 0, 0, -0.0], np.float32),  # -0.0: other bits, differs
                   bf=np.array([np.nan, 2.0, 3.015625], tf.bfloat16.as_numpy_dtype),
                   ints=np.arange(40, dtype=np.int64) * np.array([1] * 39 + [2]),
                   s=np.array([b"a", b"b", b"ccc"], dtype=object))
    changed["big"][31, 4] = np.nextafter(big[31, 4], np.float32(np.inf))  # one ulp in the middle
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = save(tmp_path / "a" / "c", base), save(tmp_path / "b" / "c", changed)
    for x, y in ((a, b), (b, a)):
        want = tf_path_report(monkeypatch, x, against=y)
        no_tf_reads.clear()
        for budget in ("128MB", TINY):
            got = verify(x, against=y, memory_budget=budget).to_json()
            assert got == want
            assert no_tf_reads == []  # differing strings are decoded whole, from their bytes, to count elements
            no_tf_reads.clear()
        detail = {t["name"]: (t["status"], t["detail"]) for t in got["tensors"]}
        assert detail["big"] == (DIFFERENT, "1 of 350 elements differ")
        assert detail["nan"] == (OK, "") and detail["cx"] == (OK, "") and detail["empty"] == (OK, "")
        assert detail["zero"] == (DIFFERENT, "2 of 6 elements differ")
        assert detail["bf"] == (DIFFERENT, "1 of 3 elements differ") and detail["s"] == (DIFFERENT, "1 of 3 elements differ")
        assert detail["ints"] == (DIFFERENT, "1 of 40 elements differ")


def test_against_partitioned_and_whole_and_a_bad_other(tf1_ckpt, tmp_path, monkeypatch, no_tf_reads):
    ckpt = cs.open_checkpoint(tf1_ckpt)
    values = {t.name: ckpt.read(t.name) for t in ckpt}
    values["embed/table"] = values["embed/table"].copy()
    values["embed/table"][7, 1] += 1  # in the third part of the partitioned original
    (tmp_path / "w").mkdir()
    whole = save(tmp_path / "w" / "c", values)  # every variable whole
    for x, y in ((whole, tf1_ckpt), (tf1_ckpt, whole)):
        want = tf_path_report(monkeypatch, x, against=y)
        no_tf_reads.clear()
        got = verify(x, against=y, memory_budget=TINY).to_json()
        assert got == want and got["differences"] == ["embed/table"]
        assert no_tf_reads == []
    flip_in(whole, "head/kernel")  # the other side unreadable: a difference; this side bad: exit 3
    for x, y, status in ((tf1_ckpt, whole, DIFFERENT), (whole, tf1_ckpt, BAD)):
        want = tf_path_report(monkeypatch, x, against=y)
        got = verify(x, against=y, memory_budget=TINY).to_json()
        assert {t["name"]: t["status"] for t in got["tensors"]} == {t["name"]: t["status"] for t in want["tensors"]}
        assert {t["name"]: t["status"] for t in got["tensors"]}["head/kernel"] == status


# -- --verify on writes -----------------------------------------------------------------------------------------
def _writes(tf1_ckpt, tf1b):
    return {
        "copy": lambda out, **o: cs.copy(tf1_ckpt, out, **o),
        "cast": lambda out, **o: cs.edit(tf1_ckpt, out, [cs.Cast("float32", "bfloat16")], **o),
        "average": lambda out, **o: cs.average([tf1_ckpt, tf1b], out, **o),
    }


@pytest.mark.parametrize("operation", ["copy", "cast", "average"])
def test_write_verify_streams_byte_path_entries(operation, tf1_ckpt, tf1b, tmp_path, monkeypatch, read_sizes):
    produced: list[str] = []
    real = executor.produce
    monkeypatch.setattr(executor, "produce", lambda plan, entry, *a: produced.append(entry.name) or real(plan, entry, *a))
    out = tmp_path / "out" / "model.ckpt"
    _writes(tf1_ckpt, tf1b)[operation](out, progress=False, verify=True, memory_budget="256B")
    assert verify(out).ok
    assert produced == []  # every entry went by the byte path: none recomputed whole for --verify
    assert max(read_sizes) <= 8 << 20


@pytest.mark.parametrize("operation", ["copy", "cast", "average"])
def test_write_verify_catches_bytes_altered_after_writing(operation, tf1_ckpt, tf1b, tmp_path, monkeypatch,
                                                         no_whole_recompute):
    """A byte altered once every write-time check passed: the read-back CRC32C of --verify catches it."""
    real = RawGroups.wait_checks
    altered = []

    def corrupting(self):
        real(self)
        for entry in self.entries.get(self._group, []):
            if entry.name == "encoder/dense/kernel" and self._out is not None:
                os.pwrite(self._out.fd, b"\xff", entry.offset + 5)
                altered.append(entry.name)

    monkeypatch.setattr(RawGroups, "wait_checks", corrupting)
    out = tmp_path / "out" / "model.ckpt"
    with pytest.raises(OutputError, match="verification failed: tensor 'encoder/dense/kernel' does not read back"):
        _writes(tf1_ckpt, tf1b)[operation](out, progress=False, verify=True, memory_budget="256B")
    assert altered and nothing_at(out.parent)


def test_write_verify_catches_wrong_values_under_a_valid_crc(tf1_ckpt, tf1b, tmp_path, monkeypatch,
                                                            no_whole_recompute):
    """Bytes that read back intact but are not the plan's: another tensor's copied, a chunk computed wrong."""
    add_raw, add_stream = ShardWriter.add_raw, ShardWriter.add_stream

    def swapped_raw(self, name, raw):
        if name == "head/kernel":  # the same size, its own valid CRC32C
            index = raw.index
            other = index.entries["head/kernel/Adam"]
            raw = type(raw)(index, other, (other,))
        return add_raw(self, name, raw)

    def wrong_chunks(self, name, entry, chunks):
        if name == "encoder/dense/kernel":
            chunks = (chunk + np.asarray(1, chunk.dtype) if i == 1 else chunk for i, chunk in enumerate(chunks))
        return add_stream(self, name, entry, chunks)

    monkeypatch.setattr(ShardWriter, "add_raw", swapped_raw)
    out = tmp_path / "out" / "model.ckpt"
    with pytest.raises(OutputError, match="verification failed: tensor 'head/kernel' differs from the plan"):
        cs.copy(tf1_ckpt, out, progress=False, verify=True, memory_budget="256B")
    assert nothing_at(out.parent)
    cs.copy(tf1_ckpt, out, progress=False, memory_budget="256B")  # unverified, the swap goes unnoticed
    assert not verify(out, against=tf1_ckpt).ok

    monkeypatch.setattr(ShardWriter, "add_raw", add_raw)
    monkeypatch.setattr(ShardWriter, "add_stream", wrong_chunks)
    out = tmp_path / "out2" / "model.ckpt"
    with pytest.raises(OutputError, match="verification failed: tensor 'encoder/dense/kernel' differs from the plan"):
        cs.average([tf1_ckpt, tf1b], out, progress=False, verify=True, memory_budget="256B")
    assert nothing_at(out.parent)
