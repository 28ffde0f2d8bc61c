"""Helpers shared by several test modules (fixtures live in conftest.py, models in models.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ckptsurgery.io.index import read_index


def names(prefix: str) -> set[str]:
    """The tensor names TensorFlow's own reader sees in ``prefix``."""
    import tensorflow as tf

    return set(tf.train.load_checkpoint(prefix).get_variable_to_shape_map())


def tf_values(prefix: str) -> dict[str, tuple]:
    """Every tensor as TensorFlow's own reader returns it: name -> (dtype, shape, bytes)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    out = {}
    for name in reader.get_variable_to_shape_map():
        value = np.asarray(reader.get_tensor(name))
        if value.dtype == object:
            out[name] = ("string", value.shape, tuple(bytes(x) for x in value.reshape(-1)))
        else:
            out[name] = (value.dtype.str, value.shape, value.tobytes())
    return out


def copy_files(prefix: str, folder: Path) -> str:
    """A byte-for-byte copy of the checkpoint's own files (index and data) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(prefix)
    for f in src.parent.iterdir():
        if f.name == src.name + ".index" or f.name.startswith(src.name + ".data-"):
            shutil.copy(f, folder / f.name)
    return str(folder / src.name)


def flip_in(prefix: str, tensor: str, slice_number: int = 0) -> None:
    """Flip one bit in the middle of ``tensor``'s bytes (of its n-th slice if partitioned)."""
    index = read_index(prefix)
    entry = index.entries[tensor]
    if not entry.has_data:
        entry = sorted(index.slice_entries[tensor], key=lambda e: e.offset)[slice_number]
    path = Path(index.data_path(entry.shard_id))
    data = bytearray(path.read_bytes())
    data[entry.offset + entry.size // 2] ^= 0x04
    path.write_bytes(bytes(data))


def run_main(argv: list, capsys) -> tuple[int, str, str]:
    """Run the CLI in this process: ``(exit code, stdout, stderr)``."""
    from ckptsurgery.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def nothing_at(folder: Path) -> bool:
    """Nothing published in ``folder``: it is gone (a failed run removes the folders it made) or empty."""
    return not folder.exists() or not any(folder.iterdir())
