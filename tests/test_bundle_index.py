"""Tests for ckptsurgery.bundle_index, the pure-Python index validator.

Real checkpoints are written with TensorFlow (TF2 object-based and a TF1
graph-mode Saver with a partitioned variable); our reader must agree with
``tf.train.load_checkpoint`` on them.  Corrupt copies must all give a
BadCheckpointError naming the file, and a seeded random mutation run checks
that nothing else ever escapes.  Corrupt files that need valid CRCs are
rebuilt with a tiny table writer defined here.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

from ckptsurgery.io import index as bi  # noqa: E402
from ckptsurgery.io import table as bt  # noqa: E402
from ckptsurgery.io.index import (  # noqa: E402
    BundleIndex,
    IndexEntry,
    decode_slice_key,
    encode_slice_key,
    read_index,
    validate_checkpoint,
)
from ckptsurgery.io.table import crc32c, masked_crc32c, parse_table, unmask  # noqa: E402
from ckptsurgery.errors import BadCheckpointError  # noqa: E402
from tensorflow.core.protobuf import tensor_bundle_pb2  # noqa: E402
from index_writer import (  # noqa: E402
    build_table, index_kvs, put_varint, rewrite_entry, rewrite_header, write_index,
)

REALCKPT = Path(__file__).resolve().parents[2] / "shared" / "realckpt"


# ---------------------------------------------------------------------------
# A minimal TF table writer (for corruptions that must keep valid CRCs).
# ---------------------------------------------------------------------------


def snappy_compress(data: bytes) -> bytes:
    """Greedy raw-snappy compressor (literals, 1- and 2-byte-offset copies)."""
    out = bytearray(put_varint(len(data)))
    table: dict[bytes, int] = {}
    i = lit = 0

    def emit_literal(a: int, b: int) -> None:
        n = b - a
        if n == 0:
            return
        if n <= 60:
            out.append((n - 1) << 2)
        else:
            out.append(60 << 2)
            out.append(n - 1)
            assert n - 1 < 256
        out.extend(data[a:b])

    while i + 4 <= len(data):
        cand = table.get(data[i : i + 4])
        table[data[i : i + 4]] = i
        if cand is not None and i - cand < 65536 and i - lit < 200:
            n = 4
            while i + n < len(data) and n < 64 and data[cand + n] == data[i + n]:
                n += 1
            emit_literal(lit, i)
            off = i - cand
            if n <= 11 and off < 2048:
                out.append(1 | ((n - 4) << 2) | ((off >> 8) << 5))
                out.append(off & 0xFF)
            else:
                out.append(2 | ((n - 1) << 2))
                out += struct.pack("<H", off)
            i += n
            lit = i
        else:
            if i - lit >= 200:
                emit_literal(lit, i)
                lit = i
            i += 1
    while len(data) - lit > 200:
        emit_literal(lit, lit + 200)
        lit += 200
    emit_literal(lit, len(data))
    return bytes(out)


# ---------------------------------------------------------------------------
# Fixtures: real checkpoints written by TensorFlow.
# ---------------------------------------------------------------------------

F = "f/.ATTRIBUTES/VARIABLE_VALUE"
S = "s/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture(scope="module")
def tf2_prefix(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tf2")
    ckpt = tf.train.Checkpoint(
        f=tf.Variable(np.arange(12, dtype=np.float32).reshape(3, 4)),
        i=tf.Variable(np.int64(7)),
        b=tf.Variable([True, False, True]),
        h=tf.Variable(tf.constant([1.5, 2.5, 3.5], dtype=tf.bfloat16)),
        s=tf.Variable(["a", "", "hello" * 40]),
        es=tf.Variable(tf.zeros([0], tf.string)),
        c=tf.Variable(tf.constant([1 + 2j], tf.complex128)),
        e=tf.Variable(tf.zeros([0, 5])),
        u=tf.Variable(tf.constant([1, 2], tf.uint16)),
        half=tf.Variable(tf.constant([1.0], tf.float16)),
    )
    return ckpt.save(str(d / "ckpt"))


@pytest.fixture(scope="module")
def tf1_prefix(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tf1")
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.get_variable(
            "part",
            shape=[300, 2],
            partitioner=tf.compat.v1.fixed_size_partitioner(3),
            initializer=tf.compat.v1.ones_initializer(),
        )
        tf.compat.v1.get_variable(
            "layer/kernel", shape=[4, 3], initializer=tf.compat.v1.zeros_initializer()
        )
        tf.compat.v1.Variable(tf.constant(["x", "yy", "zzz"]), name="vocab")
        tf.compat.v1.Variable(tf.constant([True, False]), name="mask")
        tf.compat.v1.Variable(tf.constant([0.5, 1.0], dtype=tf.bfloat16), name="bf")
        tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return saver.save(sess, str(d / "model.ckpt"), global_step=42)


def copy_ckpt(prefix: str, dest: Path) -> str:
    """Copy a checkpoint's files into ``dest``; returns the new prefix."""
    src = Path(prefix)
    for f in src.parent.iterdir():
        if f.name.startswith(src.name + "."):
            shutil.copy(f, dest / f.name)
    return str(dest / src.name)


