"""Checkpoints on non-local filesystems: every command on ``ram://`` (TF's in-memory filesystem), mixed with local paths.

``ram://`` is a real non-POSIX filesystem registered with ``tf.io.gfile`` in
every TF process, reached through exactly the gfile calls ``gs://`` uses, so
this suite stands in for Cloud Storage (unreachable from here).  It lives in
this process: the tests run the API in-process, and inject failures with
``fail@POINT`` (an ``OSError`` the run handles) and ``crash@POINT`` (the run
stops dead, as if killed) from :mod:`ckptsurgery.io.faults`.  Inputs are
written by real TensorFlow (``Saver.save``, ``tf.train.Checkpoint.write``),
outputs restored by real TensorFlow from ``ram://`` and compared value by value.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.api import average, merge
from ckptsurgery.errors import BadCheckpointError, OutputError
from ckptsurgery.io import faults
from ckptsurgery.io.fs import cache as readahead
from ckptsurgery.io.publish import remote
from ckptsurgery.io.reader import open_checkpoint
from ckptsurgery.plan.merge import Take
from ckptsurgery.plan.rules import Cast, Drop, Rename
from conftest import run_cli
from models import TinyModel, _build_tf1_graph, assert_same_variables, restore_tf1

KEY = "/.ATTRIBUTES/VARIABLE_VALUE"
gfile = tf.io.gfile


def ram(name: str) -> str:
    """A fresh ``ram://`` folder (the filesystem is shared by the whole test process)."""
    return f"ram://{name}-{uuid.uuid4().hex[:8]}"


