"""Publishing into a folder others use: its ``checkpoint`` state file, concurrent runs, a full disk.

* The state file keeps what TensorFlow keeps (timestamps, ``last_preserved_timestamp``),
  so a ``CheckpointManager`` reopened on the folder rotates exactly as if TF alone
  had recorded the new checkpoint.
* A run without ``--force`` re-checks the destination under the lock, right before
  publishing: it never replaces a checkpoint another run published meanwhile.
* A state file that cannot be written (ENOSPC) undoes the publish: exit 4 means
  nothing changed; a run killed there is completed by ``clean``, which also removes
  the temp state file it left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, run_cli
from helpers import tf_values
from test_crash_safety import hash_files, staging_dirs

import ckptsurgery as cs
from ckptsurgery.errors import EXIT_IO, OutputError


def cli_env(**extra: str) -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), **extra)


def spawn_cli(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ckptsurgery", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(**env))


# -- CheckpointManager rotation ---------------------------------------------------------------
def managed_run(folder: Path) -> tuple[tf.Variable, tf.train.Checkpoint]:
    """A training run under CheckpointManager(max_to_keep=3) that saved 3 checkpoints."""
    v = tf.Variable(np.zeros(4, np.float32))
    ckpt = tf.train.Checkpoint(v=v)
    manager = tf.train.CheckpointManager(ckpt, str(folder), max_to_keep=3)
    for step in range(1, 4):
        v.assign(np.full(4, step, np.float32))
        manager.save(checkpoint_number=step)
        time.sleep(0.01)  # distinct timestamps, as in a real run
    return v, ckpt


def continue_run(folder: Path, v: tf.Variable, ckpt: tf.train.Checkpoint) -> list[str]:
    """Reopen the manager on ``folder``, save 4 more; return what the folder holds then."""
    manager = tf.train.CheckpointManager(ckpt, str(folder), max_to_keep=3)
    assert manager.latest_checkpoint == str(folder / "avg")  # the new checkpoint is the latest, as TF records it
    for step in range(4, 8):
        v.assign(np.full(4, step, np.float32))
        manager.save(checkpoint_number=step)
    return sorted(f.name for f in folder.iterdir())


def test_checkpoint_manager_rotation_after_average_matches_tf(tmp_path):
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    v, ckpt = managed_run(ours)
    result = run_cli("average", "--last", "3", ours, "--out", ours / "avg", "--no-progress")
    assert result.returncode == 0, result.stderr
    state = tf.train.get_checkpoint_state(str(ours))
    assert state.model_checkpoint_path == str(ours / "avg")
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-1", "ckpt-2", "ckpt-3", "avg"]
    assert len(state.all_model_checkpoint_timestamps) == 4 and state.last_preserved_timestamp > 0
    assert state.all_model_checkpoint_timestamps[3] >= state.all_model_checkpoint_timestamps[2]

    # Reference: the same run, the averaged checkpoint written by TF and recorded by TF's own
    # update_checkpoint_state, as a Saver or CheckpointManager records a save.
    v_ref, ckpt_ref = managed_run(ref)
    tf.train.Checkpoint(v=tf.Variable(np.full(4, 2, np.float32))).write(str(ref / "avg"))
    before = tf.train.get_checkpoint_state(str(ref))
    tf.compat.v1.train.update_checkpoint_state(
        str(ref), str(ref / "avg"),
        all_model_checkpoint_paths=list(before.all_model_checkpoint_paths) + [str(ref / "avg")],
        all_model_checkpoint_timestamps=list(before.all_model_checkpoint_timestamps) + [time.time()],
        last_preserved_timestamp=before.last_preserved_timestamp)

    remaining = continue_run(ours, v, ckpt)
    assert remaining == continue_run(ref, v_ref, ckpt_ref)
    assert not any(name.startswith(("ckpt-1.", "ckpt-2.", "ckpt-3.")) for name in remaining)  # rotation works


def test_state_file_keeps_entries_verbatim_and_moves_a_replaced_one_last(tf1_ckpt, tmp_path):
    folder = tmp_path / "run"
    cs.copy(tf1_ckpt, folder / "a", progress=False)
    cs.copy(tf1_ckpt, folder / "b", progress=False)
    first = tf.train.get_checkpoint_state(str(folder))
    cs.copy(tf1_ckpt, folder / "a", progress=False, force=True)
    state = tf.train.get_checkpoint_state(str(folder))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["b", "a"]
    assert state.model_checkpoint_path == str(folder / "a")
    assert state.all_model_checkpoint_timestamps[0] == first.all_model_checkpoint_timestamps[1]
    assert state.all_model_checkpoint_timestamps[1] > first.all_model_checkpoint_timestamps[1]


# -- a run that found nothing never replaces what another run published meanwhile ------------
def test_run_without_force_never_replaces_a_checkpoint_published_meanwhile(tf1_ckpt, tmp_path):
    dest = tmp_path / "out" / "model.ckpt"
    gate = tmp_path / "gate"
    first = spawn_cli("copy", tf1_ckpt, dest, "--no-progress",
                      CKPTSURGERY_FAULT="wait@destination-checked", CKPTSURGERY_FAULT_GATE=str(gate))
    try:
        deadline = time.monotonic() + 120
        while not Path(str(gate) + ".reached").exists():  # the first run found nothing there and waits
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = run_cli("edit", tf1_ckpt, dest, "--drop-optimizer", "--no-progress")
        assert second.returncode == 0, second.stderr
        published = hash_files(dest.parent)
        gate.touch()
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == EXIT_IO
    assert stderr.strip().splitlines() == [
        f"ckptsurgery: error: {dest}: a checkpoint appeared here while this run was working (another run "
        f"published it); nothing was published; pass --force to replace it"]
    assert hash_files(dest.parent) == published  # the second run's checkpoint and state file, untouched
    assert staging_dirs(dest.parent) == []


# -- the state file on a full disk -------------------------------------------------------------
@pytest.mark.parametrize("previous", [False, True], ids=["fresh", "force"])
def test_state_file_on_full_disk_undoes_the_publish(previous, tf1_ckpt, tmp_path, monkeypatch):
    from ckptsurgery.io import faults

    folder = tmp_path / "out"
    dest = folder / "model.ckpt"
    cs.copy(tf1_ckpt, folder / "other", progress=False)
    if previous:
        cs.copy(tf1_ckpt, dest, progress=False)
    before = hash_files(folder)
    faults.reset()
    monkeypatch.setenv("CKPTSURGERY_FAULT", "enospc@state-file-written")
    try:
        with pytest.raises(OutputError, match="state file failed: disk full.*the publish was undone") as info:
            cs.edit(tf1_ckpt, dest, [cs.DropOptimizer()], progress=False, force=previous)
    finally:
        faults.reset()
    assert info.value.exit_code == EXIT_IO
    assert hash_files(folder) == before  # the previous checkpoint (or none) and the state file, as they were
    assert staging_dirs(folder) == []


def test_killed_while_writing_state_file_clean_completes_it(tf1_ckpt, tmp_path):
    folder = tmp_path / "out"
    dest = folder / "model.ckpt"
    cs.copy(tf1_ckpt, folder / "other", progress=False)
    killed = subprocess.run([sys.executable, "-m", "ckptsurgery", "copy", str(tf1_ckpt), str(dest), "--no-progress"],
                            capture_output=True, text=True, timeout=120,
                            env=cli_env(CKPTSURGERY_FAULT="state-file-written"))
    assert killed.returncode == -9
    assert [f.name for f in folder.glob("checkpoint.ckptsurgery-tmp-*")]  # the dead run's temp state file
    assert tf.train.latest_checkpoint(str(folder)) == str(folder / "other")  # whole checkpoint, not yet listed

    result = run_cli("clean", folder)
    assert result.returncode == 0, result.stderr
    assert list(folder.glob("checkpoint.ckptsurgery-tmp-*")) == [] and staging_dirs(folder) == []
    assert tf.train.latest_checkpoint(str(folder)) == str(dest)  # rolled forward: listed as the run would have
    assert tf_values(str(dest)) == tf_values(str(tf1_ckpt))


def test_clean_removes_only_dead_runs_temp_state_files(tmp_path):
    from ckptsurgery.io.publish.clean import clean_actions

    dead = tmp_path / "checkpoint.ckptsurgery-tmp-999999999-0bad0bad"
    live = tmp_path / f"checkpoint.ckptsurgery-tmp-{os.getpid()}-0000beef"
    dead.write_text("model_checkpoint_path: 'x'\n")
    live.write_text("model_checkpoint_path: 'y'\n")
    actions = clean_actions(tmp_path)
    assert [(a.action, a.path) for a in actions] == [("removed-temp", str(dead))]
    assert live.exists() and not dead.exists()


def test_state_file_updates_in_one_folder_are_serialised(tmp_path):
    """Two runs publishing into one folder: the second waits for the first's read-modify-write."""
    import threading

    from ckptsurgery.io.publish.clean import clean_actions
    from ckptsurgery.io.publish.statefile import STATE_LOCK, state_file_lock, update_state_file

    update_state_file(str(tmp_path / "a"))
    with state_file_lock(tmp_path):  # another run is between reading and writing the state file
        writer = threading.Thread(target=update_state_file, args=(str(tmp_path / "b"),))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive()  # waits instead of reading a state file about to change
        assert [os.path.basename(p) for p in tf.train.get_checkpoint_state(str(tmp_path)).all_model_checkpoint_paths] \
            == ["a"]
    writer.join(10)
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["a", "b"]
    assert not (tmp_path / STATE_LOCK).exists()
    (tmp_path / STATE_LOCK).touch()  # left by a run killed while holding it: nobody holds it now
    assert [a.action for a in clean_actions(tmp_path)] == ["removed-lock"]
    assert not (tmp_path / STATE_LOCK).exists()