@pytest.fixture
def ckpt(tf2_prefix, tmp_path) -> str:
    return copy_ckpt(tf2_prefix, tmp_path)


@pytest.fixture
def ckpt1(tf1_prefix, tmp_path) -> str:
    return copy_ckpt(tf1_prefix, tmp_path)


def bad(fn, *args, **kw) -> BadCheckpointError:
    with pytest.raises(BadCheckpointError) as info:
        fn(*args, **kw)
    err = info.value
    assert "\n" not in str(err)
    assert "unexpected" not in str(err), str(err)  # safety net was not needed
    return err


# ---------------------------------------------------------------------------
# CRC and slice keys.
# ---------------------------------------------------------------------------


def test_crc32c_known_values():
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
    assert crc32c(b"\xff" * 32) == 0x62A8AB43


def test_crc32c_matches_bytewise_and_extends():
    rng = random.Random(1)
    t0 = bt._CRC_TABLES[0]
    for n in list(range(0, 40)) + [1000, 1003]:
        data = bytes(rng.getrandbits(8) for _ in range(n))
        c = 0xFFFFFFFF
        for b in data:
            c = t0[(c ^ b) & 0xFF] ^ (c >> 8)
        assert crc32c(data) == c ^ 0xFFFFFFFF
        cut = n // 3
        assert crc32c(data[cut:], crc32c(data[:cut])) == crc32c(data)
    for v in (0, 1, 0xFFFFFFFF, 0x12345678):
        assert unmask(bt.mask(v)) == v


@pytest.mark.parametrize(
    "extents",
    [(), ((0, -1),), ((0, 100), (0, 2)), ((64, 8191), (8192, 1 << 40)), ((1 << 62, -1),)],
)
def test_slice_key_roundtrip(extents):
    key = encode_slice_key("a\x00b\xffc/\u00e9", extents)
    assert key[:1] == b"\x00"
    assert decode_slice_key(key) == ("a\x00b\xffc/\u00e9", extents)


def test_dtype_table_matches_tensorflow():
    for value, (_, size) in bi._DTYPES.items():
        assert tf.as_dtype(value).size == size, value


# ---------------------------------------------------------------------------
# Agreement with TensorFlow on real checkpoints.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tf2_prefix", "tf1_prefix"])
def test_read_index_agrees_with_tensorflow(which, request):
    prefix = request.getfixturevalue(which)
    index = validate_checkpoint(prefix)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    assert set(index.entries) == set(shapes)
    for name, entry in index.entries.items():
        assert list(entry.shape) == shapes[name], name
        assert entry.dtype == dtypes[name].as_datatype_enum, name
        assert not entry.is_slice
    # Bytes of all data-holding entries tile each shard exactly.
    for shard in range(index.num_shards):
        total = sum(e.size for e in index.data_entries() if e.shard_id == shard)
        assert total == os.path.getsize(index.data_path(shard))


def test_tf2_details(tf2_prefix):
    index = read_index(tf2_prefix)
    assert index.num_shards == 1
    assert index.data_path(0) == tf2_prefix + ".data-00000-of-00001"
    assert index.index_path == tf2_prefix + ".index"
    f = index.entries[F]
    assert (f.dtype, f.shape, f.size, f.shard_id) == (1, (3, 4), 48, 0)
    data = Path(index.data_path(0)).read_bytes()[f.offset : f.offset + f.size]
    assert np.frombuffer(data, np.float32).tolist() == list(range(12))
    assert unmask(f.crc32c) == crc32c(data)
    assert index.entries["es/.ATTRIBUTES/VARIABLE_VALUE"].size == 4  # lengths crc only
    assert index.entries["e/.ATTRIBUTES/VARIABLE_VALUE"].size == 0
    assert index.slice_entries == {}


