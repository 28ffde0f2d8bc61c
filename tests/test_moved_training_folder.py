"""Capability: ``--last N DIR`` on a copied or uploaded training folder reads that folder's checkpoints.

A TF1 ``Saver`` writes absolute paths in the folder's ``checkpoint`` state
file.  Once the folder is copied elsewhere (or uploaded to ``gs://``), those
paths still name the original folder on the training machine: ``--last``
must take the checkpoints of those names *inside the folder given*, as a
single state-file lookup already does, never silently average the original
run's (possibly newer or retrained) files, nor find none at all.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.io.resolve import last_checkpoints
from conftest import run_cli


def save_run(folder: Path, scale: float) -> list[str]:
    """Three ``Saver`` checkpoints of one variable ``w`` = step * scale (absolute paths in the state file)."""
    prefixes = []
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable(np.zeros(4, np.float32), name="w")
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            for step in (1, 2, 3):
                sess.run(w.assign(np.full(4, step * scale, np.float32)))
                prefixes.append(saver.save(sess, str(folder / "model.ckpt"), global_step=step))
    state = (folder / "checkpoint").read_text()
    assert f'"{folder}/model.ckpt-3"' in state, "Saver writes absolute paths"
    return prefixes


def moved_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run copied to ``copy``, then the original retrained (same names, other values)."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    save_run(original, 1.0)
    shutil.copytree(original, copy)
    save_run(original, 100.0)
    return original, copy


def w_of(prefix: str) -> np.ndarray:
    return tf.train.load_checkpoint(prefix).get_tensor("w")


def test_last_of_a_copied_local_folder_reads_the_copy(tmp_path):
    _, copy = moved_run(tmp_path)
    assert last_checkpoints(copy, 2) == [str(copy / "model.ckpt-2"), str(copy / "model.ckpt-3")]
    out = tmp_path / "avg" / "m"
    result = run_cli("average", "--last", "3", copy, "--out", out)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(w_of(str(out)), np.full(4, 2.0, np.float32))


def test_last_of_an_uploaded_folder_reads_the_remote_files(tmp_path):
    _, copy = moved_run(tmp_path)
    url = f"ram://uploaded-{uuid.uuid4().hex[:8]}"
    tf.io.gfile.makedirs(url)
    for file in copy.iterdir():
        tf.io.gfile.copy(str(file), f"{url}/{file.name}")
    assert last_checkpoints(url, 3) == [f"{url}/model.ckpt-{step}" for step in (1, 2, 3)]
    out = tmp_path / "avg" / "m"
    cs.average(last_checkpoints(url, 3), out, progress=False)
    np.testing.assert_array_equal(w_of(str(out)), np.full(4, 2.0, np.float32))
