"""Capability: computed tensors are computed chunk by chunk from their inputs' bytes, bit-identical to TF.

* both ways: cast (bfloat16 and float16 both ways), resize of the first axis
  (pad with each INIT, slice), average, weighted linear, unnormalized linear
  and task arithmetic run on real TF-written checkpoints (TF1 ``Saver``,
  ``tf.train.Checkpoint``) on the byte path, with a memory budget small
  enough to force many chunks, and on the TF path (``byte_path=False``):
  TF's reader sees the same names, dtypes, shapes and bits, and the outputs
  restore with ``Saver`` / ``tf.train.Checkpoint``;
* a TF1 variable partitioned along its first axis is read part by part (each part's CRC32C checked);
  one partitioned along an inner axis, a V1 source, a string tensor fall back to TensorFlow;
  slerp, a resize of an inner axis and ``init=mean`` are held whole, and
  ``--dry-run`` says which, per entry;
* corrupt bytes inside an input of a chunked tensor (kept rows or rows a
  slice drops) are refused by the CRC32C accumulated over the chunks, nothing published;
* NaN/Inf are caught chunk by chunk unless allowed.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

import ckptsurgery as cs
from ckptsurgery.errors import BadCheckpointError, NonFiniteError
from ckptsurgery.execute import chunked
from ckptsurgery.io.index import validate_checkpoint
from ckptsurgery.plan.byte_path import chunk_plans
from ckptsurgery.plan.merge import MethodRule, Take
from ckptsurgery.report.verify import verify
from conftest import run_cli
from helpers import copy_files, flip_in, nothing_at, tf_values
from models import write_tf1_checkpoint, write_tf1_v1_checkpoint

KEY = "/.ATTRIBUTES/VARIABLE_VALUE"
SMALL = "48B"  # a few elements per chunk: every tensor here takes several chunks


# -- checkpoints ----------------------------------------------------------------------------------
class Mixed(tf.Module):
    """float32, float16 and bfloat16 variables of several ranks, and an integer."""

    def __init__(self, seed: int, emb_rows: int = 23, emb_dtype=tf.float32, half_dtype=tf.float16,
                 brain_dtype=tf.bfloat16, poison: bool = False):
        super().__init__()
        rng = np.random.default_rng(seed)
        vec = rng.normal(size=(13,)).astype(np.float32)
        if poison:
            vec[9] = np.inf
        self.emb = tf.Variable(tf.cast(rng.normal(size=(emb_rows, 4)).astype(np.float32), emb_dtype))
        self.half = tf.Variable(tf.cast(rng.normal(size=(9, 3)) * 100, half_dtype))
        self.brain = tf.Variable(tf.cast(rng.normal(size=(17,)), brain_dtype))
        self.vec = tf.Variable(vec)
        self.step = tf.Variable(np.int64(seed))


@pytest.fixture(scope="module")
def ckpts(tf1_ckpt, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("chunked")
    out = {"tf1": tf1_ckpt,
           "tf1b": write_tf1_checkpoint(root / "tf1b", seed=1),
           "tf1base": write_tf1_checkpoint(root / "tf1base", seed=2)}
    for alias, seed, poison in (("mixed", 1, False), ("mixedb", 2, False), ("mixedbase", 3, False),
                                ("poisoned", 4, True)):
        out[alias] = tf.train.Checkpoint(model=Mixed(seed, poison=poison)).save(str(root / alias / "ckpt"))
    return out


# -- restoring ------------------------------------------------------------------------------------
def restore_with_saver(prefix: str) -> None:
    """Restore every tensor with a TF1 ``Saver`` into variables of the written dtype and shape."""
    expected = tf_values(prefix)
    dtypes = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
    with tf.Graph().as_default():
        variables = {name: tf.compat.v1.Variable(tf.zeros(shape, dtypes[name]), name=f"v{i}")
                     for i, (name, (dtype, shape, _)) in enumerate(expected.items()) if dtype != "string"}
        saver = tf.compat.v1.train.Saver(var_list=variables)
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, prefix)
            values = sess.run(variables)
    assert values and len(values) == sum(1 for dtype, _, _ in expected.values() if dtype != "string")
    for name, value in values.items():
        assert np.asarray(value).tobytes() == expected[name][2], name


def restore_mixed(**model_args):
    """Restore with ``tf.train.Checkpoint`` into a :class:`Mixed` built with ``model_args`` (dtypes, rows)."""

    def restore(prefix: str) -> None:
        model = Mixed(seed=99, **model_args)
        tf.train.Checkpoint(model=model).restore(prefix).assert_consumed()
        expected = tf_values(prefix)
        for attr in ("emb", "half", "brain", "vec", "step"):
            got = np.asarray(getattr(model, attr).numpy())
            assert got.tobytes() == expected[f"model/{attr}{KEY}"][2], attr

    return restore


# -- both ways --------------------------------------------------------------------------------------
def tf2_merge(method: str, params: dict | None = None, weights=None, base: bool = False):
    pattern = "^model/(emb|half|brain|vec)/"

    def run(c, out, **o):
        sources = {"a": c["mixed"], "b": c["mixedb"]} | ({"base": c["mixedbase"]} if base else {})
        return cs.merge(sources, out, takes=[Take("a", "."), Take("b", pattern)], base="base" if base else None,
                        methods=[MethodRule(pattern, method, params or {}, weights=weights)],
                        memory_budget=SMALL, **o)

    return run


def tf1_merge(method: str, weights=None):
    pattern = "^(encoder|head)/"

    def run(c, out, **o):
        return cs.merge({"base": c["tf1base"], "a": c["tf1"], "b": c["tf1b"]}, out, base="base",
                        takes=[Take("a", "."), Take("b", pattern)],
                        methods=[MethodRule(pattern, method, weights=weights)], memory_budget=SMALL, **o)

    return run


def edit(source: str, *rules):
    return lambda c, out, **o: cs.edit(c[source], out, list(rules), memory_budget=SMALL, **o)


OPERATIONS = {
    # name: (run(ckpts, out, **options), restore(out))
    "tf1-cast-f32-bf16": (edit("tf1", cs.Cast("float32", "bfloat16")), restore_with_saver),
    "tf1-cast-f32-f16": (edit("tf1", cs.Cast("float32", "float16", "^encoder/")), restore_with_saver),
    "tf1-pad-zeros": (edit("tf1", cs.Resize("^head/kernel$", "13,*")), restore_with_saver),
    "tf1-pad-normal": (edit("tf1", cs.Resize("^head/kernel$", "12,*", "normal:0.5", seed=3)), restore_with_saver),
    "tf1-slice": (edit("tf1", cs.Resize("^encoder/dense/kernel$", "2,*")), restore_with_saver),
    "tf1-average": (lambda c, out, **o: cs.average([c["tf1"], c["tf1b"]], out, memory_budget=SMALL, **o),
                    restore_with_saver),
    "tf1-average-weighted": (lambda c, out, **o: cs.average([c["tf1"], c["tf1b"]], out, weights=[0.3, 0.7],
                                                            memory_budget=SMALL, **o), restore_with_saver),
    "tf1-task-arithmetic": (tf1_merge("task_arithmetic", weights=[0.5, 1.5]), restore_with_saver),
    "tf2-cast-bf16-f32": (edit("mixed", cs.Cast("bfloat16", "float32")), restore_mixed(brain_dtype=tf.float32)),
    "tf2-cast-f32-f16": (edit("mixed", cs.Cast("float32", "float16", "^model/emb/")),
                         restore_mixed(emb_dtype=tf.float16)),
    "tf2-cast-f16-bf16": (edit("mixed", cs.Cast("float16", "bfloat16")), restore_mixed(half_dtype=tf.bfloat16)),
    "tf2-pad-uniform-then-cast": (edit("mixed", cs.Resize("^model/emb/", "40,*", "uniform:0.1", seed=5),
                                       cs.Cast("float32", "bfloat16", "^model/emb/")),
                                  restore_mixed(emb_rows=40, emb_dtype=tf.bfloat16)),
    "tf2-cast-then-slice": (edit("mixed", cs.Cast("float32", "float16", "^model/emb/"),
                                 cs.Resize("^model/emb/", "7,*")), restore_mixed(emb_rows=7, emb_dtype=tf.float16)),
    "tf2-slice-then-pad": (edit("mixed", cs.Resize("^model/emb/", "5,*"), cs.Resize("^model/emb/", "31,*", "normal")),
                           restore_mixed(emb_rows=31)),
    "tf2-average": (lambda c, out, **o: cs.average([c["mixed"], c["mixedb"], c["mixedbase"]], out,
                                                   memory_budget=SMALL, **o), restore_mixed()),
    "tf2-average-ema": (lambda c, out, **o: cs.average([c["mixed"], c["mixedb"], c["mixedbase"]], out, ema=0.9,
                                                       memory_budget=SMALL, **o), restore_mixed()),
    "tf2-linear-weighted": (tf2_merge("linear", weights=[0.25, 0.75]), restore_mixed()),
    "tf2-linear-unnormalized": (tf2_merge("linear", {"normalize": False}, weights=[0.5, 2.0]), restore_mixed()),
    "tf2-task-arithmetic": (tf2_merge("task_arithmetic", weights=[0.5, -0.25], base=True), restore_mixed()),
}


@pytest.fixture
def chunk_counts(monkeypatch) -> Counter:
    """Chunks yielded per output tensor by the chunked path."""
    counts: Counter = Counter()
    real = chunked.output_chunks

    def spy(plan, chunk_plan, *args, **kwargs):
        for chunk in real(plan, chunk_plan, *args, **kwargs):
            counts[chunk_plan.entry.name] += 1
            yield chunk

    monkeypatch.setattr(chunked, "output_chunks", spy)
    return counts


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_chunked_tensors_equal_the_tf_path_bit_for_bit_and_restore(operation, ckpts, chunk_counts, tmp_path):
    run, restore = OPERATIONS[operation]
    plan = run(ckpts, tmp_path / "plan" / "m", dry_run=True)
    expected_chunked = set(chunk_plans(plan))
    computed = {e.name for e in plan.entries if not e.passthrough}
    assert expected_chunked and expected_chunked <= computed
    by_chunks, by_tf = str(tmp_path / "chunks" / "m"), str(tmp_path / "tf" / "m")
    run(ckpts, by_chunks, progress=False, verify=True)  # --verify recomputes every value the TF way
    assert set(chunk_counts) == expected_chunked
    sizes = {e.name: e.nbytes_in + e.nbytes_out for e in plan.entries}
    assert all(count >= 2 for name, count in chunk_counts.items() if sizes[name] > 48), "the budget forces chunks"
    assert max(chunk_counts.values()) >= 2
    chunk_counts.clear()
    run(ckpts, by_tf, progress=False, byte_path=False)
    assert not chunk_counts, "byte_path=False must compute every tensor through TensorFlow"

    assert tf_values(by_chunks) == tf_values(by_tf)
    validate_checkpoint(by_chunks)
    report = verify(by_chunks)
    assert report.ok, report.error_line()
    restore(by_chunks)


def test_first_axis_partitions_are_read_part_by_part(ckpts, tmp_path):
    plan = cs.edit(ckpts["tf1"], tmp_path / "o" / "m", [cs.Cast("float32", "bfloat16")], dry_run=True)
    chunk = chunk_plans(plan)
    assert {"embed/table", "embed/table/Adam", "encoder/dense/kernel", "head/kernel", "beta1_power"} <= set(chunk)
    table = chunk["embed/table"].inputs[0]
    assert [part.shape for part, _ in table.segments] == [(4, 3), (3, 3), (3, 3)]  # 10 rows in 3 parts, in order


@pytest.fixture(scope="module")
def inner_partitioned(tmp_path_factory) -> str:
    """A TF1 checkpoint with a variable partitioned along its second axis."""
    folder = tmp_path_factory.mktemp("inner")
    with tf.Graph().as_default():
        tf.compat.v1.get_variable("wide", shape=(3, 8), initializer=tf.compat.v1.random_normal_initializer(seed=1),
                                  partitioner=lambda shape, dtype: [1, 2])
        tf.compat.v1.get_variable("tall", shape=(8, 3), initializer=tf.compat.v1.random_normal_initializer(seed=2),
                                  partitioner=lambda shape, dtype: [3, 1])
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return tf.compat.v1.train.Saver().save(sess, str(folder / "model.ckpt"), write_meta_graph=False)


def test_inner_axis_partitions_fall_back_and_both_ways_agree(inner_partitioned, chunk_counts, tmp_path):
    def run(out, **o):
        return cs.edit(inner_partitioned, out, [cs.Cast("float32", "bfloat16")], memory_budget=SMALL, **o)

    plan = run(tmp_path / "plan" / "m", dry_run=True)
    assert _line(plan, "wide").endswith("[falls back: partitioned along an inner axis, decoded through TensorFlow]")
    assert _line(plan, "tall").endswith("[chunked]")
    run(str(tmp_path / "a" / "m"), progress=False)
    assert set(chunk_counts) == {"tall"} and chunk_counts["tall"] >= 2
    run(str(tmp_path / "b" / "m"), progress=False, byte_path=False)
    assert tf_values(str(tmp_path / "a" / "m")) == tf_values(str(tmp_path / "b" / "m"))
    restore_with_saver(str(tmp_path / "a" / "m"))


def test_big_tensor_memory_is_chunks_not_the_tensor(tmp_path):
    """The chunk size follows the budget, not the tensor (the RSS target itself is measured in scripts/bench)."""
    from ckptsurgery.plan.chunking import ChunkInput, ChunkPlan
    from ckptsurgery.io.index import IndexEntry
    from ckptsurgery.plan.entries import OutputEntry, TensorRef

    n = 1_500_000_000  # a 6 GB float32 tensor, averaged over four inputs
    entry = OutputEntry("w", tuple(TensorRef(f"s{i}", "w") for i in range(4)), "float32", (n,), 4 * n * 4, 4 * n,
                        method="linear")
    inputs = tuple(ChunkInput(IndexEntry("w", 1, (n,), 0, 0, 4 * n, 0), "x") for _ in range(4))
    rows = chunked.chunk_rows(ChunkPlan(entry, inputs, n, 1, ()), 128_000_000)
    working_set = rows * (2 * 4 * 4 + 8)
    assert rows < n and working_set <= 128_000_000


# -- dry run ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def v1_ckpt(tmp_path_factory) -> str:
    return write_tf1_v1_checkpoint(tmp_path_factory.mktemp("v1"))


def _line(plan, name: str) -> str:
    return next(line for line in plan.render().splitlines() if line.startswith(f"  {name}  "))


def test_dry_run_says_per_entry_chunked_held_whole_or_falls_back(ckpts, v1_ckpt, tmp_path):
    out = tmp_path / "o" / "m"
    plan = cs.edit(ckpts["tf1"], out, [cs.Cast("float32", "float16"), cs.Resize("^vocab$", "5")], dry_run=True)
    assert _line(plan, "encoder/dense/kernel").endswith("[chunked]")
    assert _line(plan, "embed/table").endswith("[chunked]")
    assert _line(plan, "vocab").endswith("[falls back: string dtype, decoded through TensorFlow]")
    assert "counts  int32[5]  20 B\n" in plan.render() + "\n"  # unchanged: no note
    computed = {e["name"]: e.get("computed") for e in plan.to_json()["entries"]}
    assert computed["encoder/dense/kernel"] == "chunked" and computed["counts"] is None
    assert computed["vocab"] == "falls back: string dtype, decoded through TensorFlow"
    summary = plan.to_json()["byte_path"]
    assert summary["chunked"] == 14 and summary["decoded"] == {"computed, falls back: string dtype": 1}

    plan = cs.edit(v1_ckpt, out, [cs.Cast("float32", "float16")], dry_run=True)
    assert _line(plan, "head/kernel").endswith("[falls back: source src is a V1 checkpoint, decoded through TensorFlow]")

    plan = cs.edit(ckpts["mixed"], out, [cs.Resize("^model/emb/", "*,6"), cs.Resize("^model/half/", "12,*", "mean"),
                                         cs.Resize("^model/vec/", "20", "mean")], dry_run=True)
    assert _line(plan, f"model/emb{KEY}").endswith("[held whole: resize of an inner axis]")
    assert _line(plan, f"model/half{KEY}").endswith("[held whole: resize init=mean needs the whole first axis]")

    plan = tf2_merge("slerp", {"t": 0.3})(ckpts, out, dry_run=True)
    assert _line(plan, f"model/emb{KEY}").endswith("[held whole: merge method slerp needs the whole tensor]")

    result = run_cli("edit", ckpts["mixed"], str(out), "--cast", "float32:bfloat16", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"model/emb{KEY}  bfloat16[23, 4]" in result.stdout and "[chunked]" in result.stdout
    assert "2 computed chunk by chunk from bytes" in result.stdout


def test_held_whole_and_fallback_entries_still_equal_the_tf_path(ckpts, chunk_counts, tmp_path):
    def run(out, **o):
        return cs.edit(ckpts["mixed"], out, [cs.Resize("^model/emb/", "*,6", "normal"),
                                             cs.Resize("^model/half/", "12,*", "mean"),
                                             cs.Cast("float32", "float16", "^model/vec/")], **o)

    run(str(tmp_path / "a" / "m"), progress=False, memory_budget=SMALL)
    assert set(chunk_counts) == {f"model/vec{KEY}"}
    run(str(tmp_path / "b" / "m"), progress=False, byte_path=False)
    assert tf_values(str(tmp_path / "a" / "m")) == tf_values(str(tmp_path / "b" / "m"))


# -- checks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("operation, corrupt, tensor, crc_check", [
    ("average", "mixedb", f"model/emb{KEY}", True),
    ("cast", "mixed", f"model/brain{KEY}", True),
    ("slice", "mixed", f"model/emb{KEY}", True),  # the flipped byte is in rows the slice drops: still read, checked
    # --no-crc-check skips checking copied bytes (carried with their CRC32C, still detectable); a computed
    # tensor would get a fresh CRC32C hiding the corruption, so its inputs are always checked, as on the TF path.
    ("average", "mixedb", f"model/emb{KEY}", False),
    ("average", "tf1b", "embed/table", True),  # in the middle part of a partitioned variable
])
def test_corrupt_input_of_a_chunked_tensor_is_refused_and_nothing_published(operation, corrupt, tensor, crc_check,
                                                                             ckpts, chunk_counts, tmp_path):
    sources = dict(ckpts)
    sources[corrupt] = copy_files(ckpts[corrupt], tmp_path / "bad")
    flip_in(sources[corrupt], tensor, 1 if corrupt == "tf1b" else 0)
    out = tmp_path / "out" / "m"
    with pytest.raises(BadCheckpointError, match="CRC32C") as caught:
        if operation == "average" and corrupt == "tf1b":
            cs.average([sources["tf1"], sources["tf1b"]], out, memory_budget=SMALL, progress=False)
        elif operation == "average":
            cs.average([sources["mixed"], sources["mixedb"]], out, memory_budget=SMALL, progress=False,
                       crc_check=crc_check)
        elif operation == "cast":
            cs.edit(sources["mixed"], out, [cs.Cast("bfloat16", "float32")], memory_budget=SMALL, progress=False)
        else:
            cs.edit(sources["mixed"], out, [cs.Resize("^model/emb/", "2,*")], memory_budget=SMALL, progress=False)
    assert caught.value.tensor == tensor and str(tmp_path / "bad") in str(caught.value)
    assert chunk_counts[tensor] >= 1, "refused by the chunked path, after some chunks"
    assert nothing_at(out.parent)


def test_nonfinite_results_are_caught_chunk_by_chunk(ckpts, chunk_counts, tmp_path):
    for byte_path in (True, False):
        with pytest.raises(NonFiniteError, match=f"model/vec{KEY}"):
            cs.average([ckpts["mixed"], ckpts["poisoned"]], tmp_path / "out" / "m", memory_budget=SMALL,
                       progress=False, byte_path=byte_path)
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert 1 <= chunk_counts[f"model/vec{KEY}"] < 13, "caught in the chunk holding the Inf, before the end"
    allowed = {}
    for byte_path in (True, False):
        out = str(tmp_path / str(byte_path) / "m")
        cs.average([ckpts["mixed"], ckpts["poisoned"]], out, memory_budget=SMALL, progress=False,
                   byte_path=byte_path, allow_nonfinite=True)
        allowed[byte_path] = tf_values(out)
    assert allowed[True] == allowed[False]
    assert np.isinf(np.frombuffer(allowed[True][f"model/vec{KEY}"][2], np.float32)).sum() == 1


def test_open_input_shards_stay_bounded(ckpts, monkeypatch):
    """Shards stay open from tensor to tensor, but past a bound those the current tensor does not use close."""
    from ckptsurgery.io.reader import open_checkpoint
    from ckptsurgery.plan.chunking import ChunkInput

    monkeypatch.setattr(chunked.InputShards, "MAX_OPEN", 2)
    inputs = []
    for alias in ("mixed", "mixedb", "mixedbase"):
        index = open_checkpoint(ckpts[alias]).bundle_index
        stored = index.entries[f"model/vec{KEY}"]
        inputs.append(ChunkInput(stored, index.data_path(stored.shard_id)))
    shards = chunked.InputShards()

    def open_for(*chosen):
        return [next(iter(files.values())) for files in shards.for_inputs(chosen)]

    first = open_for(inputs[0], inputs[1])
    assert open_for(inputs[0], inputs[1]) == first  # kept open, not reopened
    twice = open_for(inputs[2], inputs[2])  # one file twice: two shards (read in parallel)
    assert twice[0] is not twice[1] and all(s.fd < 0 for s in first) and len(shards._open) == 2
    shards.close()
    assert all(s.fd < 0 for s in twice)
