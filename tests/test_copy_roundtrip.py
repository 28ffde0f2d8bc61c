"""Capability: copy any checkpoint graph-free and restore the copy into real TF objects."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

import ckptsurgery as cs
from models import TinyModel, assert_same_variables, make_keras_model, restore_tf1


def assert_same_bundle(a: str, b: str) -> None:
    """tf.train.load_checkpoint sees the same names, shapes, dtypes and values in both."""
    ra, rb = tf.train.load_checkpoint(a), tf.train.load_checkpoint(b)
    assert ra.get_variable_to_shape_map() == rb.get_variable_to_shape_map()
    assert ra.get_variable_to_dtype_map() == rb.get_variable_to_dtype_map()
    for name in ra.get_variable_to_shape_map():
        x, y = ra.get_tensor(name), rb.get_tensor(name)
        if isinstance(x, bytes) or getattr(x, "dtype", None) == object:
            assert np.array_equal(np.asarray(x, dtype=object), np.asarray(y, dtype=object)), name
        else:
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), name


def test_tf1_saver_checkpoint_round_trips_into_saver_restore(tf1_ckpt, tmp_path):
    out = tmp_path / "out" / "model.ckpt"
    result = cs.copy(tf1_ckpt, out, memory_budget="300B", progress=False)  # tiny budget: many groups
    assert result.prefix == str(out)
    assert_same_bundle(tf1_ckpt, str(out))
    original, copied = restore_tf1(tf1_ckpt), restore_tf1(str(out))
    assert set(original) == set(copied) and "embed/table" in copied and "vocab" in copied
    for name in original:
        np.testing.assert_array_equal(original[name], copied[name], err_msg=name)
    assert tf.train.latest_checkpoint(str(out.parent)) == str(out)
    shards = [f for f in os.listdir(out.parent) if ".data-" in f]
    assert len(shards) > 1, "a 300-byte budget must produce several shards"


def test_tf1_checkpoint_reader_presents_partitioned_variable_whole(tf1_ckpt):
    ckpt = cs.open_checkpoint(tf1_ckpt)
    table = ckpt.info("embed/table")
    assert table.shape == (10, 3) and table.partitioned
    assert ckpt.read("embed/table").shape == (10, 3)
    assert ckpt.kind == "tf1-name"
    assert ckpt.info("vocab").dtype == "string"
    assert list(ckpt.read("vocab")) == [b"<pad>", b"hello", "wörld".encode()]
    assert ckpt.info("global_step").dtype == "int64"


def test_tf2_checkpoint_round_trips_with_assert_consumed(tf2_ckpt, tmp_path):
    prefix, model = tf2_ckpt
    out = tmp_path / "copy" / "ckpt-1"
    cs.copy(prefix, out, progress=False)
    assert_same_bundle(prefix, str(out))
    fresh = TinyModel(seed=5)
    tf.train.Checkpoint(model=fresh).restore(str(out)).assert_consumed()
    assert_same_variables(model, fresh)
    assert fresh.scale.dtype == tf.bfloat16


def test_keras_model_with_optimizer_round_trips(keras_ckpt, tmp_path):
    prefix, model, optimizer = keras_ckpt
    out = tmp_path / "k" / "keras-1"
    cs.copy(prefix, out, progress=False, workers=2, memory_budget="64B")
    fresh_model, fresh_opt = make_keras_model(seed=3)
    fresh_opt.build(fresh_model.trainable_variables)
    tf.train.Checkpoint(model=fresh_model, optimizer=fresh_opt).restore(str(out)).assert_consumed()
    assert_same_variables(model.variables, fresh_model.variables)
    assert_same_variables(optimizer.variables, fresh_opt.variables)


def test_saved_model_folder_is_opened_and_copied(saved_model, tmp_path):
    folder, model = saved_model
    ckpt = cs.open_checkpoint(folder)
    assert ckpt.prefix.endswith(os.path.join("variables", "variables"))
    out = tmp_path / "sm" / "ckpt"
    cs.copy(folder, out, progress=False)
    fresh = TinyModel(seed=11)
    tf.train.Checkpoint(fresh).read(str(out)).assert_existing_objects_matched()
    assert_same_variables(model, fresh)


@pytest.mark.parametrize("how", ["prefix", "folder", "state_file", "index_file", "data_file"])
def test_checkpoint_opens_from_any_of_its_paths(tf1_ckpt, how):
    folder = os.path.dirname(tf1_ckpt)
    path = {
        "prefix": tf1_ckpt,
        "folder": folder,
        "state_file": os.path.join(folder, "checkpoint"),
        "index_file": tf1_ckpt + ".index",
        "data_file": tf1_ckpt + ".data-00000-of-00001",
    }[how]
    assert cs.open_checkpoint(path).prefix == tf1_ckpt


def test_folder_without_state_file_opens_newest_step(tmp_path):
    for step in (5, 40, 300):
        tf.train.Checkpoint(v=tf.Variable(float(step))).write(str(tmp_path / f"model.ckpt-{step}"))
    assert cs.open_checkpoint(tmp_path).prefix == str(tmp_path / "model.ckpt-300")


def test_every_dtype_tf_stores_round_trips(tmp_path):
    values = {
        "f16": np.array([1.5, -2.25], np.float16), "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f64": np.array([np.pi]), "bf16": tf.constant([0.5, 3.0], tf.bfloat16).numpy(),
        "i8": np.array([-3, 4], np.int8), "i16": np.array([300], np.int16), "i32": np.array([-7], np.int32),
        "i64": np.array([2**40], np.int64), "u8": np.array([255], np.uint8), "u16": np.array([65535], np.uint16),
        "u32": np.array([2**32 - 1], np.uint32), "u64": np.array([2**63], np.uint64),
        "bool": np.array([True, False]), "c64": np.array([1 + 2j], np.complex64),
        "c128": np.array([3 - 4j], np.complex128), "str": np.array([b"a", b"", b"\x00\xff"], dtype=object),
        "scalar": np.float32(4.0), "empty": np.zeros((0, 3), np.float32),
    }
    src = str(tmp_path / "all")
    tf.raw_ops.SaveV2(prefix=src, tensor_names=list(values), shape_and_slices=[""] * len(values),
                      tensors=[tf.constant(v) for v in values.values()])
    out = tmp_path / "out" / "all"
    cs.copy(src, out, progress=False, memory_budget="16B")
    assert_same_bundle(src, str(out))
    ckpt = cs.open_checkpoint(out)
    assert ckpt.info("bf16").dtype == "bfloat16" and ckpt.info("c128").dtype == "complex128"


def test_partitioned_variable_is_streamed_part_by_part_and_keeps_its_parts(tf1_ckpt, tmp_path):
    from ckptsurgery.io.index import read_index

    out = tmp_path / "parts" / "model.ckpt"
    cs.copy(tf1_ckpt, out, progress=False, memory_budget="40B")  # every part in a group of its own
    source_parts, copied_parts = read_index(tf1_ckpt).slice_entries, read_index(str(out)).slice_entries
    assert set(copied_parts) == set(source_parts) and "embed/table" in copied_parts
    for name in source_parts:
        assert sorted(e.slices for e in copied_parts[name]) == sorted(e.slices for e in source_parts[name]), name
    # Renamed there and back, the parts still restore into the real partitioned variable.
    there, back = tmp_path / "there" / "m", tmp_path / "back" / "m"
    cs.edit(out, there, [cs.Rename("^embed/", "emb/")], progress=False)
    assert "emb/table" in read_index(str(there)).slice_entries
    cs.edit(there, back, [cs.Rename("^emb/", "embed/")], progress=False)
    original, restored = restore_tf1(tf1_ckpt), restore_tf1(str(back))
    for name, value in original.items():
        np.testing.assert_array_equal(value, restored[name], err_msg=name)
