"""Capability: unchanged tensors move as bytes, every byte still checked, TensorFlow the judge.

* both ways: each surgery runs on the byte path and on the TF path
  (``byte_path=False``, like ``CKPTSURGERY_BYTE_PATH=0``); TF's reader sees
  bit-identical tensors, both outputs pass the pure-Python validator and
  ``verify``, and the byte path really copied every pass-through entry as bytes;
* the byte path's outputs restore with ``Saver``, ``tf.train.Checkpoint`` and Keras;
* corruption inside a copied tensor is refused (CRC32C on), nothing published;
  with ``--no-crc-check`` it is carried with its original CRC, so ``verify``
  and TF's reader flag it; bytes move by ``os.copy_file_range`` where the
  kernel allows, and the check then reads back what was written;
* the index we write holds the same entries TF wrote; ``--dry-run`` says which way each tensor goes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.io.index import read_index, validate_checkpoint
from ckptsurgery.io.table import parse_table
from ckptsurgery.errors import BadCheckpointError, OutputError
from ckptsurgery.report.verify import verify
from ckptsurgery.io.reader import OBJECT_GRAPH_KEY
from ckptsurgery.io.shard_writer import ShardWriter
from conftest import run_cli
from models import TinyModel, assert_same_variables, make_keras_model, restore_tf1
from helpers import copy_files, flip_in, nothing_at, tf_values


# -- helpers ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sources(tf1_ckpt, tf2_ckpt, keras_ckpt, tmp_path_factory):
    from models import write_tf1_checkpoint

    return {"tf1": tf1_ckpt, "tf1b": write_tf1_checkpoint(tmp_path_factory.mktemp("tf1b"), seed=1),
            "tf2": tf2_ckpt[0], "keras": keras_ckpt[0]}


# -- both ways ----------------------------------------------------------------------------------------
def _restore_tf1(src: dict, out: str) -> None:
    original, copied = restore_tf1(src["tf1"]), restore_tf1(out)
    assert set(original) == set(copied) and "embed/table" in copied
    for name in original:
        np.testing.assert_array_equal(original[name], copied[name], err_msg=name)


def _restore_tf2_renamed(src: dict, out: str) -> None:
    fresh = TinyModel(seed=5)
    tf.train.Checkpoint(model=fresh).restore(out).assert_consumed()
    original = TinyModel(seed=6)
    tf.train.Checkpoint(model=original).restore(src["tf2"]).assert_consumed()
    assert_same_variables(original, fresh)


def _restore_keras_model(src: dict, out: str) -> None:
    fresh, _ = make_keras_model(seed=42, compile=False)
    tf.train.Checkpoint(model=fresh).restore(out).assert_consumed()
    original, _ = make_keras_model(seed=43, compile=False)
    tf.train.Checkpoint(model=original).restore(src["keras"]).expect_partial()
    assert_same_variables(original.variables, fresh.variables)


OPERATIONS = {
    # name: (run(sources, out, **options) -> result or plan, restore check or None, graph carried as bytes)
    "tf1-copy": (lambda s, out, **o: cs.copy(s["tf1"], out, memory_budget="100B", **o), _restore_tf1, False),
    "tf1-rename-partitioned-drop-optimizer": (lambda s, out, **o: cs.edit(
        s["tf1"], out, [cs.DropOptimizer(), cs.Rename("^embed/", "emb/"), cs.Rename("^vocab$", "words")], **o),
        None, False),
    "tf1-cast-some-keep-rest": (lambda s, out, **o: cs.edit(
        s["tf1"], out, [cs.Cast("float32", "float16", "^encoder/")], memory_budget="200B", **o), None, False),
    "tf1-average": (lambda s, out, **o: cs.average([s["tf1"], s["tf1b"]], out, memory_budget="200B", **o),
                    None, False),
    "tf1-transfer": (lambda s, out, **o: cs.transfer(s["tf1b"], s["tf1"], out, **o)[0], None, False),
    "tf2-copy": (lambda s, out, **o: cs.copy(s["tf2"], out, **o), None, True),
    "tf2-rename": (lambda s, out, **o: cs.edit(s["tf2"], out, [cs.Rename("^model/head/", "model/top/")], **o),
                   _restore_tf2_renamed, False),
    "keras-drop-optimizer": (lambda s, out, **o: cs.edit(s["keras"], out, [cs.DropOptimizer()],
                                                         memory_budget="64B", **o), _restore_keras_model, False),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_surgery_gives_bit_identical_tensors_both_ways(operation, sources, tmp_path, monkeypatch):
    run, restore, graph_as_bytes = OPERATIONS[operation]
    plan = run(sources, tmp_path / "plan" / "m", dry_run=True)
    copied: list[str] = []
    add_raw = ShardWriter.add_raw

    def spy(self, name, raw):
        copied.append(name)
        return add_raw(self, name, raw)

    monkeypatch.setattr(ShardWriter, "add_raw", spy)
    by_bytes = str(tmp_path / "bytes" / "m")
    by_tf = str(tmp_path / "tf" / "m")
    run(sources, by_bytes, progress=False)
    byte_copies, copied[:] = list(copied), []
    run(sources, by_tf, progress=False, byte_path=False)
    assert copied == [], "byte_path=False must decode every tensor through TensorFlow"

    passthrough = {e.name for e in plan.entries if e.passthrough}
    assert passthrough, "every operation here keeps some tensor unchanged"
    assert set(byte_copies) - {OBJECT_GRAPH_KEY} == passthrough
    assert (OBJECT_GRAPH_KEY in byte_copies) == graph_as_bytes

    assert tf_values(by_bytes) == tf_values(by_tf)
    for out in (by_bytes, by_tf):
        validate_checkpoint(out)  # the pure-Python validator
        report = verify(out)
        assert report.ok, report.error_line()
    if restore is not None:
        restore(sources, by_bytes)


def test_switch_in_the_environment_forces_the_tf_path(tf1_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("CKPTSURGERY_BYTE_PATH", "0")
    copied = []
    monkeypatch.setattr(ShardWriter, "add_raw", lambda self, name, raw: copied.append(name))
    plan = cs.copy(tf1_ckpt, tmp_path / "p" / "m", dry_run=True)
    assert "byte path: off" in plan.render()
    cs.copy(tf1_ckpt, tmp_path / "o" / "m", progress=False)
    assert copied == []
    assert tf_values(str(tmp_path / "o" / "m")) == tf_values(tf1_ckpt)


def test_dry_run_says_which_tensors_move_as_bytes(tf1_ckpt, tmp_path):
    plan = cs.edit(tf1_ckpt, tmp_path / "o" / "m", [cs.Cast("float32", "float16", "^encoder/dense/kernel$")],
                   dry_run=True)
    # The kernel and its two Adam slots (which follow their variable) are computed, in chunks from their
    # bytes; the rest move as bytes.
    assert ("byte path: 14 tensors copied as bytes, 3 computed chunk by chunk from bytes, 0 decoded through "
            "TensorFlow") in plan.render()
    assert "encoder/dense/kernel  float16[4, 8]" in plan.render() and "[chunked]" in plan.render()
    assert plan.to_json()["byte_path"] == {"enabled": True, "bytes": 14, "chunked": 3, "decoded": {}}
    off = cs.copy(tf1_ckpt, tmp_path / "o" / "m", dry_run=True, byte_path=False)
    assert off.to_json()["byte_path"]["enabled"] is False
    assert "byte path: off" in off.render()
    result = run_cli("copy", tf1_ckpt, tmp_path / "o" / "m", "--dry-run", "--no-byte-path")
    assert result.returncode == 0 and "byte path: off" in result.stdout, result.stderr


# -- corruption ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tensor, part", [("head/kernel", 0), ("vocab", 0), ("embed/table", 1)])
def test_corrupt_passthrough_bytes_are_refused_and_nothing_published(tensor, part, tf1_ckpt, tmp_path):
    bad = copy_files(tf1_ckpt, tmp_path / "bad")
    flip_in(bad, tensor, part)
    out = tmp_path / "out" / "model.ckpt"
    with pytest.raises(BadCheckpointError, match="CRC32C") as caught:
        cs.copy(bad, out, progress=False, memory_budget="100B")
    assert caught.value.tensor.startswith(tensor)
    assert nothing_at(out.parent)


def test_no_crc_check_carries_corruption_detectably(tf1_ckpt, tmp_path, monkeypatch):
    bad = copy_files(tf1_ckpt, tmp_path / "bad")
    flip_in(bad, "head/kernel")
    out = tmp_path / "out" / "model.ckpt"
    in_kernel = []
    copy_file_range = os.copy_file_range

    def spy(*args, **kwargs):
        in_kernel.append(args[2])
        return copy_file_range(*args, **kwargs)

    monkeypatch.setattr(os, "copy_file_range", spy)
    result = run_cli("copy", bad, out, "--no-crc-check", "--no-progress")
    assert result.returncode == 0, result.stderr
    cs.copy(bad, tmp_path / "inproc" / "m", progress=False, crc_check=False)
    assert in_kernel, "on one filesystem, bytes move by copy_file_range"

    written, source = read_index(str(out)).entries["head/kernel"], read_index(bad).entries["head/kernel"]
    assert written.crc32c == source.crc32c  # the original CRC: the corruption stays detectable
    report = verify(out)
    assert [t.name for t in report.bad] == ["head/kernel"]
    with pytest.raises(Exception, match="(?i)checksum"):
        tf.train.load_checkpoint(str(out)).get_tensor("head/kernel")
    assert run_cli("verify", out).returncode == 3


@pytest.mark.parametrize("kernel", ["copy_file_range", "across filesystems"])
def test_crc_check_covers_the_bytes_written(kernel, tf1_ckpt, tmp_path, monkeypatch):
    """With the check on, what lands in the output is what is checked: a byte altered by the copy
    itself (in the kernel, or on the way through this process) is refused, nothing published."""
    import errno

    real = os.copy_file_range
    copied = []

    def faulty_copy(src_fd, dst_fd, count, offset_src=None, offset_dst=None):
        if kernel == "across filesystems":
            raise OSError(errno.EXDEV, "cross-device")  # the user-space path takes over
        n = real(src_fd, dst_fd, count, offset_src, offset_dst)
        copied.append(n)
        if count > 100:  # head/kernel's bytes: one byte goes wrong in the copy
            os.pwrite(dst_fd, bytes([os.pread(dst_fd, 1, offset_dst + 50)[0] ^ 0x01]), offset_dst + 50)
        return n

    monkeypatch.setattr(os, "copy_file_range", faulty_copy)
    if kernel == "across filesystems":
        bad = copy_files(tf1_ckpt, tmp_path / "bad")
        flip_in(bad, "head/kernel")
    else:
        bad = tf1_ckpt
    out = tmp_path / "out" / "model.ckpt"
    with pytest.raises(BadCheckpointError, match="CRC32C"):
        cs.copy(bad, out, progress=False)
    assert nothing_at(out.parent)
    assert bool(copied) == (kernel == "copy_file_range")


def test_background_check_of_a_later_piece_refuses_the_right_tensor(tf1_ckpt, tmp_path, monkeypatch):
    """A large tensor copies in pieces, each piece's read-back CRC32C checked in the background while
    the next copies: a byte gone wrong in its last piece is still refused, the error names that tensor
    (not the one copying when the check finished), and nothing is published."""
    from ckptsurgery.io import bytecopy

    entry = read_index(tf1_ckpt).entries["head/kernel"]
    monkeypatch.setattr(bytecopy, "PIECE", 16)
    monkeypatch.setattr(bytecopy, "BACKGROUND_MIN_BYTES", 0)  # tiny tensors are checked in line otherwise
    assert entry.size > 3 * 16
    real = os.copy_file_range
    pieces = []

    def faulty_copy(src_fd, dst_fd, count, offset_src=None, offset_dst=None):
        n = real(src_fd, dst_fd, count, offset_src, offset_dst)
        if entry.offset <= offset_src < entry.offset + entry.size:
            pieces.append(offset_src)
            if offset_src + n == entry.offset + entry.size:  # head/kernel's last piece
                os.pwrite(dst_fd, bytes([os.pread(dst_fd, 1, offset_dst)[0] ^ 0x01]), offset_dst)
        return n

    monkeypatch.setattr(os, "copy_file_range", faulty_copy)
    out = tmp_path / "out" / "model.ckpt"
    with pytest.raises(BadCheckpointError, match=r"head/kernel.*CRC32C"):
        cs.copy(tf1_ckpt, out, progress=False)
    assert len(pieces) == -(-entry.size // 16)
    assert nothing_at(out.parent)


def test_verify_catches_bytes_altered_on_the_way(tf1_ckpt, tmp_path, monkeypatch):
    """--verify re-reads every value: bytes altered after their check are caught before publishing.

    The read-back CRC32C checks run behind the copies; the byte is altered once
    every check of its shard has passed (just before the shard closes)."""
    from ckptsurgery.io.shard_writer import RawGroups

    real = RawGroups.wait_checks
    altered = []

    def corrupting(self):
        real(self)
        for entry in self.entries.get(self._group, []):
            if entry.name == "head/kernel" and self._out is not None:
                os.pwrite(self._out.fd, b"\xff", entry.offset + 1)
                altered.append(entry.name)

    monkeypatch.setattr(RawGroups, "wait_checks", corrupting)
    out = tmp_path / "out" / "model.ckpt"
    with pytest.raises(OutputError, match="verification failed: tensor 'head/kernel'"):
        cs.copy(tf1_ckpt, out, progress=False, verify=True, memory_budget="200B")
    assert altered and nothing_at(out.parent)


# -- the index we write ----------------------------------------------------------------------------
def test_our_index_encodes_every_entry_as_tensorflow_did(tf1_ckpt, tf2_ckpt):
    from tensorflow.core.protobuf import tensor_bundle_pb2

    from ckptsurgery.io.index_writer import index_bytes

    for prefix in (tf1_ckpt, tf2_ckpt[0]):
        index = read_index(prefix)
        entries = list(index.entries.values()) + [s for parts in index.slice_entries.values() for s in parts]
        theirs = dict(parse_table(Path(prefix + ".index").read_bytes()))
        ours = dict(parse_table(index_bytes(index.num_shards, entries)))
        assert ours.keys() == theirs.keys()
        for key in theirs:
            kind = tensor_bundle_pb2.BundleHeaderProto if key == b"" else tensor_bundle_pb2.BundleEntryProto
            want, got = kind(), kind()
            want.ParseFromString(theirs[key])
            got.ParseFromString(ours[key])
            assert got == want, key


# -- no TensorFlow when no tensor is decoded ------------------------------------------------------
NO_TF_SCRIPT = """
import sys
import ckptsurgery as cs
from ckptsurgery.io.publish import commit as publish
state_files = []
publish.update_state_file = state_files.append  # the folder's state file is written through TF (publish.py)
src1, src2, out = sys.argv[1:4]
cs.inspect(src1)
cs.copy(src1, out + "/copy/m", progress=False)
cs.edit(src1, out + "/slim/m", [cs.DropOptimizer(), cs.Rename("^embed/", "emb/")], progress=False)
cs.edit(src2, out + "/tf2/m", [cs.Rename("^model/head/", "model/top/")], progress=False)  # object graph rewritten
assert len(state_files) == 3, state_files
print("tensorflow imported:", "tensorflow" in sys.modules)
"""


def test_pass_through_plans_run_without_importing_tensorflow(tf1_ckpt, tf2_ckpt, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT, tf1_ckpt, tf2_ckpt[0], str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tensorflow imported: False" in result.stdout
    assert tf_values(str(tmp_path / "copy" / "m")) == tf_values(tf1_ckpt)
    fresh = TinyModel(seed=5)
    tf.train.Checkpoint(model=fresh).restore(str(tmp_path / "tf2" / "m")).assert_consumed()
    assert_same_variables(tf2_ckpt[1], fresh)


def test_our_protos_declare_tensorflows_fields():
    from tensorflow.core.protobuf import tensor_bundle_pb2, trackable_object_graph_pb2
    from tensorflow.python.training import checkpoint_state_pb2

    from ckptsurgery.io.protos import bundle_protos, checkpoint_state_class, object_graph_protos

    def fields(descriptor, seen=None) -> dict:
        out = {}
        for f in descriptor.fields:
            kind = f.message_type.name if f.message_type else f.type
            if f.name == "dtype":
                kind = "varint"  # TF's DataType enum, which we declare as its number
            out[f.number] = (f.name, kind, f.is_repeated)
            if f.message_type is not None and f.message_type.full_name != descriptor.full_name:
                out[f.number] += (fields(f.message_type),)
        return out

    pairs = [(tensor_bundle_pb2.BundleHeaderProto, bundle_protos().BundleHeaderProto),
             (tensor_bundle_pb2.BundleEntryProto, bundle_protos().BundleEntryProto),
             (trackable_object_graph_pb2.TrackableObjectGraph, object_graph_protos().TrackableObjectGraph),
             (checkpoint_state_pb2.CheckpointState, checkpoint_state_class())]
    for theirs, ours in pairs:
        assert fields(ours.DESCRIPTOR) == fields(theirs.DESCRIPTOR), theirs.DESCRIPTOR.full_name


def test_corrupt_object_graph_is_refused_whether_carried_or_rewritten(tf2_ckpt, tmp_path):
    bad = copy_files(tf2_ckpt[0], tmp_path / "bad")
    flip_in(bad, OBJECT_GRAPH_KEY)
    with pytest.raises(BadCheckpointError, match="CRC32C") as carried:
        cs.copy(bad, tmp_path / "copy" / "m", progress=False)
    with pytest.raises(BadCheckpointError, match="object graph") as rewritten:
        cs.edit(bad, tmp_path / "edit" / "m", [cs.Rename("^model/head/", "model/top/")], progress=False)
    assert carried.value.tensor == rewritten.value.tensor == OBJECT_GRAPH_KEY
    for folder in (tmp_path / "copy", tmp_path / "edit"):
        assert not folder.exists() or list(folder.iterdir()) == [], "nothing may be published"


def test_cli_inspect_and_dry_run_import_no_tensorflow(tf1_ckpt, tmp_path):
    """The CLI imports TF only when a tensor is decoded."""
    import subprocess
    import sys

    from conftest import ROOT

    script = ("import sys; from ckptsurgery.cli import main; rc = main(sys.argv[1:]); "
              "print('tensorflow imported:', 'tensorflow' in sys.modules); sys.exit(rc)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for argv in (["inspect", tf1_ckpt], ["copy", tf1_ckpt, str(tmp_path / "o" / "m"), "--dry-run"]):
        result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "tensorflow imported: False" in result.stdout, argv


def test_large_tensors_keep_their_block_offset_for_shared_extents(tmp_path):
    """On XFS/btrfs copy_file_range shares blocks only between block-aligned offsets: a tensor of
    1 MiB or more lands at its input offset modulo 4 KiB (a hole before it), so dropping a tensor
    ahead of it does not force a real copy; small tensors stay packed; TF reads every value back."""
    src = str(tmp_path / "in" / "model.ckpt")
    tensors = {"a_odd": np.arange(3, dtype=np.float32), "b_drop": np.arange(2, dtype=np.float32),
               "c_big": np.linspace(0, 1, 300_000, dtype=np.float32)}
    tf.raw_ops.SaveV2(prefix=src, tensor_names=list(tensors), shape_and_slices=[""] * 3,
                      tensors=[tf.constant(v) for v in tensors.values()])
    out = tmp_path / "out" / "model.ckpt"
    cs.edit(src, out, [cs.Drop("^b_drop$")], progress=False)
    before, after = read_index(src).entries, read_index(str(out)).entries
    assert before["c_big"].offset == 20 and after["c_big"].offset % 4096 == 20
    assert after["a_odd"].offset == 0
    got, want = tf_values(str(out)), tf_values(src)
    assert got == {k: v for k, v in want.items() if k != "b_drop"}
    assert not verify(str(out)).bad
