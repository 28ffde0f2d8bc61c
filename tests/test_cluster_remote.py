"""Capability: a cluster run to a remote destination stages on the destination's store, not in local temp.

Workers on other machines cannot see the coordinator's ``$TMPDIR``, so with
``--cluster``/``--scheduler`` and a ``gs://`` (here ``ram://``) destination the
staging folder goes beside the destination on the store; tasks write their
attempt folders there, the merge and the publish move the files with the
store's own renames.  ``ram://`` lives inside one process, so the cluster is
a real ``distributed.LocalCluster`` with ``processes=False`` (worker threads
in this process, sharing its ``ram://``): the same Dask scheduling, task
pickling and manifests as worker processes, and the same gfile calls as on
Cloud Storage.  Outputs are restored by real TensorFlow from ``ram://`` and
compared value by value, bit-identical to the single-process run.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import tensorflow as tf

distributed = pytest.importorskip("distributed")

import ckptsurgery as cs  # noqa: E402
from ckptsurgery.errors import BadCheckpointError, OutputError  # noqa: E402
from ckptsurgery.execute import tasks  # noqa: E402
from ckptsurgery.execute.tasks import GroupTask, run_group_task  # noqa: E402
from ckptsurgery.io import faults  # noqa: E402
from ckptsurgery.io.index import read_index  # noqa: E402
from ckptsurgery.io.publish import remote, store_staging  # noqa: E402
from ckptsurgery.io.publish.staging import MARKER, STAGING_PREFIX  # noqa: E402
from ckptsurgery.io.reader import open_checkpoint  # noqa: E402
from ckptsurgery.plan.entries import plan_edit  # noqa: E402
from models import restore_tf1, write_tf1_checkpoint  # noqa: E402

gfile = tf.io.gfile
BUDGET = "300B"  # several tasks even for the tiny test models


@pytest.fixture(scope="module")
def scheduler():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                                  silence_logs=40) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def tf1_runs(tmp_path_factory) -> list[str]:
    return [write_tf1_checkpoint(tmp_path_factory.mktemp(f"tf1_{i}"), steps=i + 1, seed=i) for i in range(3)]


@pytest.fixture(autouse=True)
def _fresh_faults(monkeypatch):
    monkeypatch.setattr(remote, "SETTLE_SECONDS", 0.0)
    faults.reset()
    yield
    faults.reset()


@pytest.fixture
def staged(monkeypatch) -> dict[str, list[str]]:
    """Where the coordinator staged (store stagings created) and where the tasks wrote (attempt folders)."""
    seen: dict[str, list[str]] = {"stagings": [], "attempts": []}
    create, open_task = store_staging.StoreStaging.create, tasks.TaskWriter.open

    def spy_create(self):
        seen["stagings"].append(self.path)
        return create(self)

    def spy_open(self):
        seen["attempts"].append(self.attempt)
        return open_task(self)

    monkeypatch.setattr(store_staging.StoreStaging, "create", spy_create)
    monkeypatch.setattr(tasks.TaskWriter, "open", spy_open)
    return seen


def ram(name: str) -> str:
    return f"ram://{name}-{uuid.uuid4().hex[:8]}"


def values(prefix: str) -> dict[str, bytes | list]:
    """Every tensor's exact bytes, as TF's own reader returns them from any filesystem."""
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    out = {}
    for name in reader.get_variable_to_shape_map():
        array = np.asarray(reader.get_tensor(name))
        out[name] = (array.dtype.str, array.shape, list(array.reshape(-1)) if array.dtype == object else array.tobytes())
    return out


def index_entries(prefix: str) -> dict:
    index = read_index(prefix)
    return {name: (e.dtype, e.shape, e.size, e.crc32c, e.slices) for name, e in index.entries.items()}


def ours(folder: str) -> list[str]:
    return [n for n in gfile.listdir(folder) if "ckptsurgery" in n] if gfile.exists(folder) else []


def test_copy_and_average_stage_on_the_store_and_match_one_process_bit_for_bit(tf1_runs, scheduler, staged):
    folder = ram("cluster")
    for name, write in (
        ("copy", lambda d, **k: cs.copy(tf1_runs[0], d, memory_budget=BUDGET, progress=False, **k)),
        ("average", lambda d, **k: cs.average(tf1_runs, d, memory_budget=BUDGET, progress=False, **k)),
    ):
        single = write(f"{folder}/single-{name}/model.ckpt").prefix
        assert staged["stagings"] == [] and staged["attempts"] == []  # one process: local staging, one upload
        out = f"{folder}/cluster-{name}/model.ckpt"
        clustered = write(out, scheduler=scheduler).prefix
        assert clustered == out
        [staging] = staged["stagings"]
        assert staging.startswith(f"{folder}/cluster-{name}/{STAGING_PREFIX}model.ckpt-")  # beside the destination
        assert len(staged["attempts"]) > 1 and all(a.startswith(staging + "/task-") for a in staged["attempts"])
        assert len({e.shard_id for e in read_index(out).entries.values() if e.has_data}) > 1
        assert values(clustered) == values(single)
        assert index_entries(clustered) == index_entries(single)
        assert tf.train.latest_checkpoint(f"{folder}/cluster-{name}") == out
        assert ours(f"{folder}/cluster-{name}") == []  # staging with every attempt, journal, lock: gone
        staged["stagings"].clear()
        staged["attempts"].clear()
    restored, original = restore_tf1(f"{folder}/cluster-copy/model.ckpt"), restore_tf1(tf1_runs[0])
    for name in original:  # partitioned variables, Adam slots, strings, global_step
        np.testing.assert_array_equal(restored[name], original[name], err_msg=name)


def test_force_over_a_remote_checkpoint_on_a_cluster_replaces_it_whole(tf1_runs, scheduler, staged):
    out = ram("force") + "/model.ckpt"
    cs.copy(tf1_runs[0], out, memory_budget=BUDGET, progress=False, scheduler=scheduler)
    cs.edit(tf1_runs[1], out, [cs.Cast("float32", "float64", pattern="^encoder/")], memory_budget=BUDGET,
            progress=False, scheduler=scheduler, force=True, byte_path=False)  # SaveV2 groups written to the store
    single = cs.edit(tf1_runs[1], ram("force-single") + "/model.ckpt", [cs.Cast("float32", "float64",
                     pattern="^encoder/")], memory_budget=BUDGET, progress=False, byte_path=False).prefix
    assert len(staged["stagings"]) == 2
    assert values(out) == values(single)
    assert tf.train.latest_checkpoint(out.rsplit("/", 1)[0]) == out
    assert ours(out.rsplit("/", 1)[0]) == []


def test_a_task_failing_mid_run_publishes_nothing_and_leaves_no_staging(tf1_runs, scheduler, staged, monkeypatch):
    folder = ram("taskfail")
    monkeypatch.setenv("CKPTSURGERY_FAULT", "fail@group-saved:2")  # the worker threads share this environment
    with pytest.raises(OutputError, match="write failed.*injected failure at group-saved") as exc:
        cs.copy(tf1_runs[0], folder + "/model.ckpt", memory_budget=BUDGET, progress=False, scheduler=scheduler)
    assert "\n" not in str(exc.value)
    assert staged["stagings"] and staged["attempts"]  # tasks did write on the store before the failure
    assert not gfile.exists(staged["stagings"][0])
    assert (gfile.listdir(folder) if gfile.exists(folder) else []) == []
    monkeypatch.delenv("CKPTSURGERY_FAULT")
    assert cs.clean_actions(folder) == []


def test_a_coordinator_dead_before_the_merge_leaves_nothing_visible_and_clean_removes_every_attempt(
        tf1_runs, scheduler, staged, monkeypatch):
    folder = ram("crash")
    out = folder + "/model.ckpt"
    # A killed coordinator cleans nothing up: stand that in by disabling the staging's removal, then
    # stop the run dead (crash@: no recovery code catches it) after every task has written its groups.
    monkeypatch.setattr(store_staging.StoreStaging, "remove", lambda self: None)
    monkeypatch.setenv("CKPTSURGERY_FAULT", "crash@before-merge")
    with pytest.raises(faults.SimulatedCrash):
        cs.average(tf1_runs, out, memory_budget=BUDGET, progress=False, scheduler=scheduler)
    monkeypatch.delenv("CKPTSURGERY_FAULT")
    monkeypatch.undo()
    [staging] = staged["stagings"]
    left = gfile.listdir(staging)
    assert MARKER in left and sum(n.startswith("task-") for n in left) == len(staged["attempts"]) > 1
    with pytest.raises(BadCheckpointError):
        open_checkpoint(out)  # no index at the destination: no reader sees a checkpoint
    assert tf.train.get_checkpoint_state(folder) is None
    actions = cs.clean_actions(folder)
    assert [(a.action, a.path) for a in actions] == [("removed-staging", staging)]
    assert gfile.listdir(folder) == []


def test_the_next_cluster_run_removes_a_dead_runs_store_staging_first(tf1_runs, scheduler, staged, monkeypatch):
    out = ram("next") + "/model.ckpt"
    monkeypatch.setattr(store_staging.StoreStaging, "remove", lambda self: None)
    monkeypatch.setenv("CKPTSURGERY_FAULT", "crash@after-merge")
    with pytest.raises(faults.SimulatedCrash):
        cs.copy(tf1_runs[0], out, memory_budget=BUDGET, progress=False, scheduler=scheduler)
    monkeypatch.undo()
    dead = staged["stagings"][0]
    assert gfile.exists(dead + "/" + MARKER)
    cs.copy(tf1_runs[1], out, memory_budget=BUDGET, progress=False, scheduler=scheduler)
    assert not gfile.exists(dead)
    assert values(out) == values(tf1_runs[1])
    assert ours(out.rsplit("/", 1)[0]) == []


def test_clean_spares_the_store_staging_of_a_live_run(tf1_runs):
    out = ram("live") + "/model.ckpt"
    with remote.RemoteLock(out) as lock:
        staging = store_staging.StoreStaging(out, lock.owner).create()
        assert [(a.action, a.path) for a in cs.clean_actions(out.rsplit("/", 1)[0])] == [("skipped-live", staging.path)]
        assert gfile.exists(staging.path + "/" + MARKER)
    assert [a.action for a in cs.clean_actions(out.rsplit("/", 1)[0])] == ["removed-staging"]


def test_a_worker_that_cannot_see_a_store_staging_folder_fails_in_one_line(tf1_runs, scheduler):
    plan = plan_edit(cs.open_checkpoint(tf1_runs[0]), [])
    missing = ram("unreachable") + "/" + STAGING_PREFIX + "model.ckpt-0000"
    task = GroupTask(0, {"src": tf1_runs[0]}, tuple(plan.entries[:2]), missing, 1 << 20)
    with distributed.Client(scheduler) as client:
        with pytest.raises(OutputError, match="staging folder is not visible from worker .*gs:// bucket") as exc:
            client.submit(run_group_task, task, pure=False).result()
    assert "\n" not in str(exc.value)
    assert not gfile.exists(missing)
    with pytest.raises(OutputError, match="not visible"):
        run_group_task(task)  # the same in this process


def test_publish_from_a_store_staging_keeps_the_remote_order_and_guarantees(tf1_runs, scheduler, monkeypatch):
    # A store error after the data shards were moved into place: undone by the run itself.
    folder = ram("pubfail")
    monkeypatch.setenv("CKPTSURGERY_FAULT", "fail@remote-data-uploaded")
    with pytest.raises(OutputError, match="undone, nothing was published"):
        cs.copy(tf1_runs[0], folder + "/model.ckpt", memory_budget=BUDGET, progress=False, scheduler=scheduler)
    assert gfile.listdir(folder) == []
    # A run dead right after its index was moved into place (the commit point): whole, and clean lists it.
    faults.reset()
    folder = ram("pubcrash")
    out = folder + "/model.ckpt"
    monkeypatch.setenv("CKPTSURGERY_FAULT", "crash@remote-index-uploaded")
    with pytest.raises(faults.SimulatedCrash):
        cs.copy(tf1_runs[0], out, memory_budget=BUDGET, progress=False, scheduler=scheduler)
    monkeypatch.delenv("CKPTSURGERY_FAULT")
    assert values(out) == values(tf1_runs[0])
    assert tf.train.get_checkpoint_state(folder) is None
    assert [a.action for a in cs.clean_actions(folder)] == ["rolled-forward", "removed-journal"]
    assert tf.train.latest_checkpoint(folder) == out
    assert ours(folder) == []
