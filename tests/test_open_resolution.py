"""One way to open a checkpoint, everywhere: every command resolves a path the same way and reads it
through the same reader (``source.open_checkpoint``)."""

from __future__ import annotations

import numpy as np

import ckptsurgery as cs
from models import tf


def _save_with_empty_base_name(folder) -> str:
    """A Saver given ``dir/`` writes ``dir/.index`` and ``dir/.data-00000-of-00001``."""
    prefix = str(folder) + "/"
    with tf.Graph().as_default():
        tf.compat.v1.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="w")
        tf.compat.v1.Variable(np.array([b"a", b"bc"], dtype=object), name="vocab")
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            written = saver.save(sess, prefix, write_state=False)
    assert written == prefix and (folder / ".index").is_file()
    return prefix


def test_prefix_with_empty_base_name_is_read_by_diff_and_verify(tmp_path, cli):
    prefix = _save_with_empty_base_name(tmp_path / "run")
    report = cs.verify(prefix)
    assert report.ok and len(report.tensors) == 2
    np.testing.assert_array_equal(cs.open_checkpoint(prefix).read("w"), np.arange(6, dtype=np.float32).reshape(2, 3))
    copy = tmp_path / "copy" / "m"
    cs.copy(prefix, copy, progress=False)
    for args in (("diff", prefix, copy), ("verify", prefix, "--against", copy), ("inspect", prefix)):
        run = cli(*args)
        assert run.returncode == 0, (args, run.stdout, run.stderr)
    assert cli("diff", prefix, copy).stdout.strip().endswith("identical")