def test_tf1_partitioned_variable(tf1_prefix):
    index = validate_checkpoint(tf1_prefix)
    part = index.entries["part"]
    assert part.shape == (300, 2) and not part.has_data
    assert part.slices == (((0, 100), (0, 2)), ((100, 100), (0, 2)), ((200, 100), (0, 2)))
    slices = index.slice_entries["part"]
    assert [s.slices[0] for s in slices] == list(part.slices)
    for s in slices:
        assert s.is_slice and s.name == "part" and s.shape == (100, 2) and s.size == 800
        assert s.key[:1] == b"\x00" and decode_slice_key(s.key) == ("part", s.slices[0])
    assert index.entries["global_step"].dtype == tf.int64.as_datatype_enum
    assert "\x00" not in "".join(index.entries)


def test_accepts_index_or_data_path(tf2_prefix):
    assert read_index(tf2_prefix + ".index").prefix == tf2_prefix
    assert read_index(Path(tf2_prefix + ".data-00000-of-00001")).prefix == tf2_prefix


def test_rebuilt_and_snappy_tables_read_the_same(ckpt):
    want = read_index(ckpt).entries
    kvs = index_kvs(ckpt)
    for kw in ({"block_size": 64}, {"compress": snappy_compress}, {"block_size": 100, "compress": snappy_compress}):
        write_index(ckpt, kvs, **kw)
        assert validate_checkpoint(ckpt).entries == want


def test_snappy_decoder_overlapping_copies():
    for data in (b"", b"a" * 1000, b"abcabcabcabd" * 50, bytes(range(256)) * 3 + b"xyz" * 90):
        assert bt._snappy_decompress(snappy_compress(data), "t") == data
    # literal "ab" then copy len 7 offset 2 (overlapping) -> "ababababa"
    assert bt._snappy_decompress(b"\x09\x04ab" + bytes([1 | (3 << 2), 2]), "t") == b"ababababa"
    with pytest.raises(bt._Malformed):
        bt._snappy_decompress(b"\x09\x04ab" + bytes([1 | (3 << 2), 3]), "t")  # offset too far
    with pytest.raises(bt._Malformed):
        bt._snappy_decompress(b"\xff\xff\xff\xff\x0f", "t")  # absurd length


