"""The reader layer: open any checkpoint, list its tensors, read them lazily.

A *source* is one checkpoint on disk, opened by prefix, folder, state file,
any one of its files, or a SavedModel folder.  Listing (names, dtypes,
shapes, byte sizes) reads only the ``.index`` file; tensor data is read one
tensor at a time through TensorFlow's own ``CheckpointReader``, which checks
each tensor's CRC32C and presents TF1 partitioned variables whole.  No graph
is imported, no session is created and no model code is needed.

Example::

    >>> ckpt = open_checkpoint("runs/bert/")            # doctest: +SKIP
    >>> ckpt.kind, len(ckpt), ckpt.total_bytes           # doctest: +SKIP
    ('tf1-name', 1204, 4012345678)
    >>> ckpt.read("bert/embeddings/word_embeddings").shape  # doctest: +SKIP
    (30522, 1024)
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .._tf import tf
from ..dtypes import KNOWN, itemsize
from ..errors import BadCheckpointError
from .fileio import WILLNEED, advise

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_DATA_FILE = re.compile(r"^(?P<prefix>.+)\.data-\d{5}-of-\d{5}$")
_STEP = re.compile(r"-(\d+)$")


# Not frozen: a frozen dataclass's __init__ costs 5x more, paid per entry (200k in real
# checkpoints).  Treat instances as read-only all the same; they stay hashable by value.
@dataclass(slots=True, unsafe_hash=True)
class TensorInfo:
    """What the index says about one tensor; no data is read to know it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    partitioned: bool = False
    #: For a TF1 partitioned variable, each saved part's extent per dimension: ((start, length), ...).
    slices: tuple[tuple[tuple[int, int], ...], ...] = ()

    def slice_specs(self) -> list[str]:
        """TF's ``shape_and_slices`` strings for each saved part (``"10 3 0,4:0,3"``)."""
        if not self.slices:
            return []  # asked of every tensor by the executor: keep the common case free
        dims = " ".join(str(d) for d in self.shape)
        return [f"{dims} " + ":".join("-" if length < 0 else f"{start},{length}" for start, length in extents)
                for extents in self.slices]

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "nbytes": self.nbytes}


def resolve_prefix(path: str | os.PathLike) -> str:
    """Turn whatever the user typed into a checkpoint prefix (see :func:`resolve_checkpoint`)."""
    return resolve_checkpoint(path)[0]


def resolve_checkpoint(path: str | os.PathLike) -> tuple[str, str]:
    """Turn whatever the user typed into ``(prefix, format)``, format ``"v2"`` or ``"v1"``.

    Accepts a prefix (``run/model.ckpt-1000``), a folder (its ``checkpoint``
    state file, else a SavedModel's ``variables/variables``, else its only or
    newest prefix), a ``checkpoint`` state file, or one of the checkpoint's own
    files (``.index`` or ``.data-*``).  A pre-0.12 (V1) checkpoint is accepted
    as its single file, one of its shards (``export-00000-of-00002``) or the
    shard pattern (``export-?????-of-00002``); its "prefix" is then what TF's
    reader is given: the file, or the pattern.
    """
    text = os.fspath(path)
    p = Path(text)
    try:
        if Path(text + ".index").is_file():
            return text, "v2"
        if p.is_dir():
            return _prefix_in_folder(p)
        if p.name == "checkpoint" and p.is_file():
            return _prefix_from_state_file(p)
        if text.endswith(".index") and p.is_file():
            return text[: -len(".index")], "v2"
        match = _DATA_FILE.match(text)
        if match and p.is_file():
            prefix = match.group("prefix")
            if Path(prefix + ".index").is_file():
                return prefix, "v2"
            raise BadCheckpointError(text, f"data shard has no index file {prefix}.index beside it")
        v1 = _v1_pattern(text)
        if v1 is not None:
            return v1, "v1"
        exists = p.exists()
    except (OSError, ValueError) as exc:  # embedded NUL, name too long, unreadable folder
        raise BadCheckpointError(text, f"cannot open: {getattr(exc, 'strerror', None) or exc}") from None
    if exists:
        raise BadCheckpointError(text, "not a checkpoint: expected a prefix, a folder, a .index/.data file "
                                       "or a V1 checkpoint file")
    raise BadCheckpointError(text, "no such checkpoint (neither a file, a folder, nor a prefix with a .index file)")


def _v1_pattern(text: str) -> str | None:
    """The V1 reader's pattern for ``text`` when it names a V1 checkpoint (file, shard or pattern), else None."""
    from .v1 import SHARD_PATTERN, is_v1_checkpoint, pattern_for_shard

    if SHARD_PATTERN.match(text):
        return text if is_v1_checkpoint(text) else None
    if not Path(text).is_file() or not is_v1_checkpoint(text):
        return None
    return pattern_for_shard(text) or text


