"""Reliability: a run killed at any instant leaves the destination absent, whole-old or whole-new.

Each case runs the real CLI in a subprocess with ``CKPTSURGERY_FAULT=POINT[:N]``,
which SIGKILLs the process at that point (see :mod:`ckptsurgery.io.faults`).  Then:

* the process died by SIGKILL, and the inputs are bit-identical;
* the destination is absent (no ``.index``), or the complete previous checkpoint
  (a ``--force`` run), or the complete new one (after the publish) -- every
  tensor read back equals the old values or the new ones, never a mix;
* recovery -- ``ckptsurgery clean DIR`` (CLI or API) or simply the next run --
  removes our staging folders only (a look-alike folder without our marker, a
  live run's folder and unrelated folders survive), puts a ``--force`` run's
  previous checkpoint back when the kill came mid-publish, removes the orphan
  data shards it had moved in, and a normal rerun then succeeds.

All crash subprocesses run up front, two at a time (each pays the TF import).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from helpers import tf_values

pytestmark = pytest.mark.slow  # crash/fuzz/hostile suite: ./scripts/test --fast skips it

BUDGET = "100B"  # tiny: the 1 KB test model is saved in many shard groups
DEST = "model.ckpt"
DECOY = ".ckptsurgery-staging-model.ckpt-decoy0001"  # named like ours, but no marker
LIVE = ".ckptsurgery-staging-model.ckpt-live0001"  # ours, owned by a live process (this one)


@dataclass(frozen=True)
class Case:
    command: str  # copy | edit | average
    point: str  # fault point; "group-saved:mid"/":last" resolved against the group count
    previous: bool  # an older checkpoint sits at the destination (the run uses --force)
    recovery: str  # cli: `ckptsurgery clean`; api: publish.clean_actions; rerun: the next run

    @property
    def id(self) -> str:
        return f"{self.command}-{self.point.replace(':', '')}-{'force' if self.previous else 'fresh'}-{self.recovery}"


CASES = [
    Case("copy", "group-saved:1", False, "api"),
    Case("copy", "group-saved:mid", True, "api"),
    Case("copy", "group-saved:last", False, "rerun"),
    Case("copy", "before-merge", True, "api"),
    Case("copy", "after-merge", False, "api"),
    Case("copy", "publish-old-moved", True, "cli"),
    Case("copy", "publish-data-moved", True, "api"),
    Case("copy", "publish-data-moved", False, "rerun"),  # orphan new shards must not block the next run
    Case("copy", "after-publish", True, "api"),
    Case("edit", "group-saved:1", True, "api"),
    Case("edit", "publish-old-moved", True, "rerun"),  # next run restores previous, then replaces it
    Case("edit", "publish-data-moved", True, "cli"),
    Case("edit", "after-publish", False, "api"),
    Case("average", "group-saved:mid", True, "api"),
    Case("average", "publish-data-moved", True, "api"),
    Case("average", "after-publish", False, "rerun"),
]


# -- helpers -----------------------------------------------------------------------------------
def hash_files(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir()) if f.is_file()}


def safe_values(prefix: str) -> dict[str, tuple]:
    """Values of the checkpoint at ``prefix``, after our validator and a full checksum pass.

    A mixed checkpoint (index of one run, data of another) could make TF's reader
    abort the test process, so it is verified first; a bad one fails the test here.
    """
    from ckptsurgery.report.verify import verify

    report = verify(prefix)
    assert report.ok, f"{prefix} does not read back whole: {report.error_line()}"
    return tf_values(prefix)


def staging_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".ckptsurgery-staging-"))


def argv_for(case: Case, env: dict, dest: Path) -> list[str]:
    src, src2 = env["src"], env["src2"]
    common = ["--memory-budget", BUDGET, "--no-progress"] + (["--force"] if case.previous else [])
    if case.command == "copy":
        return ["copy", src, str(dest), *common]
    if case.command == "edit":
        return ["edit", src, str(dest), "--drop-optimizer", *common]
    return ["average", src, src2, "--out", str(dest), *common]


def run_faulty(*args: str, fault: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m ckptsurgery`` with ``CKPTSURGERY_FAULT`` set."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), CKPTSURGERY_FAULT=fault)
    return subprocess.run([sys.executable, "-m", "ckptsurgery", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_in_process(argv: list[str]) -> int:
    from ckptsurgery.cli import main

    return main(argv)


def has_average() -> bool:
    result = run_cli("--help", timeout=60)
    return result.returncode == 0 and "\n    average " in result.stdout


# -- the crash runs, all up front --------------------------------------------------------------
@pytest.fixture(scope="module")
def crash_env(tf1_ckpt, tmp_path_factory):
    from models import write_tf1_checkpoint

    root = tmp_path_factory.mktemp("crash")
    src = tf1_ckpt
    (root / "second").mkdir()
    src2 = write_tf1_checkpoint(root / "second", seed=1)
    env = {"src": src, "src2": src2, "average": has_average()}
    env["input_hashes"] = {p: hash_files(Path(p).parent) for p in (src, src2)}

    # What a complete run writes, per command (computed in-process, deterministic).
    env["new"], env["groups"] = {}, {}
    for command in ("copy", "edit", "average"):
        if command == "average" and not env["average"]:
            continue
        ref = root / f"ref-{command}" / DEST
        assert run_in_process(argv_for(Case(command, "", False, ""), env, ref)) == 0
        env["new"][command] = tf_values(str(ref))
        env["groups"][command] = sum(1 for f in ref.parent.iterdir() if ".data-" in f.name)
        assert env["groups"][command] >= 4, "the tiny budget must give several shard groups"

    # Previous checkpoints for --force runs: the other input, so old and new values differ.
    import ckptsurgery as cs

    old_prefix = {"copy": src2, "edit": src2, "average": src}
    env["old"] = {c: tf_values(p) for c, p in old_prefix.items()}
    for command in env["new"]:
        assert env["old"][command] != env["new"][command]

    runs = {}
    jobs = []
    for case in CASES:
        if case.command == "average" and not env["average"]:
            continue
        folder = root / case.id
        folder.mkdir()
        dest = folder / DEST
        if case.previous:
            cs.copy(old_prefix[case.command], dest, progress=False)  # one shard: names differ from the new ones
        (folder / DECOY).mkdir()
        (folder / DECOY / "keep.txt").write_text("not ours")
        (folder / "unrelated").mkdir()
        (folder / "unrelated" / "notes.txt").write_text("hello")
        (folder / LIVE).mkdir()
        (folder / LIVE / "CKPTSURGERY_STAGING").write_text(json.dumps({"pid": os.getpid(), "destination": str(dest)}))
        point = case.point
        groups = env["groups"][case.command]
        point = point.replace(":mid", f":{groups // 2}").replace(":last", f":{groups}")
        jobs.append((case, folder, dest, point))

    def crash(job):
        case, folder, dest, point = job
        result = run_faulty(*argv_for(case, env, dest), fault=point)
        return case, folder, dest, point, result

    with ThreadPoolExecutor(2) as pool:
        for case, folder, dest, point, result in pool.map(crash, jobs):
            runs[case] = {"folder": folder, "dest": dest, "point": point, "result": result}
    env["runs"] = runs
    return env


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_kill_at_any_point_leaves_old_or_new_and_recovers(case, crash_env, cli):
    env = crash_env
    if case.command == "average" and not env["average"]:
        pytest.skip("the average command is not available")
    run = env["runs"][case]
    folder, dest, result = run["folder"], run["dest"], run["result"]
    new, old = env["new"][case.command], env["old"][case.command]

    # 1. it died by SIGKILL at the fault point, and never touched its inputs
    assert result.returncode == -signal.SIGKILL, (run["point"], result.returncode, result.stderr[-2000:])
    for prefix, hashes in env["input_hashes"].items():
        assert hash_files(Path(prefix).parent) == hashes, f"input {prefix} was modified"

    # 2. the destination: absent, whole-old or whole-new -- never a mix
    index = Path(str(dest) + ".index")
    committed = case.point == "after-publish"
    if index.exists():
        values = safe_values(str(dest))
        assert values in (old, new), "destination mixes the old and new checkpoints"
        assert values == (new if committed else old)
    else:
        assert not committed, "the kill came after the publish: the new checkpoint must be there"
        if case.previous:
            assert case.point in ("publish-old-moved", "publish-data-moved"), \
                "the previous checkpoint vanished before the publish began"
    ours = [d for d in staging_dirs(folder) if d not in (DECOY, LIVE)]
    assert len(ours) == 1, f"expected the dead run's staging folder, found {ours}"

    # 3. recovery
    if case.recovery == "cli":
        cleaned = cli("clean", folder, "--json")
        assert cleaned.returncode == 0, cleaned.stderr
        actions = json.loads(cleaned.stdout)["actions"]
        assert {"action": "removed-staging", "path": str(folder / ours[0]), "detail": ""} in actions
    elif case.recovery == "api":
        from ckptsurgery.io.publish.clean import clean_actions

        actions = [a.to_json() for a in clean_actions(folder)]
        assert any(a["action"] == "removed-staging" and a["path"].endswith(ours[0]) for a in actions)
    if case.recovery in ("cli", "api"):
        rolled = [a for a in actions if a["action"] == "rolled-back"]
        mid_publish = case.point in ("publish-old-moved", "publish-data-moved")
        assert bool(rolled) == (mid_publish and (case.previous or case.point == "publish-data-moved")), actions
        assert staging_dirs(folder) == sorted([DECOY, LIVE]), "clean must remove ours only, and only dead ones"
        assert not list(folder.glob("*.ckptsurgery-lock*")), "the dead run's lock must be gone"
        if committed:
            assert safe_values(str(dest)) == new
        elif case.previous:
            assert safe_values(str(dest)) == old, "the previous checkpoint must be back, whole"
        else:
            leftovers = [f.name for f in folder.iterdir() if f.name.startswith(DEST + ".")]
            assert leftovers == [], f"orphan files of the dead run remain: {leftovers}"

    # 4. a normal rerun (same command; --force only if there was a previous checkpoint)
    rerun = argv_for(case, env, dest)
    if committed and "--force" not in rerun:
        rerun.append("--force")
    assert run_in_process(rerun) == 0
    assert safe_values(str(dest)) == new
    assert staging_dirs(folder) == sorted([DECOY, LIVE])
    assert not list(folder.glob("*.ckptsurgery-lock*"))
    assert (folder / DECOY / "keep.txt").read_text() == "not ours"
    assert (folder / "unrelated" / "notes.txt").read_text() == "hello"
    assert (folder / LIVE / "CKPTSURGERY_STAGING").is_file()
    data = sorted(f.name for f in folder.iterdir() if f.name.startswith(DEST + ".data-"))
    assert len(data) == env["groups"][case.command] and all(f"-of-{len(data):05d}" in f for f in data), data
    import tensorflow as tf

    assert tf.train.latest_checkpoint(str(folder)) == str(dest)
    for prefix, hashes in env["input_hashes"].items():
        assert hash_files(Path(prefix).parent) == hashes


# -- failures that raise (not kills) roll back in-process ---------------------------------------
@pytest.mark.parametrize("point, budget", [
    ("group-saved:2", BUDGET), ("after-merge", BUDGET), ("publish-old-moved", BUDGET), ("publish-data-moved", BUDGET),
    ("publish-data-moved", "1GB"),  # one shard: the new data file has the very name of the previous one
])
def test_disk_full_mid_run_keeps_previous_checkpoint(point, budget, tf1_ckpt, tmp_path, monkeypatch):
    """A raised error (ENOSPC) anywhere, even mid-publish, restores the previous checkpoint at once."""
    import ckptsurgery as cs
    from ckptsurgery.io import faults
    from ckptsurgery.errors import OutputError

    dest = tmp_path / "out" / DEST
    cs.copy(tf1_ckpt, dest, progress=False, memory_budget="1GB")
    old = tf_values(str(dest))
    other = tmp_path / "other" / DEST
    cs.edit(tf1_ckpt, other, [cs.DropOptimizer()], progress=False)
    faults.reset()
    monkeypatch.setenv("CKPTSURGERY_FAULT", f"enospc@{point}")
    try:
        with pytest.raises(OutputError, match="disk full"):
            cs.edit(tf1_ckpt, dest, [cs.DropOptimizer()], progress=False, memory_budget=budget, force=True)
    finally:
        faults.reset()
    monkeypatch.delenv("CKPTSURGERY_FAULT")
    assert tf_values(str(dest)) == old
    assert staging_dirs(dest.parent) == []
    assert sorted(f.name for f in dest.parent.iterdir()) == sorted(
        ["checkpoint", DEST + ".index", DEST + ".data-00000-of-00001"])


def test_journal_names_outside_the_folder_are_never_acted_on(tmp_path):
    """A hand-made (or corrupt) journal pointing elsewhere must not make clean delete or move files there."""
    from ckptsurgery.io.publish.clean import clean_actions
    from ckptsurgery.io.publish.journal import JOURNAL
    from ckptsurgery.io.publish.staging import MARKER

    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (victim / "model.ckpt.data-00000-of-00001").write_text("precious")
    work = tmp_path / "work"
    staging = work / ".ckptsurgery-staging-model.ckpt-0bad0bad"
    (staging / "previous").mkdir(parents=True)
    (staging / "previous" / "model.ckpt.index").write_text("old index")
    (staging / MARKER).write_text(json.dumps({"pid": 999999999, "destination": str(victim / "model.ckpt")}))
    (staging / JOURNAL).write_text(json.dumps({
        "destination": str(victim / "model.ckpt"), "new_index": "model.ckpt.index",
        "new_data": ["model.ckpt.data-00000-of-00001", "../../etc/passwd"], "previous": []}))
    actions = clean_actions(work)
    assert [a.action for a in actions] == ["kept-previous"]
    assert (victim / "model.ckpt.data-00000-of-00001").read_text() == "precious"
    assert staging.is_dir() and (staging / "previous" / "model.ckpt.index").is_file()


def test_a_failed_run_leaves_no_folders_of_its_own_making(tf1_ckpt, tmp_path, monkeypatch):
    """The destination is as the run found it: the folders it created for the output go again,
    an existing folder (with another file in it) stays."""
    import ckptsurgery as cs
    from ckptsurgery.io import faults
    from ckptsurgery.errors import OutputError

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("someone else's file")
    for dest in (tmp_path / "new" / "deeper" / DEST, kept / "new" / DEST):
        faults.reset()
        monkeypatch.setenv("CKPTSURGERY_FAULT", "enospc@after-merge")
        try:
            with pytest.raises(OutputError, match="disk full"):
                cs.copy(tf1_ckpt, dest, progress=False)
        finally:
            faults.reset()
        monkeypatch.delenv("CKPTSURGERY_FAULT")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