def values(prefix: str) -> dict[str, np.ndarray]:
    """Every tensor as TF's own reader returns it (``NewCheckpointReader``: works on any filesystem)."""
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    return {name: np.asarray(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()}


def assert_same_values(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        if a[name].dtype == object:
            assert list(a[name].reshape(-1)) == list(b[name].reshape(-1)), name
        else:
            assert a[name].tobytes() == b[name].tobytes(), name


def state_latest(folder: str) -> str | None:
    state = tf.train.get_checkpoint_state(folder)
    return state.model_checkpoint_path if state is not None else None


def leftovers(folder: str) -> list[str]:
    """Our own working files in ``folder``: journals, lock objects, fresh copies of a --force."""
    return [n for n in gfile.listdir(folder) if "ckptsurgery" in n]


def write_tf1_ram(folder: str, seed: int = 0) -> str:
    """A TF1 model (Adam slots, partitioned variable, strings) saved by ``Saver`` straight to ``ram://``."""
    with tf.Graph().as_default():
        train = _build_tf1_graph(seed)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train)
            return saver.save(sess, folder + "/model.ckpt", global_step=1)


def write_tiny_ram(prefix: str, seed: int) -> tuple[str, TinyModel]:
    model = TinyModel(seed)
    return tf.train.Checkpoint(model=model).write(prefix), model


@pytest.fixture(scope="module")
def tf1_ram() -> str:
    return write_tf1_ram(ram("tf1"))


@pytest.fixture(scope="module")
def tiny_ram() -> dict[str, tuple[str, TinyModel]]:
    folder = ram("tiny")
    return {alias: write_tiny_ram(f"{folder}/{alias}/ckpt", seed) for alias, seed in (("a", 1), ("b", 2), ("c", 3))}


@pytest.fixture(autouse=True)
def _fresh_faults(monkeypatch):
    monkeypatch.setattr(remote, "SETTLE_SECONDS", 0.0)
    faults.reset()
    yield
    faults.reset()


# -- the command suite, ram:// to ram:// and mixed with local paths ------------------------------------
@pytest.mark.parametrize("byte_path", [True, False])
def test_copy_ram_to_ram_restores_with_saver_and_lists_in_state_file(tf1_ram, byte_path):
    out = ram("copy") + "/model.ckpt-1"
    result = cs.copy(tf1_ram, out, progress=False, byte_path=byte_path)
    assert result.prefix == out
    assert_same_values(values(out), values(tf1_ram))
    want = restore_tf1(tf1_ram)
    got = restore_tf1(out)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert tf.train.latest_checkpoint(out.rsplit("/", 1)[0]) == out
    assert leftovers(out.rsplit("/", 1)[0]) == []


def test_inspect_and_folder_resolution_on_ram(tf1_ram):
    info = cs.inspect(tf1_ram)
    assert info["num_tensors"] == len(values(tf1_ram))
    folder = tf1_ram.rsplit("/", 1)[0]
    assert open_checkpoint(folder).prefix == tf1_ram  # the folder's `checkpoint` state file
    assert open_checkpoint(tf1_ram + ".index").prefix == tf1_ram
    with pytest.raises(BadCheckpointError, match="no such checkpoint"):
        open_checkpoint(folder + "/nothing-here")


def test_copy_ram_to_local_and_local_to_ram(tf1_ram, tmp_path):
    local = cs.copy(tf1_ram, str(tmp_path / "local" / "model.ckpt-1"), progress=False).prefix
    assert_same_values(values(local), values(tf1_ram))
    back = cs.copy(local, ram("back") + "/", progress=False).prefix  # a folder: SRC's base name inside
    assert back.endswith("/model.ckpt-1")
    assert_same_values(values(back), values(tf1_ram))


def test_edit_ram_to_ram_with_computed_tensors(tf1_ram):
    out = ram("edit") + "/m"
    cs.edit(tf1_ram, out, [Drop(r"/Adam"), Cast("float32", "float16", "^encoder/"), Rename("^head/", "output/")],
            progress=False)
    src, got = values(tf1_ram), values(out)
    assert not any("/Adam" in n for n in got)
    np.testing.assert_array_equal(got["encoder/dense/kernel"], src["encoder/dense/kernel"].astype(np.float16))
    np.testing.assert_array_equal(got["output/kernel"], src["head/kernel"])
    assert list(got["vocab"]) == list(src["vocab"])


def test_transfer_average_merge_diff_verify_on_ram(tiny_ram, tmp_path):
    (pa, a), (pb, b), pc = tiny_ram["a"], tiny_ram["b"], tiny_ram["c"][0]
    out = ram("transfer") + "/warm"
    cs.transfer(pa, pb, out, progress=False, old_step_counters=True)
    fresh = TinyModel(seed=50)
    tf.train.Checkpoint(model=fresh).read(out).assert_consumed()
    assert_same_variables(fresh, a)

    avg = ram("avg") + "/ckpt"
    average([pa, pb, pc], avg, progress=False)
    got = values(avg)
    for name in ("model/encoder/w" + KEY, "model/head" + KEY):
        want = np.mean([values(p)[name].astype(np.float64) for p in (pa, pb, pc)], axis=0).astype(np.float32)
        np.testing.assert_array_equal(got[name], want, err_msg=name)

    merged = str(tmp_path / "merged" / "ckpt")  # remote sources, local output
    merge({"a": pa, "b": pb}, merged, progress=False,
          takes=[Take("a", r"^model/(encoder|head|scale|step)/|^save_counter/"),
                 Take("b", "^model/encoder/", [("^model/encoder/", "model/decoder/")])])
    fresh = TinyModel(seed=60)
    tf.train.Checkpoint(model=fresh).read(merged).assert_consumed()
    np.testing.assert_array_equal(fresh.decoder.w.numpy(), b.encoder.w.numpy())
    np.testing.assert_array_equal(fresh.encoder.w.numpy(), a.encoder.w.numpy())

    assert cs.diff(pa, cs.copy(pa, str(tmp_path / "acopy" / "ckpt"), progress=False).prefix).identical
    assert not cs.diff(pa, pb).identical
    assert cs.verify(avg).ok and cs.verify(out, against=pa).ok


def test_last_n_of_a_ram_training_folder(tmp_path):
    folder = ram("mgr")
    model = TinyModel(4)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), folder, max_to_keep=5)
    saved = []
    for step in range(3):
        model.head.assign_add(tf.ones_like(model.head))
        saved.append(manager.save())
    assert cs.last_checkpoints(folder, 2) == saved[1:]
    avg = average(cs.last_checkpoints(folder, 2), ram("mgravg") + "/ckpt", progress=False)
    want = np.mean([values(p)["model/head" + KEY] for p in saved[1:]], axis=0)
    np.testing.assert_allclose(values(avg.prefix)["model/head" + KEY], want, rtol=0, atol=1e-6)


def test_run_recipe_with_ram_source_and_output(tf1_ram, tmp_path):
    out = ram("recipe") + "/slim"
    recipe = tmp_path / "slim.yaml"
    recipe.write_text(f"edit:\n  source: {tf1_ram}\n  rules:\n    - drop_optimizer: true\noutput: {out}\n")
    cs.run_recipe(recipe, progress=False)
    got = values(out)
    assert got and not any("Adam" in n for n in got)
    np.testing.assert_array_equal(got["head/kernel"], values(tf1_ram)["head/kernel"])


