"""Hostile input: corrupt, truncated, hand-crafted or missing files never crash, hang or publish.

The fuzz test mutates copies of real index and data files (truncations at many
offsets, bit flips, random bytes, zero-length files, rewritten index entries with
huge shapes or out-of-range offsets, Git LFS pointers, a directory, a FIFO or a
symlink loop where a file should be) and runs ``inspect``, ``verify`` and ``copy``
on each through the CLI's ``main`` in subprocesses (a few cases per process, to
pay TensorFlow's import once per batch; each command's stdout/stderr captured at
the file-descriptor level, so C++ output counts too).  For every command:

* the process never dies (no negative return code) and never hangs (timeout);
* no Python traceback; exit code in {0, 1, 3, 4} (never 2 for a file problem);
* a non-zero exit prints exactly one line, starting with ``ckptsurgery: error:``;
* a non-zero ``copy`` publishes nothing (no index, no data, no staging, no lock);
* the (mutated) input files are left exactly as they were.

Edge inputs (not a checkpoint, missing shard, unreadable folder, disk full) run
in-process; two runs racing for one destination run as real processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT

from ckptsurgery.io.index import read_index
from index_writer import rewrite_entry

pytestmark = pytest.mark.slow  # crash/fuzz/hostile suite: ./scripts/test --fast skips it

OK_CODES = {0, 1, 3, 4}
CASES_PER_PROCESS = 8
TIMEOUT = 60.0  # seconds per command: longer is a hang
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 1091\n"


def _set_dims(*dims: int):
    def fn(entry):
        del entry.shape.dim[:]
        for d in dims:
            entry.shape.dim.add().size = d
    return fn


# -- the mutations ------------------------------------------------------------------------------
def _file_mutations(kind: str, size: int, rng: random.Random, flips: int, truncs: list[int]) -> list[tuple]:
    muts = [(f"{kind}-truncate-{n}", kind, "truncate", n) for n in truncs]
    muts += [(f"{kind}-flip-{i}", kind, "flip", rng.randrange(size * 8)) for i in range(flips)]
    muts += [(f"{kind}-random", kind, "random", rng.randrange(1 << 30))]
    return muts


def build_cases(tf1: str, tf2: str) -> list[tuple]:
    """(id, source prefix, target file kind, action, argument)."""
    rng = random.Random(20240611)
    cases = []
    for src, tag, flips in ((tf1, "tf1", 6), (tf2, "tf2", 3)):
        isize = os.path.getsize(src + ".index")
        dsize = os.path.getsize(src + ".data-00000-of-00001")
        truncs_i = sorted({1, 17, isize // 3, isize // 2, isize - 49, isize - 48, isize - 5, isize - 1})
        truncs_d = sorted({1, dsize // 2, dsize - 1})
        if tag == "tf2":
            truncs_i, truncs_d = [isize // 2, isize - 48, isize - 1], [dsize // 3, dsize - 1]
        for mid, kind, action, arg in (_file_mutations("index", isize, rng, flips, truncs_i)
                                       + _file_mutations("data", dsize, rng, flips - 1, truncs_d)):
            cases.append((f"{tag}-{mid}", src, kind, action, arg))
    for kind in ("index", "data"):
        for action in ("zero", "lfs", "directory", "text"):
            cases.append((f"tf1-{kind}-{action}", tf1, kind, action, None))
    cases.append(("tf1-data-fifo", tf1, "data", "fifo", None))
    cases.append(("tf1-data-symlink-loop", tf1, "data", "symlink-loop", None))
    cases.append(("tf1-data-missing", tf1, "data", "missing", None))
    # A bad checksum in a slice of a partitioned variable (TF's reader then needs replacing).
    table = sorted(read_index(tf1).slice_entries["embed/table"], key=lambda e: e.offset)[0]
    cases.append(("tf1-data-flip-in-slice", tf1, "data", "flip", (table.offset + 2) * 8 + 3))
    # Hand-crafted index entries (valid table checksums, hostile contents).
    entries = [
        ("partitioned-huge-rows", "embed/table", _set_dims(1 << 38, 3)),  # slices no longer cover it
        ("partitioned-absurd", "embed/table", _set_dims(1 << 41, 3)),
        ("huge-shape", "head/kernel", _set_dims(1 << 20, 1 << 20)),
        ("many-dims", "counts", _set_dims(*([1] * 300))),
        ("offset-past-end", "head/kernel", lambda e: setattr(e, "offset", e.offset + (1 << 40))),
        ("size-past-end", "vocab", lambda e: setattr(e, "size", e.size + 1000)),
        ("shard-id", "counts", lambda e: setattr(e, "shard_id", 7)),
        ("dtype-int32", "head/kernel", lambda e: setattr(e, "dtype", 3)),  # same size: reads as ints
        ("dtype-string", "counts", lambda e: setattr(e, "dtype", 7)),
        ("dtype-bogus", "counts", lambda e: setattr(e, "dtype", 999)),
        ("crc-field", "encoder/dense/bias", lambda e: setattr(e, "crc32c", e.crc32c ^ 1)),
        ("header-num-shards", "", lambda h: setattr(h, "num_shards", 3)),
        ("header-version", "", lambda h: setattr(h.version, "min_consumer", 99)),
    ]
    for mid, name, fn in entries:
        cases.append((f"tf1-entry-{mid}", tf1, "entry", name, fn))
    return cases


def make_case(case: tuple, folder: Path) -> str:
    """Copy the source checkpoint into ``folder`` and apply the mutation; returns the prefix."""
    case_id, src, kind, action, arg = case
    folder.mkdir(parents=True)
    base = Path(src).name
    for f in Path(src).parent.iterdir():
        if f.name == base + ".index" or f.name.startswith(base + ".data-"):
            shutil.copy(f, folder / f.name)
    prefix = str(folder / base)
    if kind == "entry":
        rewrite_entry(prefix, action, arg)
        return prefix
    target = Path(prefix + (".index" if kind == "index" else ".data-00000-of-00001"))
    data = bytearray(target.read_bytes())
    if action == "truncate":
        target.write_bytes(bytes(data[:arg]))
    elif action == "flip":
        data[arg // 8] ^= 1 << (arg % 8)
        target.write_bytes(bytes(data))
    elif action == "random":
        target.write_bytes(random.Random(arg).randbytes(len(data)))
    elif action == "zero":
        target.write_bytes(b"")
    elif action == "lfs":
        target.write_bytes(LFS_POINTER)
    elif action == "text":
        target.write_text("this is not a checkpoint\n" * 20)
    elif action == "directory":
        target.unlink()
        target.mkdir()
        (target / "inner").write_text("x")
    elif action == "fifo":
        target.unlink()
        os.mkfifo(target)
    elif action == "symlink-loop":
        target.unlink()
        os.symlink(target.name, target)
    elif action == "missing":
        target.unlink()
    return prefix


def snapshot(folder: Path) -> dict[str, str]:
    """Hashes of the regular files (never open a FIFO: it would block)."""
    out = {}
    for f in sorted(folder.rglob("*")):
        st = os.lstat(f)
        key = str(f.relative_to(folder))
        if stat.S_ISREG(st.st_mode):
            out[key] = hashlib.sha256(f.read_bytes()).hexdigest()
        else:
            out[key] = stat.filemode(st.st_mode)[0]
    return out


# The driver: runs ckptsurgery's CLI main() for several commands in one process, each with
# its own stdout/stderr files (fd-level redirection: TensorFlow's C++ output is captured too).
DRIVER = r"""
import json, os, sys, threading, time, traceback
jobs = json.loads(open(sys.argv[1]).read())
limit = float(sys.argv[2])
results = []
saved = os.dup(1), os.dup(2)
current = {"label": None, "started": time.time()}