@pytest.mark.skipif(not (REALCKPT / "MANIFEST.tsv").exists(), reason="no shared/realckpt")
def test_real_checkpoints_validate():
    with open(REALCKPT / "MANIFEST.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert rows
    for row in rows:
        index = validate_checkpoint(str(REALCKPT / row["local_prefix"]))
        name = row["short_name"]
        assert len(index.entries) == int(row["n_tensors"]), name
        counts: dict[str, int] = {}
        for e in index.entries.values():
            counts[e.dtype_name] = counts.get(e.dtype_name, 0) + 1
        want = {k: int(v) for k, v in (x.split(":") for x in row["dtypes"].split(","))}
        assert counts == want, name
        files = [index.index_path] + [index.data_path(i) for i in range(index.num_shards)]
        assert sum(os.path.getsize(f) for f in files) == int(row["bytes"]), name
        for shard in range(index.num_shards):
            total = sum(e.size for e in index.data_entries() if e.shard_id == shard)
            assert total == os.path.getsize(index.data_path(shard)), name


# ---------------------------------------------------------------------------
# Corruptions of the index file.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 10, 47, 48, 100, 0.5, -1, -8, -48, -49])
def test_truncated_index(ckpt, cut):
    path = Path(ckpt + ".index")
    data = path.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    path.write_bytes(data[:n])
    err = bad(read_index, ckpt)
    assert err.path == str(path)


def test_flipped_byte_fails_crc(ckpt):
    path = Path(ckpt + ".index")
    data = bytearray(path.read_bytes())
    data[20] ^= 0x01  # inside the first data block
    path.write_bytes(bytes(data))
    err = bad(read_index, ckpt)
    assert "CRC32C" in str(err) and str(path) in str(err)


def test_wrong_magic(ckpt):
    path = Path(ckpt + ".index")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "magic is wrong" in str(bad(read_index, ckpt))


def test_zero_length_index(ckpt):
    Path(ckpt + ".index").write_bytes(b"")
    err = bad(validate_checkpoint, ckpt)
    assert "empty" in str(err) and ckpt + ".index" in str(err)


def test_garbage_index(ckpt):
    Path(ckpt + ".index").write_bytes(random.Random(3).randbytes(5000))
    assert ckpt + ".index" in str(bad(validate_checkpoint, ckpt))


def test_missing_index(tmp_path):
    err = bad(validate_checkpoint, str(tmp_path / "nothing"))
    assert "missing" in str(err) and "nothing.index" in str(err)


def test_lfs_pointer_index(ckpt):
    Path(ckpt + ".index").write_bytes(
        b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 12\n"
    )
    assert "Git LFS" in str(bad(read_index, ckpt))


def test_directory_as_prefix_or_index(tmp_path):
    err = bad(read_index, str(tmp_path))
    assert "directory" in str(err)
    (tmp_path / "m.index").mkdir()
    err = bad(read_index, str(tmp_path / "m"))
    assert "directory" in str(err) and "m.index" in str(err)


def test_invalid_path(tmp_path):
    assert "invalid index file path" in str(bad(read_index, str(tmp_path / "a\0b")))


def test_permission_error(ckpt, monkeypatch):
    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(bi, "open", deny, raising=False)
    err = bad(read_index, ckpt)
    assert "Permission denied" in str(err) and ckpt + ".index" in str(err)


def test_unknown_compression_type(ckpt):
    write_index(ckpt, index_kvs(ckpt), block_type=2)
    assert "compression type 2" in str(bad(read_index, ckpt))


def test_block_restart_array_corrupt(ckpt):
    data, blocks = build_table(index_kvs(ckpt))
    off, size = blocks[0]
    buf = bytearray(data)
    buf[off + size - 4 : off + size] = struct.pack("<I", 10**6)  # num_restarts
    buf[off + size + 1 : off + size + 5] = struct.pack("<I", masked_crc32c(buf[off : off + size + 1]))
    Path(ckpt + ".index").write_bytes(bytes(buf))
    assert "restart count" in str(bad(read_index, ckpt))


def test_handle_outside_file(ckpt):
    kvs = index_kvs(ckpt)
    data, blocks = build_table(kvs)
    buf = bytearray(data)
    footer = len(buf) - 48
    handle = put_varint(blocks[-1][0]) + put_varint(1 << 40)
    meta = put_varint(blocks[-2][0]) + put_varint(blocks[-2][1])
    buf[footer : footer + 40] = (meta + handle).ljust(40, b"\0")
    Path(ckpt + ".index").write_bytes(bytes(buf))
    assert "outside the table" in str(bad(read_index, ckpt))


def test_keys_out_of_order(ckpt):
    kvs = index_kvs(ckpt)
    kvs[2], kvs[3] = kvs[3], kvs[2]
    write_index(ckpt, kvs)
    assert "not strictly increasing" in str(bad(read_index, ckpt))


def test_missing_header(ckpt):
    write_index(ckpt, index_kvs(ckpt)[1:])
    assert "no header" in str(bad(read_index, ckpt))


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda h: setattr(h, "num_shards", 0), "num_shards"),
        (lambda h: setattr(h, "num_shards", 10**6), "num_shards"),
        (lambda h: setattr(h, "endianness", 1), "big-endian"),
        (lambda h: setattr(h.version, "min_consumer", 5), "too new"),
        (lambda h: h.version.bad_consumers.append(1), "too new"),
    ],
)
def test_bad_header(ckpt, mutate, words):
    rewrite_header(ckpt, mutate)
    assert words in str(bad(read_index, ckpt))


def test_unparseable_entry(ckpt):
    kvs = [(k, b"\xff\xff\xff" if k == F.encode() else v) for k, v in index_kvs(ckpt)]
    write_index(ckpt, kvs)
    err = bad(read_index, ckpt)
    assert err.tensor == F and "protobuf" in str(err)


def _set_shape(dims):
    def fn(e):
        del e.shape.dim[:]
        for d in dims:
            e.shape.dim.add().size = d

    return fn