def test_force_over_ram_checkpoint_replaces_it_whole_and_leaves_nothing(tiny_ram):
    pa, pb = tiny_ram["a"][0], tiny_ram["b"][0]
    folder = ram("force")
    out = folder + "/ckpt"
    cs.copy(pa, out, progress=False)
    with pytest.raises(OutputError, match="already exists"):
        cs.copy(pb, out, progress=False)
    cs.copy(pb, out, progress=False, force=True)
    assert_same_values(values(out), values(pb))
    assert sorted(gfile.listdir(folder)) == ["checkpoint", "ckpt.data-00000-of-00001", "ckpt.index"]
    assert list(tf.train.get_checkpoint_state(folder).all_model_checkpoint_paths) == [out]


def test_prefetch_reads_remote_ranges_ahead_and_reads_hit_them(tiny_ram):
    pa = tiny_ram["a"][0]
    ckpt = open_checkpoint(pa)
    name = "model/encoder/w" + KEY
    readahead.clear()
    ckpt.prefetch([name])
    entry = ckpt.bundle_index.entries[name]
    path = ckpt.bundle_index.data_path(entry.shard_id)
    assert (path, entry.offset, entry.size) in readahead._entries
    got = ckpt.read(name)
    assert (path, entry.offset, entry.size) not in readahead._entries  # taken, not read again
    np.testing.assert_array_equal(got, values(pa)[name])


def test_prefetched_bytes_that_fail_their_crc_are_not_used(tiny_ram, monkeypatch):
    pa = tiny_ram["a"][0]
    ckpt = open_checkpoint(pa)
    name = "model/encoder/w" + KEY
    readahead.clear()
    ckpt.prefetch([name])
    entry = ckpt.bundle_index.entries[name]
    key = (ckpt.bundle_index.data_path(entry.shard_id), entry.offset, entry.size)
    good = readahead._entries[key].result()
    bad = bytearray(good)
    bad[3] ^= 1
    readahead._entries[key] = type(readahead._entries[key])()
    readahead._entries[key].set_result(bytes(bad))
    np.testing.assert_array_equal(ckpt.read(name), values(pa)[name])  # TF's reader read the stored bytes


# -- failures on the remote store: nothing half-visible, `clean` restores order ---------------------
def test_upload_failing_half_way_publishes_nothing(tiny_ram, monkeypatch):
    folder = ram("halfway")
    out = folder + "/ckpt"
    # writes: lock, journal, data shard, index...: the data shard's upload fails
    monkeypatch.setenv("CKPTSURGERY_FAULT", "fail@remote-write:3")
    with pytest.raises(OutputError, match="nothing was published"):
        cs.copy(tiny_ram["a"][0], out, progress=False)
    assert [n for n in gfile.listdir(folder)] == []
    assert cs.clean_actions(folder) == []


def test_crash_after_data_before_index_is_invisible_then_cleaned(tiny_ram, monkeypatch):
    folder = ram("noindex")
    out = folder + "/ckpt"
    monkeypatch.setenv("CKPTSURGERY_FAULT", "crash@remote-data-uploaded")
    with pytest.raises(faults.SimulatedCrash):
        cs.copy(tiny_ram["a"][0], out, progress=False)
    assert any(n.startswith("ckpt.data-") for n in gfile.listdir(folder))
    with pytest.raises(BadCheckpointError):
        open_checkpoint(out)  # no index: no reader sees a checkpoint
    assert state_latest(folder) is None
    monkeypatch.delenv("CKPTSURGERY_FAULT")
    actions = cs.clean_actions(folder)
    assert [a.action for a in actions] == ["rolled-back", "removed-journal"]
    assert gfile.listdir(folder) == []


def test_crash_between_index_and_state_file_rolls_forward(tiny_ram, monkeypatch):
    folder = ram("nostate")
    out = folder + "/ckpt"
    monkeypatch.setenv("CKPTSURGERY_FAULT", "crash@remote-index-uploaded")
    with pytest.raises(faults.SimulatedCrash):
        cs.copy(tiny_ram["a"][0], out, progress=False)
    assert_same_values(values(out), values(tiny_ram["a"][0]))  # whole, just not listed yet
    assert state_latest(folder) is None
    monkeypatch.delenv("CKPTSURGERY_FAULT")
    assert [a.action for a in cs.clean_actions(folder)] == ["rolled-forward", "removed-journal"]
    assert state_latest(folder) == out
    assert leftovers(folder) == []