def watchdog():  # one command running longer than the limit is a hang: stop the process
    while True:
        time.sleep(0.5)
        if current["label"] is not None and time.time() - current["started"] > limit:
            os._exit(124)

threading.Thread(target=watchdog, daemon=True).start()
from ckptsurgery.cli import main
for job in jobs:
    with open(sys.argv[1] + ".progress", "w") as f:
        f.write(job["label"])
    current.update(label=job["label"], started=time.time())
    out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(out, 1); os.dup2(err, 2)
    started = time.time()
    try:
        rc = main(job["argv"])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 2
    except BaseException:
        traceback.print_exc()
        rc = "traceback"
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        os.close(out); os.close(err)
    current["label"] = None
    results.append({"label": job["label"], "rc": rc, "seconds": time.time() - started})
with open(sys.argv[1] + ".results", "w") as f:
    json.dump(results, f)
"""


def run_driver(jobs: list[dict], workdir: Path, per_command: float) -> tuple[subprocess.CompletedProcess | None, str]:
    spec = workdir / "jobs.json"
    spec.write_text(json.dumps(jobs))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    env.pop("CKPTSURGERY_FAULT", None)
    try:
        proc = subprocess.run([sys.executable, "-c", DRIVER, str(spec), str(per_command)], capture_output=True,
                              text=True, timeout=60 + per_command * len(jobs), env=env)
    except subprocess.TimeoutExpired:
        proc = None
    progress = workdir / "jobs.json.progress"
    return proc, progress.read_text() if progress.exists() else "(none)"


def published(dest: Path) -> list[str]:
    if not dest.parent.exists():
        return []
    return sorted(f.name for f in dest.parent.iterdir())


# -- the fuzz test --------------------------------------------------------------------------------
def test_fuzzed_checkpoints_never_crash_hang_or_publish(tf1_ckpt, tf2_ckpt, tmp_path):
    cases = build_cases(tf1_ckpt, tf2_ckpt[0])
    batches = [cases[i:i + CASES_PER_PROCESS] for i in range(0, len(cases), CASES_PER_PROCESS)]
    prepared = {}
    for case in cases:
        folder = tmp_path / case[0] / "in"
        prefix = make_case(case, folder)
        prepared[case[0]] = (prefix, snapshot(folder))

    def run_batch(index_batch):
        index, batch = index_batch
        workdir = tmp_path / f"batch-{index:02d}"
        workdir.mkdir()
        jobs = []
        for case in batch:
            prefix = prepared[case[0]][0]
            dest = tmp_path / case[0] / "out" / "model.ckpt"
            for command, argv in (("inspect", ["inspect", prefix]),
                                  ("verify", ["verify", prefix]),
                                  ("copy", ["copy", prefix, str(dest), "--memory-budget", "200B", "--no-progress"])):
                label = f"{case[0]}:{command}"
                jobs.append({"label": label, "argv": argv, "case": case[0], "command": command, "dest": str(dest),
                             "stdout": str(workdir / f"{len(jobs)}.out"), "stderr": str(workdir / f"{len(jobs)}.err")})
        proc, progress = run_driver(jobs, workdir, per_command=TIMEOUT)
        return jobs, proc, progress, workdir

    failures = []
    tried = 0
    codes: dict[str, Counter] = {"inspect": Counter(), "verify": Counter(), "copy": Counter()}
    with ThreadPoolExecutor(2) as pool:
        for jobs, proc, progress, workdir in pool.map(run_batch, enumerate(batches)):
            if proc is None:
                failures.append(f"HANG: timed out while running {progress}")
                continue
            if proc.returncode == 124:
                failures.append(f"HANG: {progress} ran longer than {TIMEOUT:.0f}s")
                continue
            if proc.returncode != 0:
                job = next((j for j in jobs if j["label"] == progress), None)
                tail = Path(job["stderr"]).read_text(errors="replace")[-1500:] if job else proc.stderr[-1500:]
                failures.append(f"CRASH (returncode {proc.returncode}) while running {progress}: {tail}")
                continue
            results = json.loads((workdir / "jobs.json.results").read_text())
            for job, res in zip(jobs, results):
                tried += 1
                rc = res["rc"]
                codes[job["command"]][rc] += 1
                stderr = Path(job["stderr"]).read_text(errors="replace")
                lines = [line for line in stderr.splitlines() if line.strip()]
                where = f"{job['label']} (exit {rc})"
                if "Traceback" in stderr or rc == "traceback":
                    failures.append(f"{where}: traceback: {stderr[-1500:]}")
                    continue
                if rc not in OK_CODES:
                    failures.append(f"{where}: exit code not in {sorted(OK_CODES)}: {stderr[-500:]}")
                if rc != 0 and (len(lines) != 1 or not lines[0].startswith("ckptsurgery: error:")):
                    failures.append(f"{where}: stderr is not one 'ckptsurgery: error:' line: {stderr[-800:]!r}")
                if res["seconds"] > TIMEOUT:
                    failures.append(f"{where}: took {res['seconds']:.0f}s")
                if job["command"] == "copy":
                    dest = Path(job["dest"])
                    files = published(dest)
                    if rc != 0 and files:
                        failures.append(f"{where}: failed but left {files} at the destination")
                    if rc == 0 and "model.ckpt.index" not in files:
                        failures.append(f"{where}: succeeded without publishing")
    for case_id, (prefix, before) in prepared.items():
        if snapshot(Path(prefix).parent) != before:
            failures.append(f"{case_id}: the input files were modified")
    print(f"\nhostile input: {len(cases)} mutated checkpoints x 3 commands = {tried} runs checked; exit codes: "
          + "; ".join(f"{c} {dict(sorted(n.items(), key=str))}" for c, n in codes.items()))
    assert tried == 3 * len(cases) or failures
    assert not failures, "\n".join(failures[:20])


# -- edge inputs, in-process -------------------------------------------------------------------------
def run_main(argv, capsys) -> tuple[int, str, list[str]]:
    from ckptsurgery.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, [line for line in err.splitlines() if line.strip()]


def test_not_a_checkpoint(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    for argv in (["inspect", text], ["verify", text], ["copy", text, tmp_path / "out" / "m"]):
        rc, out, err = run_main(argv, capsys)
        assert rc == 3 and len(err) == 1 and err[0].startswith("ckptsurgery: error:"), (argv, err)
        assert "not a checkpoint" in err[0]
    (tmp_path / "fake.index").write_text("hello\n")  # a .index that is text
    rc, out, err = run_main(["inspect", tmp_path / "fake"], capsys)
    assert rc == 3 and len(err) == 1 and "fake.index" in err[0]
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_missing_data_shard(tf1_ckpt, tmp_path, capsys):
    prefix = make_case(("missing", tf1_ckpt, "data", "missing", None), tmp_path / "in")
    for argv in (["inspect", prefix], ["verify", prefix], ["copy", prefix, tmp_path / "out" / "m"]):
        rc, out, err = run_main(argv, capsys)
        assert rc == 3 and len(err) == 1, (argv, err)
        assert "data shard model.ckpt-2.data-00000-of-00001 is missing" in err[0]
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything; permission checks do not apply")
def test_unreadable_folder(tf1_ckpt, tmp_path, capsys):  # pragma: no cover - runs as non-root only
    folder = tmp_path / "locked"
    prefix = make_case(("locked", tf1_ckpt, "entry", "", lambda h: None), folder)
    folder.chmod(0)
    try:
        for argv in (["inspect", prefix], ["inspect", folder], ["copy", prefix, tmp_path / "out" / "m"]):
            rc, out, err = run_main(argv, capsys)
            assert rc in (3, 4) and len(err) == 1 and err[0].startswith("ckptsurgery: error:"), (argv, err)
        out_dir = tmp_path / "ro"
        out_dir.mkdir()
        out_dir.chmod(0o500)
        folder.chmod(0o700)
        rc, out, err = run_main(["copy", prefix, out_dir / "m"], capsys)
        assert rc == 4 and len(err) == 1, err
    finally:
        folder.chmod(0o700)


def test_unwritable_destination(tf1_ckpt, tmp_path, capsys):
    """A destination folder that is a file (or under one): exit 4, one line, nothing written."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for dest in (blocker / "m", blocker / "sub" / "m"):
        rc, out, err = run_main(["copy", tf1_ckpt, dest], capsys)
        assert rc == 4 and len(err) == 1 and err[0].startswith("ckptsurgery: error:"), err
    assert blocker.read_text() == "x"


