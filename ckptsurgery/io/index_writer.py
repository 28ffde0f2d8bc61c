"""Write a TensorFlow V2 checkpoint index (``<prefix>.index``) ourselves.

The byte path (see :mod:`ckptsurgery.plan.byte_path`) copies tensors as byte
ranges into data shards TensorFlow never saw, and merges them with the
shards ``SaveV2`` wrote for computed tensors.  What makes those files one
checkpoint is the index, so we write it: the same table format
:mod:`ckptsurgery.io.index` parses (TF's ``tsl/lib/io/table_builder.cc``:
prefix-compressed blocks of about 256 KiB with a restart every 16 keys, no
compression, an empty metaindex block, an index block and the 48-byte
footer), holding a ``BundleHeaderProto`` under key ``b""`` and a
``BundleEntryProto`` per tensor or slice, keys sorted bytewise.

The two protos are encoded here by hand (a few varint and length-delimited
fields), so writing an index never imports TensorFlow.  Tests parse the
result with TF's own protos and read every value back with TF's reader.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

from .fs import filesystem
from .index import IndexEntry
from .table import TABLE_MAGIC, masked_crc32c

#: TF's ``table::Options`` defaults, which the bundle writer keeps.
BLOCK_SIZE = 262144
RESTART_INTERVAL = 16
#: ``kTensorBundleVersion``: what every TF since 1.0 writes as producer.
BUNDLE_PRODUCER_VERSION = 1


# -- protobuf wire format ---------------------------------------------------------------------
def varint(value: int) -> bytes:
    """Base-128 varint; negative int64/int32 values take ten bytes, as protobuf encodes them."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_varint(number: int, value: int, *, always: bool = False) -> bytes:
    """A varint field; proto3 leaves zero out unless the field tracks presence (``always``)."""
    if value == 0 and not always:
        return b""
    return varint(number << 3) + varint(value)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _field_fixed32(number: int, value: int) -> bytes:
    return b"" if value == 0 else varint(number << 3 | 5) + struct.pack("<I", value)


def encode_header(num_shards: int, producer: int = BUNDLE_PRODUCER_VERSION) -> bytes:
    """``BundleHeaderProto{num_shards, endianness: LITTLE, version{producer}}``."""
    version = _field_varint(1, producer)  # VersionDef.producer; min_consumer 0
    return _field_varint(1, num_shards) + _field_bytes(3, version)  # endianness LITTLE = 0: omitted


def _encode_shape(shape: tuple[int, ...]) -> bytes:
    # TensorShapeProto.dim (2) -> Dim.size (1)
    return b"".join(_field_bytes(2, _field_varint(1, d)) for d in shape)


def _encode_slice(extents: tuple[tuple[int, int], ...]) -> bytes:
    """``TensorSliceProto``: a full dimension is an empty extent (``TensorSlice::AsProto``)."""
    out = b""
    for start, length in extents:
        extent = b"" if length == -1 else _field_varint(1, start) + _field_varint(2, length, always=True)
        out += _field_bytes(1, extent)
    return out


def encode_entry(entry: IndexEntry) -> bytes:
    """``BundleEntryProto`` of ``entry`` (the full entry of a partitioned variable lists its slices)."""
    out = _field_varint(1, entry.dtype) + _field_bytes(2, _encode_shape(entry.shape))
    if entry.slices and not entry.is_slice:
        return out + b"".join(_field_bytes(7, _encode_slice(extents)) for extents in entry.slices)
    return (out + _field_varint(3, entry.shard_id) + _field_varint(4, entry.offset)
            + _field_varint(5, entry.size) + _field_fixed32(6, entry.crc32c))


# -- the table ----------------------------------------------------------------------------------
def encode_block(kvs: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    """One block: prefix-compressed entries, then the restart array and its count."""
    out = bytearray()
    restarts = [0]
    last = b""
    for i, (key, value) in enumerate(kvs):
        shared = 0
        if i % restart_interval == 0:
            if i:
                restarts.append(len(out))
        else:
            limit = min(len(last), len(key))
            while shared < limit and last[shared] == key[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value))
        out += key[shared:] + value
        last = key
    out += struct.pack(f"<{len(restarts)}I", *restarts)
    out += struct.pack("<I", len(restarts))
    return bytes(out)


def build_table(kvs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A whole table file from (key, value) pairs given in strictly increasing key order.

    Each block's index entry uses the block's last key as separator (valid:
    >= every key of the block, < every key of the next), where TF computes a
    shorter one; readers only rely on the ordering.
    """
    out = bytearray()

    def write_block(contents: bytes) -> bytes:
        handle = varint(len(out)) + varint(len(contents))
        out.extend(contents)
        out.append(0)  # no compression
        out.extend(struct.pack("<I", masked_crc32c(contents + b"\x00")))
        return handle

    index: list[tuple[bytes, bytes]] = []
    pending: list[tuple[bytes, bytes]] = []
    pending_size = 0
    previous: bytes | None = None
    for key, value in kvs:
        if previous is not None and key <= previous:
            raise ValueError(f"index keys out of order: {key[:40]!r} after {previous[:40]!r}")
        previous = key
        pending.append((key, value))
        pending_size += len(key) + len(value) + 8
        if pending_size >= BLOCK_SIZE:
            index.append((key, write_block(encode_block(pending, RESTART_INTERVAL))))
            pending, pending_size = [], 0
    if pending:
        index.append((pending[-1][0], write_block(encode_block(pending, RESTART_INTERVAL))))
    metaindex = write_block(encode_block([], RESTART_INTERVAL))
    index_handle = write_block(encode_block(index, 1))
    footer = (metaindex + index_handle).ljust(40, b"\x00") + struct.pack("<Q", TABLE_MAGIC)
    return bytes(out + footer)


def index_bytes(num_shards: int, entries: Iterable[IndexEntry]) -> bytes:
    """The ``.index`` file of a bundle with ``num_shards`` data shards and these entries (any order)."""
    kvs = sorted((entry.key, encode_entry(entry)) for entry in entries)
    return build_table([(b"", encode_header(num_shards)), *kvs])


def write_index(prefix: str, num_shards: int, entries: Iterable[IndexEntry]) -> str:
    """Write ``<prefix>.index``; returns its path.  Durability is the publisher's job (it fsyncs)."""
    path = prefix + ".index"
    data = index_bytes(num_shards, entries)
    filesystem(path).write_bytes(path, data)  # any filesystem (the writer's staging folder is local)
    return os.fspath(path)
