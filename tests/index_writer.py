"""A minimal writer of TensorFlow's table format (the ``.index`` file), for tests.

Corruption tests need index files whose table checksums are valid but whose
entries are hostile (huge shapes, wrong dtypes, offsets past the end), so
that the entry checks, not the block CRCs, are what catches them.  This is
the only place the tests write that format.
"""

from __future__ import annotations

import struct
from pathlib import Path

from tensorflow.core.protobuf import tensor_bundle_pb2

from ckptsurgery.io import table as bt
from ckptsurgery.io.index_writer import encode_block, varint as put_varint
from ckptsurgery.io.table import masked_crc32c, parse_table


def _block(kvs: list[tuple[bytes, bytes]], restart_interval: int = 16) -> bytes:
    return encode_block(kvs, restart_interval)


def build_table(
    kvs: list[tuple[bytes, bytes]],
    block_size: int = 4096,
    compress=None,
    block_type: int | None = None,
) -> tuple[bytes, list[tuple[int, int]]]:
    """Write kvs as a TF table; returns (file bytes, [(offset, size)] of every
    block).  ``compress`` (a function) stores blocks with type 1."""
    out = bytearray()
    blocks: list[tuple[int, int]] = []

    def write_block(raw: bytes) -> tuple[int, int]:
        btype = 0
        if compress is not None:
            raw, btype = compress(raw), 1
        if block_type is not None:
            btype = block_type
        off = len(out)
        out.extend(raw)
        out.append(btype)
        out.extend(struct.pack("<I", masked_crc32c(raw + bytes([btype]))))
        blocks.append((off, len(raw)))
        return off, len(raw)

    index: list[tuple[bytes, bytes]] = []
    pending: list[tuple[bytes, bytes]] = []
    size = 0
    for k, v in kvs:
        pending.append((k, v))
        size += len(k) + len(v) + 3
        if size >= block_size:
            off, n = write_block(_block(pending))
            index.append((pending[-1][0], put_varint(off) + put_varint(n)))
            pending, size = [], 0
    if pending:
        off, n = write_block(_block(pending))
        index.append((pending[-1][0], put_varint(off) + put_varint(n)))
    meta = write_block(_block([]))
    idx = write_block(_block(index, restart_interval=1))
    footer = put_varint(meta[0]) + put_varint(meta[1]) + put_varint(idx[0]) + put_varint(idx[1])
    footer = footer.ljust(40, b"\0") + struct.pack("<Q", bt.TABLE_MAGIC)
    out.extend(footer)
    return bytes(out), blocks


def index_kvs(prefix: str) -> list[tuple[bytes, bytes]]:
    return parse_table(Path(prefix + ".index").read_bytes())


def write_index(prefix: str, kvs: list[tuple[bytes, bytes]], **kw) -> None:
    Path(prefix + ".index").write_bytes(build_table(kvs, **kw)[0])


def rewrite_entry(prefix: str, key: bytes | str, fn) -> None:
    """Rebuild the index with ``fn`` applied to one entry's proto (``""``: the header)."""
    key = key.encode() if isinstance(key, str) else key
    kvs = []
    assert key in dict(index_kvs(prefix)), key
    for k, v in index_kvs(prefix):
        if k == key:  # the empty key holds the header
            e = tensor_bundle_pb2.BundleHeaderProto() if k == b"" else tensor_bundle_pb2.BundleEntryProto()
            e.ParseFromString(v)
            fn(e)
            v = e.SerializeToString()
        kvs.append((k, v))
    write_index(prefix, kvs)


def rewrite_header(prefix: str, fn) -> None:
    kvs = index_kvs(prefix)
    h = tensor_bundle_pb2.BundleHeaderProto()
    h.ParseFromString(kvs[0][1])
    fn(h)
    kvs[0] = (b"", h.SerializeToString())
    write_index(prefix, kvs)
