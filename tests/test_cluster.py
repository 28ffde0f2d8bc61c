"""Capability: the shard groups run as tasks on a Dask cluster; same answer, any engine.

A real ``distributed.LocalCluster`` of two worker processes (one thread each)
is started once for the module.  Each write runs twice, in this process and
on the cluster, with the same plan and budget; the outputs' tensors must be
bit-identical and their published indexes must list the same entries (name,
dtype, shape, size, CRC32C); results are restored with real TF.  The slow
tests kill worker processes by pid at a fault point (``io/faults.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

distributed = pytest.importorskip("distributed")

import ckptsurgery as cs  # noqa: E402
from ckptsurgery.errors import OutputError  # noqa: E402
from ckptsurgery.execute.tasks import GroupTask, run_group_task  # noqa: E402
from ckptsurgery.io.index import read_index  # noqa: E402
from ckptsurgery.merge_methods import apply_method, derive_seed  # noqa: E402
from ckptsurgery.plan.merge import MethodRule, Take  # noqa: E402
from ckptsurgery.plan.entries import plan_edit  # noqa: E402
from conftest import ROOT, run_cli  # noqa: E402
from helpers import copy_files, flip_in, nothing_at, tf_values  # noqa: E402
from models import TinyModel, restore_tf1, write_tf1_checkpoint  # noqa: E402

KEY = "/.ATTRIBUTES/VARIABLE_VALUE"
BUDGET = "300B"  # several tasks even for the tiny test models


@pytest.fixture(scope="module")
def scheduler():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=40) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def tf1_runs(tmp_path_factory) -> list[str]:
    return [write_tf1_checkpoint(tmp_path_factory.mktemp(f"tf1_{i}"), steps=i + 1, seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> list[str]:
    out = []
    for seed in range(3):
        folder = tmp_path_factory.mktemp(f"tiny{seed}")
        out.append(tf.train.Checkpoint(model=TinyModel(seed)).save(str(folder / "ckpt")))
    return out


def index_entries(prefix: str) -> dict:
    """The published index as the engines must agree on it (shard numbers and offsets may differ)."""
    index = read_index(prefix)
    return {name: (e.dtype, e.shape, e.size, e.crc32c, e.slices) for name, e in index.entries.items()}


def assert_same_output(single: str, clustered: str) -> None:
    assert tf_values(clustered) == tf_values(single)
    assert index_entries(clustered) == index_entries(single)
    leftovers = [p.name for p in Path(clustered).parent.iterdir() if p.name.startswith(".ckptsurgery")]
    assert leftovers == []  # staging (with every task attempt) removed


def both(write, tmp_path: Path, scheduler: str) -> tuple[str, str]:
    """Run ``write(dest, **engine)`` in this process and on the cluster; return both prefixes."""
    single = write(str(tmp_path / "single" / "model.ckpt"))
    clustered = write(str(tmp_path / "cluster" / "model.ckpt"), scheduler=scheduler)
    assert len({e.shard_id for e in read_index(clustered.prefix).entries.values() if e.has_data}) > 1  # many tasks
    return single.prefix, clustered.prefix


def test_copy_of_tf1_saver_checkpoint_is_the_same_on_a_cluster(tf1_runs, tmp_path, scheduler):
    src = tf1_runs[0]
    single, clustered = both(lambda d, **k: cs.copy(src, d, memory_budget=BUDGET, progress=False, **k),
                             tmp_path, scheduler)
    assert_same_output(single, clustered)
    restored, original = restore_tf1(clustered), restore_tf1(src)
    for name in original:  # partitioned variables, Adam slots, strings, global_step
        np.testing.assert_array_equal(restored[name], original[name], err_msg=name)


def test_edit_with_a_cast_and_tf_path_is_the_same_on_a_cluster(tiny_runs, tmp_path, scheduler):
    src = tiny_runs[0]
    rules = [cs.Cast("float32", "bfloat16", pattern="^model/encoder/")]
    for byte_path in (True, False):
        single, clustered = both(lambda d, **k: cs.edit(src, d, rules, memory_budget=BUDGET, progress=False,
                                                        byte_path=byte_path, **k), tmp_path / str(byte_path), scheduler)
        assert_same_output(single, clustered)
        name = "model/encoder/w" + KEY
        reader = tf.train.load_checkpoint(clustered)
        assert reader.get_variable_to_dtype_map()[name] == tf.bfloat16
        want = tf.cast(tf.train.load_checkpoint(src).get_tensor(name), tf.bfloat16).numpy()
        np.testing.assert_array_equal(reader.get_tensor(name), want)


def test_average_is_the_same_on_a_cluster(tf1_runs, tmp_path, scheduler):
    single, clustered = both(lambda d, **k: cs.average(tf1_runs, d, memory_budget=BUDGET, progress=False, **k),
                             tmp_path, scheduler)
    assert_same_output(single, clustered)
    restored = restore_tf1(clustered, var_list_filter=lambda n: "Adam" not in n and "power" not in n)
    for name in ("encoder/dense/kernel", "embed/table"):
        inputs = [np.asarray(tf.train.load_checkpoint(p).get_tensor(name)).astype(np.float64) for p in tf1_runs] \
            if name != "embed/table" else [restore_tf1(p)[name].astype(np.float64) for p in tf1_runs]
        np.testing.assert_array_equal(restored[name], (sum(inputs) / 3).astype(np.float32), err_msg=name)


def test_ties_merge_with_a_seed_is_the_same_on_a_cluster(tiny_runs, tmp_path, scheduler):
    base, a, b = tiny_runs

    def write(dest, **engine):
        return cs.merge({"base": base, "a": a, "b": b}, dest, base="base", seed=7,
                        takes=[Take("a", "."), Take("b", "^model/encoder/")],
                        methods=[MethodRule("^model/encoder/", "ties", {"density": 0.5})],
                        memory_budget=BUDGET, progress=False, **engine)

    single, clustered = both(write, tmp_path, scheduler)
    assert_same_output(single, clustered)
    name = "model/encoder/w" + KEY
    read = lambda p: np.asarray(tf.train.load_checkpoint(p).get_tensor(name))  # noqa: E731
    want = apply_method("ties", [read(a), read(b)], base=read(base), seed=derive_seed(7, name), density=0.5)
    np.testing.assert_array_equal(read(clustered), want.astype(np.float32))
    restored = TinyModel(seed=9)
    tf.train.Checkpoint(model=restored).restore(clustered).assert_consumed()
    np.testing.assert_array_equal(restored.encoder.w.numpy(), want.astype(np.float32))


def test_verify_and_diff_on_a_cluster_agree_with_one_process(tf1_runs, tmp_path, scheduler):
    a, b = tf1_runs[0], tf1_runs[1]
    single = cs.verify(a, against=b)
    clustered = cs.verify(a, against=b, scheduler=scheduler)
    assert [t.to_json() for t in clustered.tensors] == [t.to_json() for t in single.tensors]
    assert clustered.differences and not clustered.bad
    assert cs.diff(a, b, scheduler=scheduler).to_json() == cs.diff(a, b).to_json()


def test_a_corrupt_input_read_on_a_worker_fails_with_its_own_one_line_error(tf1_runs, tmp_path, scheduler):
    src = copy_files(tf1_runs[0], tmp_path / "src")
    flip_in(src, "encoder/dense/kernel")
    dest = tmp_path / "out" / "model.ckpt"
    with pytest.raises(cs.BadCheckpointError, match="encoder/dense/kernel.*CRC32C") as exc:
        cs.copy(src, str(dest), memory_budget=BUDGET, progress=False, scheduler=scheduler)
    assert exc.value.tensor == "encoder/dense/kernel" and "\n" not in str(exc.value)
    assert nothing_at(dest.parent)  # nothing published, staging and every attempt removed


def test_a_worker_that_cannot_see_the_staging_folder_fails_in_one_line(tf1_runs, tmp_path, scheduler):
    plan = plan_edit(cs.open_checkpoint(tf1_runs[0]), [])
    task = GroupTask(0, {"src": tf1_runs[0]}, tuple(plan.entries[:2]), str(tmp_path / "not-mounted"), 1 << 20)
    with distributed.Client(scheduler) as client:
        with pytest.raises(OutputError, match="staging folder is not visible from worker .*shared mount") as exc:
            client.submit(run_group_task, task, pure=False).result()
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "not-mounted").exists()


def test_cli_cluster_flag_starts_a_local_cluster_and_prints_its_dashboard_once(tf1_runs, tmp_path):
    out = tmp_path / "out" / "model.ckpt"
    done = run_cli("copy", tf1_runs[0], out, "--cluster", "local:2", "--memory-budget", BUDGET, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("dashboard http") == 1
    assert tf_values(str(out)) == tf_values(tf1_runs[0])


def test_without_distributed_the_cluster_flags_fail_in_one_line(tf1_runs, tmp_path):
    shadow = tmp_path / "shadow" / "distributed"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named distributed')\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=f"{shadow.parent}{os.pathsep}{ROOT}")
    out = tmp_path / "out" / "model.ckpt"
    for flags in (["copy", tf1_runs[0], str(out), "--cluster", "local:2"],
                  ["verify", tf1_runs[0], "--scheduler", "x:1"]):
        done = subprocess.run([sys.executable, "-m", "ckptsurgery", *flags], capture_output=True, text=True, env=env,
                              timeout=120)
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.startswith("ckptsurgery: error")]
        assert len(lines) == 1 and "pip install 'ckptsurgery[dask]'" in lines[0]
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_cluster_option_is_checked_before_anything_runs(tf1_runs, tmp_path):
    with pytest.raises(cs.UsageError, match="option 'cluster': expected null, local or local:N"):
        cs.copy(tf1_runs[0], str(tmp_path / "x"), cluster="remote")
    with pytest.raises(cs.UsageError, match="exclusive"):
        cs.copy(tf1_runs[0], str(tmp_path / "x"), cluster="local:1", scheduler="tcp://x:1")
    assert not (tmp_path / "x").exists()


# -- workers killed mid-task ---------------------------------------------------------------------
def _set_fault(point: str) -> None:
    os.environ["CKPTSURGERY_FAULT"] = point  # in the worker process it runs in (not a pickled copy of environ)


@pytest.mark.slow
def test_a_worker_killed_mid_task_is_replaced_and_the_result_is_exact(tf1_runs, tmp_path, scheduler):
    with distributed.Client(scheduler) as client:
        pids = client.run(os.getpid)
        # Both current worker processes die (SIGKILL, by their own pid) at their first saved group;
        # the nanny starts fresh ones without the variable, and Dask reruns the lost tasks there.
        client.run(_set_fault, "group-saved")
        result = cs.average(tf1_runs, str(tmp_path / "c" / "model.ckpt"), memory_budget=BUDGET, progress=False,
                            scheduler=scheduler)
        client.wait_for_workers(2, timeout=60)
        assert not set(client.run(os.getpid).values()) & set(pids.values())  # the workers did die
    single = cs.average(tf1_runs, str(tmp_path / "s" / "model.ckpt"), memory_budget=BUDGET, progress=False)
    assert_same_output(single.prefix, result.prefix)


@pytest.mark.slow
def test_workers_killed_on_every_attempt_fail_the_run_and_publish_nothing(tf1_runs, tmp_path):
    import dask

    dest = tmp_path / "out" / "model.ckpt"
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                      silence_logs=40, env={"CKPTSURGERY_FAULT": "group-saved"}) as cluster:
            with pytest.raises(OutputError, match="worker died on every attempt.*nothing published") as exc:
                cs.copy(tf1_runs[0], str(dest), memory_budget=BUDGET, progress=False,
                        scheduler=cluster.scheduler_address)
    assert "\n" not in str(exc.value)
    if dest.parent.exists():  # the run removes the folder it made once its staging is gone
        cs.clean(dest.parent)
    assert nothing_at(dest.parent)  # no checkpoint, no staging, no attempt left


@pytest.mark.slow
def test_the_coordinator_killed_before_the_merge_leaves_no_checkpoint_and_clean_removes_every_attempt(tf1_runs,
                                                                                                     tmp_path):
    dest = tmp_path / "out" / "model.ckpt"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), CKPTSURGERY_FAULT="before-merge")
    done = subprocess.run([sys.executable, "-m", "ckptsurgery", "copy", tf1_runs[0], str(dest), "--cluster", "local:2",
                           "--memory-budget", BUDGET], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == -9, done.stderr  # killed by its own fault point, after every task finished
    staging = [p for p in dest.parent.iterdir() if p.name.startswith(".ckptsurgery-staging-")]
    assert len(staging) == 1 and any(p.name.startswith("task-") for p in staging[0].iterdir())
    assert not list(dest.parent.glob("model.ckpt.index")) + list(dest.parent.glob("model.ckpt.data-*"))  # unpublished
    cs.clean(dest.parent)
    assert nothing_at(dest.parent)
