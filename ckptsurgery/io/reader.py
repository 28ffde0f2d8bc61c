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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .._tf import tf
from ..dtypes import KNOWN, itemsize, numpy_dtype
from ..errors import BadCheckpointError, first_line
from .fileio import WILLNEED, advise
from .bytecopy import crc32c_extend
from .fs import filesystem, is_remote
from .fs import cache as readahead
from .table import mask
from .resolve import resolve_checkpoint

if TYPE_CHECKING:
    from .index import BundleIndex

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


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
        from .index import no_gc_pauses

        with no_gc_pauses():  # one TensorInfo per entry, no cycles: see no_gc_pauses
            return self._list_index_tensors()

    def _list_index_tensors(self) -> dict[str, TensorInfo]:
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
        if is_remote(self.prefix):
            value = self._read_ahead(info)
            if value is not None:
                return value
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

    def _read_ahead(self, info: TensorInfo) -> np.ndarray | None:
        """A remote tensor from the read-ahead cache (see :meth:`prefetch`), its CRC32C checked;
        None when it is not there or not a plain fixed-size tensor (TF's reader then reads it)."""
        entry = self._index.entries.get(info.name) if self._index is not None else None
        if entry is None or info.partitioned or info.dtype == "string" or not entry.size:
            return None
        data = readahead.take(self._index.data_path(entry.shard_id), entry.offset, entry.size)
        if data is None or len(data) != entry.size or mask(crc32c_extend(0, data)) != entry.crc32c:
            return None  # TF's reader reads it again, and reports a bad checksum its own way
        return np.frombuffer(data, dtype=numpy_dtype(info.dtype)).reshape(info.shape).copy()

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
            if is_remote(self.prefix):  # a round trip per read: fetch the batch in parallel, ahead
                readahead.fetch_ahead(self._index.data_path(shard_id), shard_ranges, filesystem(self.prefix).read_bytes)
            else:
                advise(self._index.data_path(shard_id), WILLNEED, shard_ranges)

    @property
    def bundle_index(self) -> "BundleIndex | None":
        """The validated V2 index (entries with shard, offset, size, CRC32C), parsed once at open;
        None for a V1 checkpoint, whose bytes are only read through TensorFlow."""
        return self._index if self.format == "v2" else None

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
    return first_line(getattr(exc, "message", None) or str(exc), type(exc).__name__)[:300]


_ENUM_NAMES: dict[int, str] | None = None


def _dtype_enum_names() -> dict[int, str]:
    """DataType enum value -> our dtype name (TF's names: ``float32``, ``bfloat16``, ``string``)."""
    global _ENUM_NAMES
    if _ENUM_NAMES is None:
        from .index import _DTYPES  # TF's types.proto values, kept without importing TF

        _ENUM_NAMES = {value: name for value, (name, _) in _DTYPES.items()}
    return _ENUM_NAMES