@pytest.mark.parametrize(
    "fn, words",
    [
        (_set_shape([1 << 31, 1 << 31]), "absurd shape"),
        (_set_shape([1 << 62]), "absurd shape"),
        (_set_shape([3, -1]), "negative dimension"),
        (_set_shape([1] * 300), "rank 300"),
        (_set_shape([4, 4]), "does not match shape"),
        (lambda e: setattr(e.shape, "unknown_rank", True), "unknown rank"),
        (lambda e: setattr(e, "dtype", 0), "invalid dtype"),
        (lambda e: setattr(e, "dtype", 101), "reference dtype float32_ref"),
        (lambda e: setattr(e, "dtype", 20), "unsupported dtype resource"),
        (lambda e: setattr(e, "dtype", 21), "unsupported dtype variant"),
        (lambda e: setattr(e, "dtype", 999), "invalid dtype"),
        (lambda e: setattr(e, "shard_id", 1), "shard_id 1"),
        (lambda e: setattr(e, "shard_id", -1), "shard_id -1"),
        (lambda e: setattr(e, "offset", -8), "negative offset"),
        (lambda e: setattr(e, "size", 47), "size 47"),
        (lambda e: setattr(e, "offset", 0), "overlaps"),
    ],
)
def test_rewritten_entry(ckpt, fn, words):
    rewrite_entry(ckpt, F.encode(), fn)
    err = bad(read_index, ckpt)
    assert words in str(err) and err.tensor == F and ckpt + ".index" in str(err)


def test_huge_but_bounded_shape_caught_by_shard_size(ckpt):
    end = os.path.getsize(ckpt + ".data-00000-of-00001")

    def fn(e):
        _set_shape([1 << 20, 1 << 20])(e)
        e.size = 4 << 40
        e.offset = end  # past every other entry, so nothing overlaps

    rewrite_entry(ckpt, F.encode(), fn)
    read_index(ckpt)  # plausible on its own
    err = bad(validate_checkpoint, ckpt)
    assert "outside its data shard" in str(err) and err.tensor == F


def test_string_entry_too_small(ckpt):
    rewrite_entry(ckpt, S.encode(), lambda e: setattr(e, "size", 6))
    assert "too small" in str(bad(read_index, ckpt))


def test_variant_allowed_on_request(ckpt):
    def fn(e):
        e.dtype = 21  # ([varint len][VariantTensorDataProto][crc]) per element
        _set_shape([2])(e)

    rewrite_entry(ckpt, F.encode(), fn)
    bad(read_index, ckpt)
    assert read_index(ckpt, allow_variant=True).entries[F].dtype == 21


def test_non_utf8_name(ckpt):
    kvs = index_kvs(ckpt)
    kvs.append((b"zz\xff\xfe", kvs[-1][1]))
    write_index(ckpt, kvs)
    assert "UTF-8" in str(bad(read_index, ckpt))


# ---------------------------------------------------------------------------
# Partitioned (sliced) variables.
# ---------------------------------------------------------------------------


def _slice_keys(prefix):
    return [k for k, _ in index_kvs(prefix) if k[:1] == b"\x00"]


def test_slice_entry_missing(ckpt1):
    drop = _slice_keys(ckpt1)[1]
    write_index(ckpt1, [(k, v) for k, v in index_kvs(ckpt1) if k != drop])
    err = bad(read_index, ckpt1)
    assert err.tensor == "part" and "slice 100,100:0,2 is listed but has no entry" in str(err)


def test_orphan_slice_entry(ckpt1):
    kvs = index_kvs(ckpt1)
    w = dict(kvs)[b"layer/kernel"]
    kvs.append((encode_slice_key("layer/kernel", ((0, 2), (0, 3))), w))
    kvs.sort()
    write_index(ckpt1, kvs)
    err = bad(read_index, ckpt1)
    assert err.tensor == "layer/kernel (slice 0,2:0,3)" and "no partitioned" in str(err)


def test_slice_size_mismatch(ckpt1):
    key = _slice_keys(ckpt1)[0]
    rewrite_entry(ckpt1, key, lambda e: setattr(e, "size", 4))
    err = bad(read_index, ckpt1)
    assert err.tensor == "part (slice 0,100:0,2)" and "does not match" in str(err)