#: A ``checkpoint`` state file is a few lines per kept checkpoint; more than this is not one.
MAX_STATE_FILE_BYTES = 1 << 20


def _prefix_from_state_file(state_file: Path) -> tuple[str, str]:
    """Read a ``checkpoint`` state file ourselves: bounded in size, every failure one line.

    A relative ``model_checkpoint_path`` is taken relative to the folder, as
    TensorFlow does; the path it names must be a checkpoint itself (a V2
    prefix or a V1 file/pattern), never another folder or state file.
    """
    where = str(state_file)
    try:
        size = state_file.stat().st_size
        if not state_file.is_file():
            raise BadCheckpointError(where, "checkpoint state file is not a regular file")
        if size > MAX_STATE_FILE_BYTES:
            raise BadCheckpointError(where, f"checkpoint state file is {size} bytes, too large to be one")
        raw = state_file.read_bytes()[:MAX_STATE_FILE_BYTES + 1]
    except OSError as exc:
        raise BadCheckpointError(where, f"cannot read checkpoint state file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
        if "\x00" in text:
            raise ValueError("NUL byte")
    except (UnicodeDecodeError, ValueError):
        raise BadCheckpointError(where, "checkpoint state file is not text") from None
    from google.protobuf import text_format

    from .protos import checkpoint_state_class

    state = checkpoint_state_class()()  # TF's CheckpointState, without importing TF
    try:
        text_format.Parse(text, state, allow_unknown_field=True)
    except Exception as exc:  # text_format.ParseError and friends
        detail = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        detail = "".join(c if c.isprintable() else "?" for c in detail)  # the file's bytes, quoted
        raise BadCheckpointError(where, f"unreadable checkpoint state file: {detail}") from None
    named = state.model_checkpoint_path
    if not named:
        raise BadCheckpointError(where, "checkpoint state file names no model_checkpoint_path")
    prefix = named if os.path.isabs(named) else os.path.join(str(state_file.parent), named)
    shown = named if len(named) <= 200 else named[:200] + "..."
    folder = state_file.parent
    try:
        nul = "\x00" in prefix
        is_v2 = not nul and Path(prefix + ".index").is_file()
        v1 = None if nul or is_v2 else _v1_pattern(prefix)
    except (OSError, ValueError):
        is_v2, v1 = False, None
    if _outside(prefix, folder):
        return _moved_checkpoint(where, prefix, folder, shown)
    if is_v2:
        return prefix, "v2"
    if v1 is not None:
        return v1, "v1"
    raise BadCheckpointError(where, f"state file points to {shown!r}, which is not a checkpoint "
                                    "(no .index file beside it, not a V1 checkpoint file)")


def _outside(prefix: str, folder: Path) -> bool:
    """True when ``prefix`` does not lie in ``folder`` (after resolving symlinks and '..')."""
    try:
        return Path(os.path.realpath(os.path.dirname(prefix) or ".")) != Path(os.path.realpath(folder))
    except (OSError, ValueError):
        return True


def _moved_checkpoint(where: str, prefix: str, folder: Path, shown: str) -> tuple[str, str]:
    """A state file naming a checkpoint in another folder: the folder was copied or moved
    (TF writes absolute paths), so the same name inside this folder is meant; reading the
    other folder's checkpoint would silently read the wrong run."""
    local = str(folder / os.path.basename(prefix))
    if Path(local + ".index").is_file():
        return local, "v2"
    v1 = _v1_pattern(local)
    if v1 is not None:
        return v1, "v1"
    raise BadCheckpointError(where, f"state file points outside its folder, to {shown!r}, and the folder holds no "
                                    f"{os.path.basename(prefix)!r}; give the checkpoint's path instead")


def _prefix_in_folder(folder: Path) -> tuple[str, str]:
    if (folder / "checkpoint").is_file():
        return _prefix_from_state_file(folder / "checkpoint")
    saved_model = folder / "variables" / "variables"
    if Path(str(saved_model) + ".index").is_file():
        return str(saved_model), "v2"
    try:
        indexes = [f for f in folder.iterdir() if f.name.endswith(".index") and f.is_file()]
    except PermissionError:
        raise BadCheckpointError(str(folder), "folder is not readable (permission denied)") from None
    if not indexes:
        raise BadCheckpointError(str(folder), "folder holds no checkpoint (no .index file, no 'checkpoint' state file)")

    def newest_first(f: Path) -> tuple[int, float]:
        step = _STEP.search(f.name[: -len(".index")])
        return (int(step.group(1)) if step else -1, f.stat().st_mtime)

    return str(max(indexes, key=newest_first))[: -len(".index")], "v2"


class Checkpoint:
    """One checkpoint on disk: its tensors' metadata, and reads on demand.

    Opening validates the index in pure Python first (see
    :mod:`ckptsurgery.io.index`), so a corrupt or hostile file gets a
    one-line :class:`BadCheckpointError` instead of crashing the process
    inside TensorFlow's C++ reader.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        #: ``"v2"`` (``.index`` + ``.data-*``) or ``"v1"`` (pre-0.12 single table file or shard pattern).
        #: A V1 tensor can only be decoded through TF's reader, never copied byte for byte.
        self.format: str
        self.prefix, self.format = resolve_checkpoint(path)
        self._index = None
        self._v1 = None
        self._infos = self._list_tensors() if self.format == "v2" else self._list_v1_tensors()
        self._reader = None

    # -- metadata -------------------------------------------------------
    def _list_tensors(self) -> dict[str, TensorInfo]:
        from .index import validate_checkpoint

        index = validate_checkpoint(self.prefix)
        self._index = index  # offsets and shards, for read-ahead hints
        dtype_names = _dtype_enum_names()
        infos: dict[str, TensorInfo] = {}
        sizes = {code: (name, itemsize(name)) for code, name in dtype_names.items() if name in KNOWN}
        for entry in index.entries.values():  # a hot loop: 200k entries are real, keep it lean
            if entry.is_slice:
                continue
            known = sizes.get(entry.dtype)
            if known is None:
                raise BadCheckpointError(self.prefix + ".index", f"unsupported dtype enum {entry.dtype}", entry.name)
            dtype, size = known
            shape = entry.shape  # a tuple of ints already, checked by bundle_index
            # Strings vary per element, so only the index knows their size.
            nbytes = entry.size if dtype == "string" else math.prod(shape) * size
            if entry.slices:
                infos[entry.name] = TensorInfo(entry.name, dtype, shape, nbytes, True,
                                               tuple(tuple(map(tuple, extents)) for extents in entry.slices))
            else:
                infos[entry.name] = TensorInfo(entry.name, dtype, shape, nbytes)
        # Entries come in key (byte) order; sort by str only if that differs (non-ASCII names).
        names = list(infos)
        if any(a > b for a, b in zip(names, names[1:])):
            infos = dict(sorted(infos.items()))
        return infos

    def _list_v1_tensors(self) -> dict[str, TensorInfo]:
        from .v1 import V1Checkpoint

        self._v1 = V1Checkpoint(self.prefix)
        dtype_names = _dtype_enum_names()
        infos: dict[str, TensorInfo] = {}
        for tensor in self._v1.tensors.values():
            dtype = dtype_names.get(tensor.dtype)
            if dtype not in KNOWN:
                raise BadCheckpointError(self.prefix, f"unsupported dtype enum {tensor.dtype}", tensor.name)
            # A V1 file stores strings inside protos; 8 bytes per element is an estimate for budgeting.
            nbytes = math.prod(tensor.shape) * (8 if dtype == "string" else itemsize(dtype))
            partitioned = tensor.partitioned
            infos[tensor.name] = TensorInfo(tensor.name, dtype, tensor.shape, int(nbytes), partitioned,
                                            tensor.slices if partitioned else ())
        return dict(sorted(infos.items()))

    @property
    def kind(self) -> str:
        """``tf2-object`` when an object graph is stored, ``tf1-v1`` for a pre-0.12 file, else ``tf1-name``."""
        if self.format == "v1":
            return "tf1-v1"
        return "tf2-object" if OBJECT_GRAPH_KEY in self._infos else "tf1-name"

    @property
    def names(self) -> list[str]:
        return list(self._infos)

    @property
    def tensors(self) -> list[TensorInfo]:
        return list(self._infos.values())

    @property
    def total_bytes(self) -> int:
        return sum(info.nbytes for info in self._infos.values())

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise BadCheckpointError(self.prefix, "no such tensor in checkpoint", name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self._infos.values())

    # -- data -----------------------------------------------------------
    def read(self, name: str) -> np.ndarray:
        """Read one tensor; TensorFlow verifies its CRC32C on the way."""
        info = self.info(name)
        if self.format == "v1":
            return self._read_v1(info)
        if self._reader is None:
            try:
                # Not tf.train.load_checkpoint: it takes a prefix ending in "/" (a Saver given "dir/"
                # writes "dir/.index") for a folder.  The resolved prefix is opened as it is.
                self._reader = tf().compat.v1.train.NewCheckpointReader(self.prefix)
            except Exception as exc:
                raise BadCheckpointError(self.prefix, _tf_message(exc)) from None
        try:
            value = self._reader.get_tensor(name)
        except Exception as exc:
            # A failed read (e.g. a bad checksum in a slice of a partitioned variable) leaves
            # TF's reader in a sticky error state; its next call would CHECK-fail and abort
            # the process.  Drop it, so the next read gets a fresh reader.
            self._reader = None
            raise BadCheckpointError(self.prefix, _tf_message(exc), name) from None
        if info.dtype == "string":
            return np.asarray(value, dtype=object).reshape(info.shape)
        return np.asarray(value).reshape(info.shape)

    def _read_v1(self, info: TensorInfo) -> np.ndarray:
        """A V1 tensor through ``RestoreV2`` (TF's CheckpointReader refuses V1 partitioned variables)."""
        (tensor,) = self.read_many([info.name])
        value = tensor.numpy()
        if info.dtype == "string":
            return np.asarray(value, dtype=object).reshape(info.shape)
        return np.asarray(value).reshape(info.shape)

    def _check_v1(self, names: list[str]) -> None:
        """Let TF's V1 reader see only slices checked in Python (CRC, proto, value count)."""
        if self._v1 is not None:
            for name in names:
                self._v1.check_tensor(name)

    def read_slice(self, name: str, spec: str):
        """Read one saved part of a partitioned variable (``spec`` from :meth:`TensorInfo.slice_specs`)."""
        tf_ = tf()
        self._check_v1([name])
        try:
            (tensor,) = tf_.raw_ops.RestoreV2(prefix=self.prefix, tensor_names=[name], shape_and_slices=[spec],
                                              dtypes=[tf_.as_dtype(self.info(name).dtype)])
        except Exception as exc:
            raise BadCheckpointError(self.prefix, _tf_message(exc), name) from None
        return tensor

    def read_many(self, names: list[str]) -> list:
        """Read several tensors with one ``RestoreV2`` call, as TensorFlow tensors.

        The copy path uses this: a tensor read this way goes straight into
        ``SaveV2`` without ever being converted to numpy, so it is held in
        memory exactly once.  TensorFlow checks each tensor's CRC32C.  On a
        failure the tensors are re-read one by one, so the error names the
        tensor at fault.
        """
        tf_ = tf()
        infos = [self.info(n) for n in names]
        self._check_v1(names)
        try:
            return list(tf_.raw_ops.RestoreV2(
                prefix=self.prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                dtypes=[tf_.as_dtype(i.dtype) for i in infos],
            ))
        except Exception as exc:
            if len(names) > 1 or self.format == "v2":
                for name in names:
                    self.read(name)  # raises BadCheckpointError naming the tensor
            raise BadCheckpointError(self.prefix, _tf_message(exc), names[0] if len(names) == 1 else None) from None

    def prefetch(self, names: list[str]) -> None:
        """Ask the kernel to start reading these tensors' bytes now (``POSIX_FADV_WILLNEED``).

        The executor calls this for the next batch while TensorFlow reads the
        current one, so disk reads overlap with checksumming and saving.  It is
        only a hint: nothing is read into this process and errors are ignored.
        """
        if self._index is None:
            return  # a V1 checkpoint: its tensors lie inside table blocks, read whole when checked
        ranges: dict[int, list[tuple[int, int]]] = {}
        for name in names:
            entry = self._index.entries.get(name)
            if entry is None:
                continue
            for part in (entry, *self._index.slice_entries.get(name, ())):  # a partitioned variable's parts
                if part.size:
                    ranges.setdefault(part.shard_id, []).append((part.offset, part.size))
        for shard_id, shard_ranges in ranges.items():
            advise(self._index.data_path(shard_id), WILLNEED, shard_ranges)

    def read_object_graph(self) -> bytes | None:
        """The serialized ``TrackableObjectGraph`` of a TF2 checkpoint, else None."""
        if OBJECT_GRAPH_KEY not in self._infos:
            return None
        return bytes(self.read(OBJECT_GRAPH_KEY).reshape(()).item())

    def __repr__(self) -> str:
        return f"Checkpoint({self.prefix!r}, kind={self.kind!r}, tensors={len(self)})"


def open_checkpoint(path: str | os.PathLike | Checkpoint) -> Checkpoint:
    """Open a checkpoint by prefix, folder, state file or file; see :func:`resolve_prefix`."""
    return path if isinstance(path, Checkpoint) else Checkpoint(path)


def _tf_message(exc: Exception) -> str:
    """TF errors carry multi-line messages; keep the first meaningful line."""
    message = getattr(exc, "message", None) or str(exc)
    first = next((line.strip() for line in message.splitlines() if line.strip()), type(exc).__name__)
    return first[:300]


_ENUM_NAMES: dict[int, str] | None = None


def _dtype_enum_names() -> dict[int, str]:
    """DataType enum value -> our dtype name (TF's names: ``float32``, ``bfloat16``, ``string``)."""
    global _ENUM_NAMES
    if _ENUM_NAMES is None:
        from .index import _DTYPES  # TF's types.proto values, kept without importing TF

        _ENUM_NAMES = {value: name for value, (name, _) in _DTYPES.items()}
    return _ENUM_NAMES
