"""TensorFlow's own stderr never reaches the user: a success prints nothing on stderr, an error one line.

TensorFlow logs ``oneDNN supports DT_HALF only on platforms with AVX-512`` at the
first float16 op when its oneDNN ops are on and the CPU lacks AVX-512 (on by
default on many x86 machines; forced on here with ``TF_ENABLE_ONEDNN_OPTS=1``).
That is long after the import, so hiding stderr during the import is not enough.
``CKPTSURGERY_TF_LOGS=1`` shows TF's logs again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT


def has_avx512() -> bool:
    try:
        return "avx512" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: no TF_CPP_MIN_LOG_LEVEL of ours, oneDNN ops on, stderr not a tty."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CKPTSURGERY_TF_LOGS")}
    full_env.update(PYTHONPATH=str(ROOT), TF_ENABLE_ONEDNN_OPTS="1", **env)
    return subprocess.run([sys.executable, "-m", "ckptsurgery", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=full_env)


@pytest.fixture(scope="module")
def half_ckpt(tmp_path_factory) -> str:
    prefix = str(tmp_path_factory.mktemp("half") / "ckpt")
    tf.train.Checkpoint(h=tf.Variable(np.linspace(0, 1, 12, dtype=np.float16).reshape(3, 4)),
                        f=tf.Variable(np.arange(5, dtype=np.float32))).write(prefix)
    return prefix


def test_float16_copy_and_cast_print_nothing_on_stderr(half_ckpt, tmp_path):
    # --tf-path: the float16 tensor goes through TF's ops (the byte path would copy its bytes untouched).
    copied = run("copy", "--tf-path", half_ckpt, tmp_path / "copy" / "ckpt")
    assert copied.returncode == 0 and copied.stderr == ""
    cast = run("edit", half_ckpt, tmp_path / "cast" / "ckpt", "--cast", "float16:float32")
    assert cast.returncode == 0 and cast.stderr == ""
    back = tf.train.load_checkpoint(str(tmp_path / "cast" / "ckpt"))
    original = tf.train.load_checkpoint(half_ckpt)
    key = "h/.ATTRIBUTES/VARIABLE_VALUE"
    np.testing.assert_array_equal(back.get_tensor(key), original.get_tensor(key).astype(np.float32))


def test_float16_error_is_one_line(half_ckpt, tmp_path):
    dest = tmp_path / "out" / "ckpt"
    assert run("copy", half_ckpt, dest).returncode == 0
    exists = run("edit", half_ckpt, dest, "--cast", "float16:float32")  # refused before any tensor is read
    assert exists.returncode == 4
    assert exists.stderr.splitlines() == [f"ckptsurgery: error: {dest}: a checkpoint already exists here; "
                                          f"pass --force to replace it"]
    # A failure after the float16 tensors went through TF (read, cast, saved): a full disk at the merge.
    full = run("edit", half_ckpt, tmp_path / "full" / "ckpt", "--cast", "float16:float32",
               CKPTSURGERY_FAULT="enospc@before-merge")
    assert full.returncode == 4
    assert full.stderr.splitlines() == [f"ckptsurgery: error: {tmp_path / 'full' / 'ckpt'}: disk full "
                                        f"(no space left on device); nothing was published"]


@pytest.mark.skipif(has_avx512(), reason="TF logs nothing about float16 on a CPU with AVX-512")
def test_tf_logs_env_shows_tensorflow_logs_again(half_ckpt, tmp_path):
    shown = run("copy", "--tf-path", half_ckpt, tmp_path / "out" / "ckpt", CKPTSURGERY_TF_LOGS="1")
    assert shown.returncode == 0
    assert "oneDNN supports DT_HALF" in shown.stderr
