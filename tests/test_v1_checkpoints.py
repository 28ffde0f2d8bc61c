"""Pre-0.12 (V1) checkpoints: one SSTable file, no ``.index``; every reading command takes them.

The V1 files are written by TensorFlow itself (``Saver(write_version=V1)``), the V2
outputs are restored with ``Saver.restore`` and compared value by value with what
TensorFlow restores from the V1 original.  Bad V1 input gets one line and exit 3.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import ckptsurgery as cs
from models import _build_tf1_graph, restore_tf1, tf


@pytest.fixture(scope="module")
def v1(tmp_path_factory) -> dict[str, str]:
    """A V1 file ``model.ckpt-2`` (with its state file) and a sharded V1 ``export-?????-of-00001``."""
    folder = tmp_path_factory.mktemp("v1")
    (folder / "sh").mkdir()
    with tf.Graph().as_default():
        train = _build_tf1_graph(seed=3)
        v1_format = tf.compat.v1.train.SaverDef.V1
        saver = tf.compat.v1.train.Saver(write_version=v1_format)
        sharded = tf.compat.v1.train.Saver(write_version=v1_format, sharded=True)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train)
            sess.run(train)
            single = saver.save(sess, str(folder / "model.ckpt"), global_step=2)
            pattern = sharded.save(sess, str(folder / "sh" / "export"))
    assert not os.path.exists(single + ".index") and os.path.isfile(single)
    return {"folder": str(folder), "file": single, "pattern": pattern, "shard": str(folder / "sh" / "export-00000-of-00001")}


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("how", ["file", "pattern"])  # folder and shard: see the next test
def test_v1_checkpoint_copies_to_v2_that_saver_restores(v1, tmp_path, how):
    out = tmp_path / "out" / "model.ckpt"
    result = cs.copy(v1[how], out, progress=False, memory_budget="200B")  # many groups, parts streamed
    assert result.tensors == 17
    assert os.path.isfile(str(out) + ".index")  # the output is always V2
    _assert_same(restore_tf1(v1["file"]), restore_tf1(str(out)))


def test_inspect_names_the_v1_format(v1, cli):
    run = cli("inspect", v1["folder"], "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["kind"] == "tf1-v1"
    assert summary["prefix"] == v1["file"]
    shapes = {t["name"]: t["shape"] for t in summary["tensors"]}
    assert shapes["embed/table"] == [10, 3] and shapes["global_step"] == []
    ckpt = cs.open_checkpoint(v1["pattern"])
    assert ckpt.format == "v1" and ckpt.info("embed/table").partitioned


def test_every_reading_command_accepts_v1(v1, cli, tmp_path):
    v2 = tmp_path / "v2" / "model.ckpt"
    assert cli("copy", v1["file"], v2).returncode == 0
    checks = {
        "verify": cli("verify", v1["pattern"], "--against", v2),
        "diff": cli("diff", v1["folder"], v2),
        "edit": cli("edit", v1["shard"], tmp_path / "e" / "m", "--drop", "beta._power"),
        "average": cli("average", v1["file"], v1["pattern"], "--out", tmp_path / "a" / "m", "--keep-optimizer"),
        "merge": cli("merge", "--source", f"x={v1['file']}", "--take", "x", ".*", "--keep-optimizer", "--out", tmp_path / "g" / "m"),
        "transfer": cli("transfer", "--from", v1["file"], "--into", v2, "--out", tmp_path / "t" / "m"),
    }
    for command, run in checks.items():
        assert run.returncode == 0, (command, run.stdout, run.stderr)
    assert checks["diff"].stdout.strip().endswith("identical")
    original = restore_tf1(v1["file"])
    _assert_same(original, restore_tf1(str(tmp_path / "a" / "m")))
    _assert_same(original, restore_tf1(str(tmp_path / "g" / "m")))
    _assert_same(original, restore_tf1(str(tmp_path / "t" / "m")))
    edited = restore_tf1(str(tmp_path / "e" / "m"), var_list_filter=lambda n: not n.endswith("_power"))
    _assert_same({k: v for k, v in original.items() if not k.endswith("_power")}, edited)


def _damaged(v1: dict[str, str], tmp_path: Path, how: str) -> str:
    data = bytearray(Path(v1["file"]).read_bytes())
    target = tmp_path / "bad" / "model.ckpt-2"
    target.parent.mkdir()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "meta-flip":  # inside the first data block (the metadata)
        data[12] ^= 0x40
    elif how == "data-flip":  # inside a tensor's values: the block CRC catches it
        at = data.index(b"encoder/dense/kernel\x00\x01") + 60
        data[at] ^= 0x01
    elif how == "footer":
        data[-3] ^= 0xFF
    target.write_bytes(bytes(data))
    return str(target)


@pytest.mark.parametrize("how", ["truncated", "meta-flip", "data-flip", "footer"])
def test_bad_v1_input_is_one_line_exit_3_and_publishes_nothing(v1, tmp_path, how, capsys):
    """In-process for speed; the subprocess fuzz suite (test_hostile_v1_and_state) covers crashes."""
    from ckptsurgery.cli import main

    bad = _damaged(v1, tmp_path, how)
    before = Path(bad).read_bytes()
    out = tmp_path / "out"
    for args in (("copy", bad, out / "m", "--no-progress"), ("verify", bad)):
        rc = main([str(a) for a in args])
        err = capsys.readouterr().err
        assert rc == 3, (args, how, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ckptsurgery: error:"), err
    assert not out.exists() or not any(out.iterdir())
    assert Path(bad).read_bytes() == before