@pytest.mark.parametrize("point, forward", [
    ("remote-data-uploaded", False), ("remote-index-uploaded", False),
    ("remote-state-switched", True), ("remote-moved-into-place", True),
])
def test_crash_during_force_never_shows_a_mix_and_clean_finishes(tiny_ram, monkeypatch, point, forward):
    (pa, _), (pb, b) = tiny_ram["a"], tiny_ram["b"]
    folder = ram("forcecrash")
    out = folder + "/ckpt"
    cs.copy(pa, out, progress=False)
    monkeypatch.setenv("CKPTSURGERY_FAULT", "crash@" + point)
    with pytest.raises(faults.SimulatedCrash):
        cs.copy(pb, out, progress=False, force=True)
    old, new = values(pa), values(pb)
    # The state file's latest checkpoint is whole, old or new; the destination is old, new or absent.
    latest = tf.train.latest_checkpoint(folder)
    assert_same_values(values(latest), new if forward else old)
    if gfile.exists(out + ".index"):
        assert_same_values(values(out), new if point == "remote-moved-into-place" else old)
    monkeypatch.delenv("CKPTSURGERY_FAULT")
    actions = [a.action for a in cs.clean_actions(folder)]
    assert actions == ["rolled-forward" if forward else "rolled-back", "removed-journal"]
    assert_same_values(values(out), new if forward else old)
    assert tf.train.latest_checkpoint(folder) == out
    assert sorted(gfile.listdir(folder)) == ["checkpoint", "ckpt.data-00000-of-00001", "ckpt.index"]
    fresh = TinyModel(seed=70)
    tf.train.Checkpoint(model=fresh).read(out).assert_consumed()
    if forward:
        assert_same_variables(fresh, b)


def test_failing_copy_during_force_is_redone_and_the_run_publishes(tiny_ram, monkeypatch):
    (pa, _), (pb, _) = tiny_ram["a"], tiny_ram["b"]
    folder = ram("copyfail")
    out = folder + "/ckpt"
    cs.copy(pa, out, progress=False)
    monkeypatch.setenv("CKPTSURGERY_FAULT", "fail@remote-copy")  # the first data copy into place fails
    cs.copy(pb, out, progress=False, force=True)
    assert_same_values(values(out), values(pb))
    assert leftovers(folder) == []


def test_next_run_recovers_a_dead_runs_publish_first(tiny_ram, monkeypatch):
    folder = ram("nextrun")
    out = folder + "/ckpt"
    monkeypatch.setenv("CKPTSURGERY_FAULT", "crash@remote-data-uploaded")
    with pytest.raises(faults.SimulatedCrash):
        cs.copy(tiny_ram["a"][0], out, progress=False)
    monkeypatch.delenv("CKPTSURGERY_FAULT")
    cs.copy(tiny_ram["b"][0], out, progress=False)
    assert_same_values(values(out), values(tiny_ram["b"][0]))
    assert leftovers(folder) == []


def test_a_live_lock_refuses_a_second_writer_and_clean_spares_it(tiny_ram):
    folder = ram("lock")
    out = folder + "/ckpt"
    gfile.makedirs(folder)
    with remote.RemoteLock(out):
        with pytest.raises(OutputError, match="another ckptsurgery"):
            cs.copy(tiny_ram["a"][0], out, progress=False)
        assert cs.clean_actions(folder) == []
        assert gfile.exists(out + remote.LOCK_SUFFIX)
    assert not gfile.exists(out + remote.LOCK_SUFFIX)


def test_clean_removes_an_expired_lock_and_leaves_other_writers_files(tiny_ram):
    folder = ram("expired")
    gfile.makedirs(folder)
    stale = folder + "/ckpt" + remote.LOCK_SUFFIX
    with gfile.GFile(stale, "w") as f:
        f.write('{"owner": "x", "host": "elsewhere", "pid": 1, "expires": 1}')
    foreign = folder + "/" + remote.JOURNAL_PREFIX + "ckpt-0000.json"  # our name, not our marker
    with gfile.GFile(foreign, "w") as f:
        f.write('{"destination": "' + folder + '/ckpt", "data": ["ckpt.data-00000-of-00001"]}')
    assert [a.action for a in cs.clean_actions(folder)] == ["removed-lock"]
    assert gfile.listdir(folder) == [foreign.rsplit("/", 1)[1]]


# -- file:// is the plain path ---------------------------------------------------------------------------
def test_file_url_is_the_plain_path_on_the_cli(tf1_ckpt, tmp_path):
    out = tmp_path / "out" / "model.ckpt"
    run = run_cli("copy", "file://" + tf1_ckpt, "file://" + str(out))
    assert run.returncode == 0, run.stderr
    assert Path(str(out) + ".index").is_file()
    assert_same_values(values(str(out)), values(tf1_ckpt))
    shown = run_cli("inspect", "file://" + str(out))
    assert shown.returncode == 0 and "encoder/dense/kernel" in shown.stdout
    assert run_cli("clean", "file://" + str(out.parent)).returncode == 0