@pytest.mark.parametrize(
    "fn, words",
    [
        (lambda e: e.slices.append(e.slices[0]), "same slice twice"),
        (lambda e: setattr(e.slices[2].extent[0], "length", 101), "outside shape"),
        (lambda e: e.slices[0].extent.pop(), "rank 1"),
    ],
)
def test_bad_full_entry_slices(ckpt1, fn, words):
    rewrite_entry(ckpt1, b"part", fn)
    err = bad(read_index, ckpt1)
    assert words in str(err) and err.tensor == "part"


def test_overlapping_slices(ckpt1):
    # Move the third part to rows 150..250, in the full entry and its key.
    old_key = encode_slice_key("part", ((200, 100), (0, 2)))
    new_key = encode_slice_key("part", ((150, 100), (0, 2)))
    kvs = []
    for k, v in index_kvs(ckpt1):
        if k == b"part":
            e = tensor_bundle_pb2.BundleEntryProto()
            e.ParseFromString(v)
            e.slices[2].extent[0].start = 150
            v = e.SerializeToString()
        kvs.append((new_key if k == old_key else k, v))
    write_index(ckpt1, sorted(kvs))
    err = bad(read_index, ckpt1)
    assert err.tensor == "part" and "100,100:0,2 and 150,100:0,2 overlap" in str(err)


def test_bad_slice_key(ckpt1):
    kvs = index_kvs(ckpt1)
    kvs.insert(1, (b"\x00\x05junk", kvs[1][1]))
    write_index(ckpt1, kvs)
    assert "not a valid slice key" in str(bad(read_index, ckpt1))


def test_truncated_shard_reports_slice(ckpt1):
    index = read_index(ckpt1)
    last = max(index.data_entries(), key=lambda e: e.offset)
    with open(index.data_path(0), "r+b") as f:
        f.truncate(last.offset + 1)
    err = bad(validate_checkpoint, ckpt1)
    assert err.tensor == last.describe() and "outside its data shard" in str(err)


# ---------------------------------------------------------------------------
# Data shards.
# ---------------------------------------------------------------------------


def test_missing_data_shard(ckpt):
    shard = ckpt + ".data-00000-of-00001"
    os.remove(shard)
    read_index(ckpt)  # the index alone is fine
    err = bad(validate_checkpoint, ckpt)
    assert err.path == shard and "ckpt-1.data-00000-of-00001 is missing" in str(err)


def test_missing_second_shard(ckpt):
    rewrite_header(ckpt, lambda h: setattr(h, "num_shards", 2))
    rewrite_entry(ckpt, F.encode(), lambda e: setattr(e, "shard_id", 1))
    os.rename(ckpt + ".data-00000-of-00001", ckpt + ".data-00000-of-00002")
    err = bad(validate_checkpoint, ckpt)
    assert "data-00001-of-00002 is missing" in str(err)


def test_truncated_data_shard(ckpt):
    shard = Path(ckpt + ".data-00000-of-00001")
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 3)
    err = bad(validate_checkpoint, ckpt)
    assert str(shard) in str(err) and f"> file size {size - 3})" in str(err)


def test_lfs_pointer_shard(ckpt):
    shard = Path(ckpt + ".data-00000-of-00001")
    shard.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 1428\n")
    err = bad(validate_checkpoint, ckpt)
    assert "Git LFS pointer" in str(err) and str(shard) in str(err)


def test_shard_is_directory(ckpt):
    shard = Path(ckpt + ".data-00000-of-00001")
    shard.unlink()
    shard.mkdir()
    assert "directory" in str(bad(validate_checkpoint, ckpt))


def test_corrupt_string_length_table(ckpt):
    e = read_index(ckpt).entries[S]
    shard = Path(ckpt + ".data-00000-of-00001")
    data = bytearray(shard.read_bytes())
    data[e.offset] = 0x7F  # first string claims 127 bytes
    shard.write_bytes(bytes(data))
    err = bad(validate_checkpoint, ckpt)
    assert err.tensor == S and "checksum" in str(err)
    validate_checkpoint(ckpt, check_strings=False)


