"""Capability: diff two checkpoints by names, dtypes, shapes and values."""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.report.diff import diff


def _save(prefix, **tensors):
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=list(tensors), shape_and_slices=[""] * len(tensors),
                      tensors=[tf.constant(v) for v in tensors.values()])
    return str(prefix)


def test_copy_is_identical_to_its_source(tf1_ckpt, tmp_path):
    out = tmp_path / "c" / "m"
    cs.copy(tf1_ckpt, out, progress=False)
    report = diff(tf1_ckpt, out)
    assert report.identical and report.equal == len(cs.open_checkpoint(tf1_ckpt))


def test_diff_reports_every_kind_of_difference(tmp_path, cli):
    a = _save(tmp_path / "a", same=np.arange(3.0), vals=np.array([1.0, 2.0, 4.0]), gone=np.zeros(2),
              shaped=np.zeros((2, 2)), text=np.array([b"x"], dtype=object), nan=np.array([np.nan, 1.0]))
    b = _save(tmp_path / "b", same=np.arange(3.0), vals=np.array([1.0, 2.5, 4.0]), new=np.zeros(1),
              shaped=np.zeros((4,)), text=np.array([b"y"], dtype=object), nan=np.array([np.nan, 1.0]))
    report = diff(a, b)
    assert report.only_in_a == ["gone"] and report.only_in_b == ["new"]
    assert report.dtype_or_shape == [{"name": "shaped", "a": "float64[2, 2]", "b": "float64[4]"}]
    by_name = {v.name: v for v in report.values}
    assert set(by_name) == {"vals", "text"}
    assert by_name["vals"].max_abs == 0.5 and by_name["vals"].differing == 1
    assert by_name["vals"].max_rel == 0.2
    assert report.equal == 2  # same, nan (NaN equals NaN)

    run = cli("diff", a, b, "--json")
    assert run.returncode == 1
    assert json.loads(run.stdout)["only_in_b"] == ["new"]
    run = cli("diff", a, a)
    assert run.returncode == 0 and "identical" in run.stdout


def test_atol_tolerates_small_differences(tmp_path):
    a = _save(tmp_path / "a", w=np.array([1.0, 2.0]))
    b = _save(tmp_path / "b", w=np.array([1.0, 2.0 + 1e-9]))
    assert not diff(a, b).identical
    assert diff(a, b, atol=1e-6).identical