def test_disk_full_is_one_line_exit_4_and_publishes_nothing(tf1_ckpt, tmp_path, capsys, monkeypatch):
    from ckptsurgery.io import faults

    dest = tmp_path / "out" / "model.ckpt"
    monkeypatch.setenv("CKPTSURGERY_FAULT", "enospc@group-saved:1")
    faults.reset()
    try:
        rc, out, err = run_main(["copy", tf1_ckpt, dest, "--memory-budget", "200B"], capsys)
    finally:
        faults.reset()
    assert rc == 4 and len(err) == 1, err
    assert err[0].startswith("ckptsurgery: error:") and "disk full" in err[0] and "nothing was published" in err[0]
    assert published(dest) == [], "staging, lock or partial files left behind"


# -- two runs, one destination -------------------------------------------------------------------------
def test_a_held_lock_fails_the_second_run_cleanly(tf1_ckpt, tmp_path, capsys):
    dest = tmp_path / "out" / "model.ckpt"
    dest.parent.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        Path(str(dest) + ".ckptsurgery-lock").write_text(str(sleeper.pid))
        rc, out, err = run_main(["copy", tf1_ckpt, dest], capsys)
        assert rc == 4 and len(err) == 1, err
        assert f"another ckptsurgery run (pid {sleeper.pid}) is writing this destination" in err[0]
        assert published(dest) == ["model.ckpt.ckptsurgery-lock"]
    finally:
        sleeper.kill()
        sleeper.wait()
    rc, out, err = run_main(["copy", tf1_ckpt, dest], capsys)  # the owner is gone: lock taken over
    assert rc == 0, err
    assert "model.ckpt.ckptsurgery-lock" not in published(dest)


