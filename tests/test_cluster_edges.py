"""Capability: a bad ``--cluster`` / ``--scheduler`` is one line and a non-zero exit, at once, nothing written.

* ``--scheduler`` naming a port nobody listens on (or an unknown host) fails
  in about a second with one line (exit 4), where ``distributed.Client``
  alone retried for 30 seconds;
* ``--cluster`` values other than ``local`` / ``local:N`` (1 <= N <= 256: not a process per
  request on one machine) are usage errors (exit 2);
* ``--dry-run`` with ``--cluster`` plans only: no cluster is started;
* a task's error on a local cluster is the one ``ckptsurgery: error`` line, without the
  worker's "Compute Failed" log and traceback before it.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("distributed")

from ckptsurgery.errors import EXIT_IO, EXIT_USAGE, UsageError  # noqa: E402
from ckptsurgery.options import MAX_LOCAL_WORKERS, check_write_options  # noqa: E402
from conftest import run_cli  # noqa: E402
from helpers import tf_values  # noqa: E402


def closed_port() -> int:
    """A local TCP port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ckptsurgery") and ": error" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def no_checkpoint_written(folder) -> bool:
    return not folder.exists() or not any(name.endswith((".index", "checkpoint")) or ".data-" in name
                                          for name in os.listdir(folder))


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:{port}", "127.0.0.1:{port}", "tcp://nonexistent.invalid:8786"])
def test_unreachable_scheduler_fails_at_once_with_one_line(tf1_ckpt, address, tmp_path):
    address = address.format(port=closed_port())
    before = tf_values(tf1_ckpt)
    # 20 s covers the interpreter and TF import on a loaded machine; Dask's own retries took 30 s
    result = run_cli("copy", tf1_ckpt, tmp_path / "out" / "m", "--scheduler", address, timeout=20)
    assert result.returncode == EXIT_IO, result.stderr
    line = error_line(result)
    assert address in line and "cannot reach the Dask scheduler" in line
    assert no_checkpoint_written(tmp_path / "out")
    assert tf_values(tf1_ckpt) == before


@pytest.mark.parametrize("value", ["local:0", "local:abc", "remote", "local:-1", "local:"])
def test_bad_cluster_values_are_usage_errors(tf1_ckpt, value, tmp_path):
    result = run_cli("copy", tf1_ckpt, tmp_path / "out" / "m", "--cluster", value)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert value in error_line(result)
    assert not (tmp_path / "out").exists()


def test_dry_run_with_cluster_starts_no_cluster(tf1_ckpt, tmp_path):
    result = run_cli("copy", tf1_ckpt, tmp_path / "out" / "m", "--cluster", "local:2", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "Dask cluster" not in result.stderr and "dashboard" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_local_cluster_size_is_bounded():
    # checked on the options alone: were the bound missing, the CLI would start 100000 processes
    assert check_write_options({"cluster": f"local:{MAX_LOCAL_WORKERS}"})["cluster"] == f"local:{MAX_LOCAL_WORKERS}"
    for value in (f"local:{MAX_LOCAL_WORKERS + 1}", "local:100000"):
        with pytest.raises(UsageError, match=f"option 'cluster': .*1 to {MAX_LOCAL_WORKERS}.*got '{value}'"):
            check_write_options({"cluster": value})


def test_a_task_error_on_a_local_cluster_is_one_line(tmp_path):
    source = tf.train.Checkpoint(w=tf.Variable(np.array([1.0, np.nan, 2.0], np.float32))).save(
        str(tmp_path / "in" / "ckpt"))
    dest = tmp_path / "out" / "m"
    result = run_cli("edit", source, dest, "--cast", "float32:int32", "--cluster", "local:1", timeout=180)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "refused" in error_line(result)
    assert "Compute Failed" not in result.stderr and "Exception:" not in result.stderr
    assert no_checkpoint_written(tmp_path / "out")
