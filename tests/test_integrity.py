"""Verified integrity: ``verify`` checks the index and every tensor's checksum, ``--against`` compares.

* a good checkpoint verifies (exit 0), every tensor listed;
* a flipped byte inside a tensor's data: exit 3, the tensor is named (and a bad
  slice of a partitioned variable must not take the process down);
* ``--against``: equal -> 0, different -> 1 naming the tensors; bit-exact but NaN-aware;
* a truncated or missing data shard: a clear one-line error, exit 3;
* ``copy --verify`` re-reads what it wrote, and refuses to publish a corrupted write.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.errors import BadCheckpointError, OutputError
from ckptsurgery.report.verify import DIFFERENT, OK, ONLY_HERE, ONLY_OTHER, count_differences, verify
from helpers import copy_files, flip_in, nothing_at, run_main


def save(prefix: Path, tensors: dict[str, np.ndarray]) -> str:
    """A checkpoint written by TensorFlow's SaveV2 op, with exactly these tensors."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    return str(prefix)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# -- a good checkpoint ------------------------------------------------------------------------
def test_good_checkpoint_verifies_every_tensor(tf1_ckpt, cli, capsys):
    result = cli("verify", tf1_ckpt, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report = json.loads(result.stdout)
    names = cs.open_checkpoint(tf1_ckpt).names
    assert report["ok"] and report["bad"] == [] and report["num_tensors"] == len(names)
    assert [t["name"] for t in report["tensors"]] == names
    assert {t["status"] for t in report["tensors"]} == {OK}

    rc, out, err = run_main(["verify", tf1_ckpt], capsys)  # the table form
    assert rc == 0 and err == ""
    assert "embed/table" in out and "vocab" in out
    assert out.strip().splitlines()[-1] == f"{len(names)} tensors: {len(names)} readable, 0 bad"


def test_verify_api_on_tf2_and_keras_checkpoints(tf2_ckpt, keras_ckpt):
    for prefix in (tf2_ckpt[0], keras_ckpt[0]):
        report = verify(prefix)
        assert report.ok and report.exit_code == 0
        assert "_CHECKPOINTABLE_OBJECT_GRAPH" in [t.name for t in report.tensors]
        seen = []
        verify(prefix, on_tensor=lambda check: seen.append(check.name))  # streaming: one callback per tensor
        assert seen == [t.name for t in report.tensors]


# -- corruption ---------------------------------------------------------------------------------
def test_flipped_byte_names_the_bad_tensor(tf1_ckpt, tmp_path, cli, capsys):
    bad = copy_files(tf1_ckpt, tmp_path / "bad")
    flip_in(bad, "encoder/dense/kernel")
    flip_in(bad, "embed/table", slice_number=1)  # a slice of a TF1 partitioned variable
    # A failed slice read leaves TF's reader in an error state that aborts the
    # process on the next read, unless the reader is replaced: the CLI must survive.
    result = cli("verify", bad, "--json")
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    report = json.loads(result.stdout)
    assert report["bad"] == ["embed/table", "encoder/dense/kernel"]
    statuses = {t["name"]: t["status"] for t in report["tensors"]}
    assert all(s == OK for n, s in statuses.items() if n not in report["bad"]), statuses
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("ckptsurgery: error:"), result.stderr
    assert "'embed/table'" in lines[0] and "'encoder/dense/kernel'" in lines[0]

    rc, out, err = run_main(["verify", bad], capsys)  # table: one line per bad tensor, naming it
    assert rc == 3
    problems = [line for line in out.splitlines() if line.startswith("BAD: ")]
    assert [p.split(":")[1].strip() for p in problems] == ["embed/table", "encoder/dense/kernel"]
    assert all("Checksum does not match" in p or "checksum" in p.lower() for p in problems), problems

    report = verify(bad)
    assert [t.name for t in report.bad] == ["embed/table", "encoder/dense/kernel"] and report.exit_code == 3


def test_copy_of_a_corrupt_checkpoint_fails_and_publishes_nothing(tf1_ckpt, tmp_path):
    bad = copy_files(tf1_ckpt, tmp_path / "bad")
    flip_in(bad, "head/kernel")
    out = tmp_path / "out" / "model.ckpt"
    with pytest.raises(BadCheckpointError, match="head/kernel"):
        cs.copy(bad, out, progress=False, memory_budget="100B")
    assert nothing_at(out.parent)


def test_truncated_data_shard_is_a_clear_error(tf1_ckpt, tmp_path, cli, capsys):
    bad = copy_files(tf1_ckpt, tmp_path / "bad")
    shard = Path(bad + ".data-00000-of-00001")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    result = cli("verify", bad)
    assert result.returncode == 3
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("ckptsurgery: error:"), result.stderr
    assert "data-00000-of-00001" in lines[0] and "outside its data shard" in lines[0]
    assert result.stdout == ""

    shard.unlink()
    rc, out, err = run_main(["verify", bad], capsys)
    assert rc == 3 and "data shard model.ckpt-2.data-00000-of-00001 is missing" in err
    assert len(error_lines(err)) == 1


def test_bad_against_checkpoint_is_an_input_error(tf1_ckpt, tmp_path, capsys):
    rc, out, err = run_main(["verify", tf1_ckpt, "--against", tmp_path / "nothing"], capsys)
    assert rc == 3 and err.startswith("ckptsurgery: error:") and len(error_lines(err)) == 1


# -- --against ------------------------------------------------------------------------------------
def test_against_equal_and_different(tf1_ckpt, tmp_path, cli, capsys):
    same = tmp_path / "same" / "model.ckpt"
    cs.copy(tf1_ckpt, same, progress=False, memory_budget="100B")  # other shard layout, same values
    rc, out, err = run_main(["verify", same, "--against", tf1_ckpt], capsys)
    assert rc == 0 and err == "" and out.strip().endswith("0 differences")

    values = {t.name: cs.open_checkpoint(tf1_ckpt).read(t.name) for t in cs.open_checkpoint(tf1_ckpt)}
    values["head/kernel"] = values["head/kernel"].copy()
    values["head/kernel"][1, 1] = np.nextafter(values["head/kernel"][1, 1], np.float32(np.inf))  # one ulp
    values["counts"] = values["counts"].astype(np.int64)  # dtype differs
    del values["global_step"]
    values["extra/bias"] = np.zeros(3, np.float32)
    other = save(tmp_path / "other" / "model.ckpt", values)

    result = cli("verify", other, "--against", tf1_ckpt, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    status = {t["name"]: t["status"] for t in report["tensors"]}
    assert status["head/kernel"] == DIFFERENT and status["counts"] == DIFFERENT
    assert status["extra/bias"] == ONLY_HERE and status["global_step"] == ONLY_OTHER
    assert status["encoder/dense/kernel"] == OK and status["vocab"] == OK and status["embed/table"] == OK
    assert sorted(report["differences"]) == ["counts", "extra/bias", "global_step", "head/kernel"]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("ckptsurgery: error:") and "differs from" in lines[0]

    detail = {t.name: t.detail for t in verify(other, against=tf1_ckpt).tensors}
    assert detail["head/kernel"] == "1 of 16 elements differ"
    assert "int64[5] here, int32[5] in other" == detail["counts"]

    # a bad tensor outranks differences: exit 3
    flip_in(other, "encoder/dense/bias")
    assert verify(other, against=tf1_ckpt).exit_code == 3


def test_comparison_is_bit_exact_and_nan_aware(tmp_path):
    def nan(payload: int) -> np.float32:
        return np.array([0x7FC00000 | payload], np.uint32).view(np.float32)[0]

    a = save(tmp_path / "a" / "c", {"x": np.array([nan(1), 0.0, 1.5], np.float32),
                                    "s": np.array([b"a", b"\x00b"], dtype=object),
                                    "h": np.array([np.nan, 2.0], tf.bfloat16.as_numpy_dtype)})
    b = save(tmp_path / "b" / "c", {"x": np.array([nan(7), 0.0, 1.5], np.float32),  # another NaN payload
                                    "s": np.array([b"a", b"\x00b"], dtype=object),
                                    "h": np.array([np.nan, 2.0], tf.bfloat16.as_numpy_dtype)})
    c = save(tmp_path / "c" / "c", {"x": np.array([nan(1), -0.0, 1.5], np.float32),  # -0.0 is not 0.0
                                    "s": np.array([b"a", b"b"], dtype=object),
                                    "h": np.array([np.nan, 2.015625], tf.bfloat16.as_numpy_dtype)})
    assert verify(a, against=b).ok
    report = verify(a, against=c)
    assert [t.name for t in report.differences] == ["h", "s", "x"]
    assert all(t.detail == "1 of 2 elements differ" for t in report.differences if t.name != "x")

    assert count_differences(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == 0
    assert count_differences(np.array([np.nan, 1.0]), np.array([1.0, np.nan])) == 2
    assert count_differences(np.zeros((2, 0)), np.zeros((2, 0))) == 0
    assert count_differences(np.array([1 + 2j], np.complex128), np.array([1 + 2j], np.complex128)) == 0
    assert count_differences(np.arange(4, dtype=np.int8), np.array([0, 1, 2, 4], np.int8)) == 1


# -- the writer's own checks ------------------------------------------------------------------------
def test_copy_with_verify(tf1_ckpt, tmp_path, cli):
    out = tmp_path / "out" / "model.ckpt"
    result = cli("copy", tf1_ckpt, out, "--verify", "--memory-budget", "200B", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["output"] == str(out)
    assert verify(out, against=tf1_ckpt).ok


def test_verify_refuses_to_publish_a_corrupted_write(tf1_ckpt, tmp_path, monkeypatch):
    """--verify re-reads every written value: a value altered on the way is caught before publishing."""
    from ckptsurgery.io.shard_writer import ShardWriter

    monkeypatch.setenv("CKPTSURGERY_BYTE_PATH", "0")  # the values go through add(); the byte path: test_byte_path

    add = ShardWriter.add

    def corrupting_add(self, name, array, *args, **kwargs):
        if name == "head/kernel":
            array = np.asarray(array) + np.float32(1)
        return add(self, name, array, *args, **kwargs)

    monkeypatch.setattr(ShardWriter, "add", corrupting_add)
    out = tmp_path / "out" / "model.ckpt"
    with pytest.raises(OutputError, match="verification failed: tensor 'head/kernel'"):
        cs.copy(tf1_ckpt, out, progress=False, verify=True, memory_budget="200B")
    assert nothing_at(out.parent)


# -- clean ------------------------------------------------------------------------------------------
def test_clean_reports_nothing_to_do_and_rejects_a_non_folder(tmp_path, capsys):
    rc, out, err = run_main(["clean", tmp_path], capsys)
    assert rc == 0 and out.strip() == f"nothing to clean in {tmp_path}"
    rc, out, err = run_main(["clean", tmp_path, "--json"], capsys)
    assert rc == 0 and json.loads(out)["actions"] == []
    rc, out, err = run_main(["clean", tmp_path / "missing"], capsys)
    assert rc == 4 and err.startswith("ckptsurgery: error:") and "not a folder" in err