# -- read-ahead: remote inputs are read in parallel, a batch ahead ---------------------------------------
def test_average_of_remote_checkpoints_takes_later_batches_from_the_read_ahead(tiny_ram, monkeypatch):
    taken = []

    def counting(real):
        def counted(path, offset, size):
            data = real(path, offset, size)
            taken.append(data is not None)
            return data
        return counted

    # Whole ranges (byte copies, TF-path reads) are taken; averaged tensors are read chunk by chunk.
    monkeypatch.setattr(readahead, "take", counting(readahead.take))
    monkeypatch.setattr(readahead, "read_slice", counting(readahead.read_slice))
    prefixes = [tiny_ram[k][0] for k in "abc"]
    # A budget of a few tensors: several batches, each fetched while the previous one is averaged.
    out = average(prefixes, ram("ahead") + "/ckpt", progress=False, memory_budget="200B").prefix
    assert sum(taken) >= 6, taken  # at least two tensors of every source after the first batch
    want = np.mean([values(p)["model/decoder/w" + KEY].astype(np.float64) for p in prefixes], axis=0)
    np.testing.assert_array_equal(values(out)["model/decoder/w" + KEY], want.astype(np.float32))


def test_byte_copy_from_a_remote_source_reads_ranges_fetched_ahead(tiny_ram, monkeypatch):
    served = []
    real = readahead.read_slice

    def counting(path, offset, size):
        data = real(path, offset, size)
        served.append(data is not None)
        return data

    monkeypatch.setattr(readahead, "read_slice", counting)
    out = cs.copy(tiny_ram["a"][0], ram("bytes") + "/ckpt", progress=False, memory_budget="200B").prefix
    assert any(served) and not all(served)  # the first batch on demand, later ones from the read-ahead
    assert_same_values(values(out), values(tiny_ram["a"][0]))


# -- the lease lock ------------------------------------------------------------------------------------------
def test_a_live_lease_held_elsewhere_refuses_the_run_and_an_expired_one_is_taken_over(tiny_ram):
    import json
    import time

    folder = ram("lease")
    out = folder + "/ckpt"
    gfile.makedirs(folder)
    lock = out + remote.LOCK_SUFFIX

    def held_by_other(expires: float) -> None:
        with gfile.GFile(lock, "w") as f:
            f.write(json.dumps({"owner": "other", "host": "tpu-vm-7", "pid": 4242, "expires": expires}))

    held_by_other(time.time() + 60)
    with pytest.raises(OutputError, match=r"another ckptsurgery run \(host tpu-vm-7, pid 4242\)"):
        cs.copy(tiny_ram["a"][0], out, progress=False)
    assert gfile.listdir(folder) == ["ckpt" + remote.LOCK_SUFFIX]
    gfile.remove(lock)  # ram:// appends to a file opened for writing: start it afresh
    held_by_other(time.time() - 1)
    cs.copy(tiny_ram["a"][0], out, progress=False)
    assert_same_values(values(out), values(tiny_ram["a"][0]))
    assert leftovers(folder) == []


def test_a_run_that_lost_its_lock_before_the_commit_point_publishes_nothing(tiny_ram, monkeypatch):
    import threading

    folder = ram("lost")
    out = folder + "/ckpt"
    monkeypatch.setenv("CKPTSURGERY_FAULT", "wait@remote-data-uploaded")
    gate = str(Path(__import__("tempfile").mkdtemp()) / "gate")
    monkeypatch.setenv("CKPTSURGERY_FAULT_GATE", gate)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            cs.copy(tiny_ram["a"][0], out, progress=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    while not Path(gate + ".reached").exists():
        worker.join(0.05)
    # Another run (which started in the same instant) overwrote the lock object.
    gfile.remove(out + remote.LOCK_SUFFIX)
    with gfile.GFile(out + remote.LOCK_SUFFIX, "w") as f:
        f.write('{"owner": "other", "host": "elsewhere", "pid": 1, "expires": 1e12}')
    Path(gate).touch()
    worker.join(60)
    assert errors and "lost the destination lock" in str(errors[0])
    assert sorted(gfile.listdir(folder)) == ["ckpt" + remote.LOCK_SUFFIX]  # no index, no data, no journal