def test_string_lengths_inconsistent_with_size(ckpt):
    # Valid length table + checksum, but the entry claims one byte more.
    index = read_index(ckpt)
    e = index.entries[S]
    other = max(index.data_entries(), key=lambda x: x.offset)
    assert other.name != S
    # Swap sizes around so that nothing overlaps: grow S into a new tail.
    shard = Path(ckpt + ".data-00000-of-00001")
    blob = shard.read_bytes()
    new_off = len(blob)
    shard.write_bytes(blob + blob[e.offset : e.offset + e.size] + b"!")

    def fn(x):
        x.offset = new_off
        x.size = e.size + 1

    rewrite_entry(ckpt, S.encode(), fn)
    err = bad(validate_checkpoint, ckpt)
    assert "lengths add up to" in str(err)


def test_huge_string_length_with_valid_checksum(ckpt):
    """A string claiming 2**38 bytes behind a *correct* length checksum: the
    index alone is valid, TF's reader segfaults allocating it; we refuse."""
    key = S  # three elements: lengths 2**38, 0, 0
    shard = Path(ckpt + ".data-00000-of-00001")
    crc = masked_crc32c(struct.pack("<QII", 1 << 38, 0, 0))
    blob = put_varint(1 << 38) + b"\0\0" + struct.pack("<I", crc) + b"x" * 6
    end = shard.stat().st_size
    shard.write_bytes(shard.read_bytes() + blob)

    def fn(e):
        e.offset, e.size = end, len(blob)

    rewrite_entry(ckpt, key.encode(), fn)
    read_index(ckpt)
    err = bad(validate_checkpoint, ckpt)
    assert err.tensor == key and "lengths add up to 274877906956 bytes" in str(err)


# ---------------------------------------------------------------------------
# Seeded random mutations: only BadCheckpointError or success, ever.
# ---------------------------------------------------------------------------


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    op = rng.randrange(5)
    if op == 0:
        for _ in range(rng.randint(1, 3)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif op == 1:
        del buf[rng.randrange(len(buf)) :]
    elif op == 2:
        i = rng.randrange(len(buf))
        buf[i : i + 8] = rng.randbytes(8)
    elif op == 3:
        i = rng.randrange(len(buf))
        del buf[i : i + rng.randint(1, 16)]
    else:
        buf += rng.randbytes(rng.randint(1, 64))
    return bytes(buf)


def test_random_mutations(tf1_prefix, tf2_prefix, tmp_path):
    rng = random.Random(20240611)
    outcomes = {"ok": 0, "bad": 0}
    sources = []
    for src, sub in ((tf1_prefix, "a"), (tf2_prefix, "b")):
        (tmp_path / sub).mkdir()
        sources.append(copy_ckpt(src, tmp_path / sub))
    originals = {p: Path(p + ".index").read_bytes() for p in sources}
    kvs_of = {p: parse_table(originals[p]) for p in sources}
    for case in range(300):
        prefix = sources[case % 2]
        kind = rng.randrange(3)
        if kind == 0:  # raw bytes of the file (CRC/footer paths)
            data = _mutate_bytes(rng, originals[prefix])
        elif kind == 1:  # one key or value mutated, table rebuilt with good CRCs
            kvs = list(kvs_of[prefix])
            i = rng.randrange(len(kvs))
            k, v = kvs[i]
            if rng.random() < 0.7:
                v = _mutate_bytes(rng, v) if v else v
            else:
                k = _mutate_bytes(rng, k) if k else k
            kvs[i] = (k, v)
            data = build_table(kvs, block_size=rng.choice([64, 4096]))[0]
        else:  # a block's bytes mutated, its CRC recomputed (framing paths)
            data, blocks = build_table(kvs_of[prefix], block_size=rng.choice([64, 512]))
            off, size = rng.choice(blocks)
            block = _mutate_bytes(rng, data[off : off + size])[: size] if size else b""
            block = block.ljust(size, b"\0")
            crc = masked_crc32c(block + b"\0")
            data = data[:off] + block + b"\0" + struct.pack("<I", crc) + data[off + size + 5 :]
        Path(prefix + ".index").write_bytes(data)
        try:
            result = validate_checkpoint(prefix)
        except BadCheckpointError as e:
            assert "unexpected" not in str(e), (case, str(e))
            assert str(e).startswith(prefix), str(e)
            outcomes["bad"] += 1
        else:
            assert isinstance(result, BundleIndex)
            assert all(isinstance(x, IndexEntry) for x in result.entries.values())
            outcomes["ok"] += 1
    assert outcomes["bad"] > 150, outcomes