def test_two_concurrent_runs_one_wins_the_other_fails_cleanly(tf1_ckpt, tmp_path):
    from models import write_tf1_checkpoint

    from ckptsurgery.report.verify import verify

    (tmp_path / "b").mkdir()
    other = write_tf1_checkpoint(tmp_path / "b", seed=3)
    dest = tmp_path / "out" / "model.ckpt"
    # Whoever takes the lock first pauses 4 s after its first shard group, so the runs overlap.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT),
               CKPTSURGERY_FAULT="pause@group-saved:1", CKPTSURGERY_FAULT_PAUSE="4")
    procs = [subprocess.Popen([sys.executable, "-m", "ckptsurgery", "copy", src, str(dest), "--memory-budget", "200B"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for src in (tf1_ckpt, other)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 4], results
    winner = next(i for i, (rc, _, _) in enumerate(results) if rc == 0)
    loser_err = [line for line in results[1 - winner][2].splitlines() if line.strip()]
    assert len(loser_err) == 1 and loser_err[0].startswith("ckptsurgery: error:"), loser_err
    assert "another ckptsurgery run" in loser_err[0] or "already exists" in loser_err[0]
    assert verify(dest, against=(tf1_ckpt, other)[winner]).ok, "the result must be the winner's, whole"
    assert [f for f in published(dest) if "ckptsurgery" in f] == []


def test_entry_fast_decoder_agrees_with_protobuf_or_steps_aside(tf1_ckpt, tf2_ckpt):
    """Index entries in TF's plain encoding are decoded without protobuf objects (inspect of 200k
    tensors); on every real entry and on thousands of mutated ones (bit flips, truncations, bytes
    inserted), the fast decoder either gives exactly protobuf's fields or returns None, so protobuf
    still decides (and refuses) everything unusual."""
    from ckptsurgery.io.index import _decode_entry_proto, _decode_plain_entry, _decode_tf_entry, _Malformed

    def tf_order(value):
        try:
            return _decode_tf_entry(value)
        except IndexError:
            return None
    from ckptsurgery.io.table import parse_table

    values = []
    for prefix in (tf1_ckpt, tf2_ckpt[0]):
        values += [v for k, v in parse_table(Path(prefix + ".index").read_bytes())[1:]]
    rng = random.Random(7)
    mutated = []
    for _ in range(6000):
        v = bytearray(rng.choice(values))
        kind = rng.randrange(3)
        if kind == 0 and v:
            v[rng.randrange(len(v))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            v = v[:rng.randrange(len(v) + 1)]
        else:
            v[rng.randrange(len(v) + 1):0] = bytes([rng.choice((0x08, 0x12, 0x18, 0x20, 0x28, 0x35, 0x80, 0xFF, 0))])
        mutated.append(bytes(v))
    for decoder in (_decode_plain_entry, tf_order):
        fast_count = 0
        for value in values + mutated:
            fast = decoder(value)
            if fast is None:
                continue
            fast_count += 1
            try:
                slow = _decode_entry_proto(value, "t")
            except _Malformed:
                pytest.fail(f"{decoder.__name__} accepted what protobuf refuses: {value!r}")
            assert fast[:7] == slow[:7] and not slow[7], value
        assert all(decoder(v) is not None for v in values if b"\x3a" not in v)  # TF's own: fast
        assert fast_count > len(values)
