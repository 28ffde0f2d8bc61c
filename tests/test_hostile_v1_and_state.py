"""Hostile V1 files and ``checkpoint`` state files never crash, hang, publish or modify their input.

Seeded mutations of a real V1 checkpoint written by TF (truncations, bit flips, random
bytes, an LFS pointer, text) and hand-built V1 tables whose metadata or data entries are
hostile but whose block checksums are valid; and state files that point outside their
folder, at a missing file, at themselves, or are garbage, binary or huge.  Each runs
``inspect``, ``verify`` and ``copy`` through the CLI's ``main`` in a subprocess (the driver
of test_hostile_input), with the same checks.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from ckptsurgery.io.table import parse_table
from index_writer import build_table
from models import write_tf1_v1_checkpoint
from test_hostile_input import LFS_POINTER, OK_CODES, TIMEOUT, published, run_driver, snapshot

pytestmark = pytest.mark.slow  # crash/fuzz/hostile suite: ./scripts/test --fast skips it


@pytest.fixture(scope="module")
def v1_file(tmp_path_factory) -> str:
    return write_tf1_v1_checkpoint(tmp_path_factory.mktemp("v1src"))


def _slices_pb2():
    from tensorflow.core.util import saved_tensor_slice_pb2

    return saved_tensor_slice_pb2


def _rewrite(kvs, key: bytes, fn) -> list[tuple[bytes, bytes]]:
    """kvs with the SavedTensorSlices under ``key`` changed by ``fn`` (None from fn deletes it)."""
    out = []
    for k, v in kvs:
        if k == key:
            msg = _slices_pb2().SavedTensorSlices()
            msg.ParseFromString(v)
            if fn(msg) is False:
                continue
            v = msg.SerializeToString()
        out.append((k, v))
    return out


def _meta_tensor(name: str, fn):
    def edit(msg):
        for t in msg.meta.tensor:
            if t.name == name:
                fn(t)
    return edit


def _data_key(kvs, name: str) -> bytes:
    return next(k for k, _ in kvs if k[:1] == b"\x00" and name.encode() + b"\x00\x01" in k)


def v1_cases(v1_file: str) -> list[tuple[str, bytes]]:
    """(case id, bytes of the V1 file)."""
    data = Path(v1_file).read_bytes()
    rng = random.Random(20261126)
    size = len(data)
    cases = [(f"v1-truncate-{n}", data[:n]) for n in sorted({1, 47, size // 3, size // 2, size - 49, size - 1})]
    for i in range(8):
        bit = rng.randrange(size * 8)
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        cases.append((f"v1-flip-{i}", bytes(flipped)))
    cases += [("v1-random", rng.randbytes(size)), ("v1-zero", b""), ("v1-lfs", LFS_POINTER),
              ("v1-text", b"not a checkpoint\n" * 40),
              ("v1-random-with-magic", rng.randbytes(size - 8) + data[-8:])]
    kvs = parse_table(data)

    def dims(*d):
        def fn(t):
            del t.shape.dim[:]
            for x in d:
                t.shape.dim.add().size = x
        return fn

    def set_dtype(v):
        def fn(t):
            t.type = v
        return fn

    def drop_slices(t):
        del t.slice[:]

    def dup_slice(t):
        t.slice.add().CopyFrom(t.slice[0])

    edits = {
        "meta-huge-shape": (b"", _meta_tensor("head/kernel", dims(1 << 41, 2))),
        "meta-negative-dim": (b"", _meta_tensor("head/kernel", dims(-3, 2))),
        "meta-many-dims": (b"", _meta_tensor("counts", dims(*([1] * 300)))),
        "meta-dtype-bogus": (b"", _meta_tensor("counts", set_dtype(999))),
        "meta-dtype-variant": (b"", _meta_tensor("counts", set_dtype(21))),
        "meta-dtype-int32": (b"", _meta_tensor("head/kernel", set_dtype(3))),
        "meta-no-slices": (b"", _meta_tensor("counts", drop_slices)),
        "meta-dup-slice": (b"", _meta_tensor("embed/table", dup_slice)),
        "meta-slice-outside": (b"", _meta_tensor("embed/table", dims(5, 3))),
        "meta-not-a-proto": (b"", lambda m: m.ParseFromString(b"")),
        "data-missing": (_data_key(kvs, "head/kernel"), lambda m: False),
        "data-short": (_data_key(kvs, "head/kernel"), lambda m: m.data.data.float_val.pop()),
        "data-renamed": (_data_key(kvs, "counts"), lambda m: setattr(m.data, "name", "other")),
        "data-wrong-type": (_data_key(kvs, "counts"), lambda m: m.data.data.float_val.extend([1.0] * 5)),
        "data-content-size": (_data_key(kvs, "head/kernel"), lambda m: setattr(m.data.data, "tensor_content", b"x" * 7)),
    }
    for case_id, (key, fn) in edits.items():
        table, _ = build_table(_rewrite(kvs, key, fn))
        cases.append((f"v1-{case_id}", table))
    table, _ = build_table([(b"\x00x", b"")])  # a valid table with no metadata entry
    cases.append(("v1-no-meta", table))
    return cases


def state_cases(tmp_path: Path, v1_file: str) -> list[tuple[str, bytes | str]]:
    """(case id, state file contents); the folder beside it holds no checkpoint."""
    elsewhere = tmp_path / "elsewhere"
    if not elsewhere.exists():
        elsewhere.mkdir()
        shutil.copy(v1_file, elsewhere / "model.ckpt")
    rng = random.Random(7)
    return [
        ("state-outside-abs", f'model_checkpoint_path: "{elsewhere / "model.ckpt"}"\n'),
        ("state-outside-rel", 'model_checkpoint_path: "../../elsewhere/model.ckpt"\n'),
        ("state-missing", 'model_checkpoint_path: "model.ckpt-404"\n'),
        ("state-itself", 'model_checkpoint_path: "checkpoint"\n'),
        ("state-folder", 'model_checkpoint_path: "."\n'),
        ("state-empty-path", 'model_checkpoint_path: ""\n'),
        ("state-nul", 'model_checkpoint_path: "a\\000b"\n'),
        ("state-garbage", "model_checkpoint_path {{{ ]]\n\x1b[31mred"),
        ("state-binary", rng.randbytes(4096)),
        ("state-empty", b""),
        ("state-huge", 'all_model_checkpoint_paths: "x"\n' * 60000),
        ("state-long-path", 'model_checkpoint_path: "' + "a/" * 3000 + 'm"\n'),
    ]


def test_hostile_v1_files_and_state_files(v1_file, tmp_path):
    prepared: dict[str, tuple[str, dict]] = {}
    for case_id, content in v1_cases(v1_file):
        folder = tmp_path / case_id / "in"
        folder.mkdir(parents=True)
        (folder / "model.ckpt-7").write_bytes(content)
        prepared[case_id] = (str(folder / "model.ckpt-7"), snapshot(folder))
    for case_id, content in state_cases(tmp_path, v1_file):
        folder = tmp_path / case_id / "in"
        folder.mkdir(parents=True)
        state = folder / "checkpoint"
        state.write_bytes(content if isinstance(content, bytes) else content.encode())
        prepared[case_id] = (str(folder), snapshot(folder))
    workdir = tmp_path / "driver"
    workdir.mkdir()
    jobs = []
    for case_id, (path, _) in prepared.items():
        dest = tmp_path / case_id / "out" / "model.ckpt"
        for command, argv in (("inspect", ["inspect", path]), ("verify", ["verify", path]),
                              ("copy", ["copy", path, str(dest), "--memory-budget", "200B", "--no-progress"])):
            jobs.append({"label": f"{case_id}:{command}", "argv": argv, "command": command, "dest": str(dest),
                         "stdout": str(workdir / f"{len(jobs)}.out"), "stderr": str(workdir / f"{len(jobs)}.err")})
    proc, progress = run_driver(jobs, workdir, per_command=TIMEOUT)
    assert proc is not None and proc.returncode != 124, f"HANG while running {progress}"
    assert proc.returncode == 0, f"CRASH (returncode {proc.returncode}) while running {progress}: {proc.stderr[-1500:]}"
    results = json.loads((workdir / "jobs.json.results").read_text())
    assert len(results) == len(jobs)
    # inspect reads only metadata, so data entries and a dtype that disagrees with its data are
    # caught when tensors are read; extra values of another type (TF ignores them) are harmless.
    hostile = {c for c in prepared if c.startswith(("state-", "v1-meta-", "v1-data-")) and c != "v1-data-wrong-type"}
    must_fail = {"inspect": {c for c in hostile if not c.startswith("v1-data-") and c != "v1-meta-dtype-int32"},
                 "verify": hostile, "copy": hostile}
    failures = []
    for job, res in zip(jobs, results):
        rc = res["rc"]
        stderr = Path(job["stderr"]).read_text(errors="replace")
        lines = [line for line in stderr.splitlines() if line.strip()]
        where = f"{job['label']} (exit {rc})"
        if "Traceback" in stderr or rc == "traceback" or rc not in OK_CODES:
            failures.append(f"{where}: {stderr[-800:]}")
            continue
        if rc == 0 and job["label"].split(":")[0] in must_fail[job["command"]]:
            failures.append(f"{where}: accepted a hostile input")
        if rc != 0 and (len(lines) != 1 or not lines[0].startswith("ckptsurgery: error:")):
            failures.append(f"{where}: stderr is not one 'ckptsurgery: error:' line: {stderr[-800:]!r}")
        if "\x1b" in stderr:
            failures.append(f"{where}: raw escape byte in the message")
        if job["command"] == "copy" and rc != 0 and published(Path(job["dest"])):
            failures.append(f"{where}: failed but left {published(Path(job['dest']))} at the destination")
    for case_id, (path, before) in prepared.items():
        folder = Path(path) if os.path.isdir(path) else Path(path).parent
        if snapshot(folder) != before:
            failures.append(f"{case_id}: the input files were modified")
    assert not failures, "\n".join(failures[:20])


def test_state_file_of_a_moved_folder_names_the_checkpoint_inside_it(v1_file, tmp_path, cli):
    """TF writes absolute paths; after the folder is copied they name the old place. The copy's own
    checkpoint is the one meant, never the other folder's (which may hold another run)."""
    import ckptsurgery as cs

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    shutil.copy(v1_file, old / "model.ckpt")
    shutil.copytree(old, new)
    (new / "checkpoint").write_text(f'model_checkpoint_path: "{old / "model.ckpt"}"\n')
    assert cs.open_checkpoint(new).prefix == str(new / "model.ckpt")
    (new / "model.ckpt").unlink()
    with pytest.raises(cs.BadCheckpointError, match="outside its folder"):
        cs.open_checkpoint(new)
