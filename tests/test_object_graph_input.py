"""Hostile input, object-graph layer: a TF2 checkpoint's ``_CHECKPOINTABLE_OBJECT_GRAPH`` is validated.

Each case mutates the ``TrackableObjectGraph`` proto of a real ``tf.train.Checkpoint``
save (built with TF's own ``trackable_object_graph_pb2``: ids out of range,
self-referencing slots, keys the bundle lacks, an empty graph, truncated and
garbage bytes, a non-scalar tensor, and allowed child cycles) and writes it,
with the real tensors, into a new checkpoint through ``tf.raw_ops.SaveV2``.
Then ``verify``, ``copy`` and ``edit --dry-run`` run on it in-process (a few
through the real CLI).  For every case: no traceback, a documented exit code
(3 for a broken graph, with one line naming the file and what is wrong), nothing
published, the input unchanged; a sound graph copies and restores.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2 as pb

from ckptsurgery import cli
from ckptsurgery.report.verify import BAD, verify
from ckptsurgery.plan.objectgraph import object_graph_problems
from ckptsurgery.io.reader import OBJECT_GRAPH_KEY
from models import TinyModel

pytestmark = pytest.mark.slow  # crash/fuzz/hostile suite: ./scripts/test --fast skips it

SEED = 20261126


def _graph(prefix: str) -> pb.TrackableObjectGraph:
    graph = pb.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(prefix).get_tensor(OBJECT_GRAPH_KEY))
    return graph


def _save_with_graph(src: str, dst: Path, graph_value) -> str:
    """Write SRC's tensors with ``graph_value`` as the object graph, through TF's own SaveV2."""
    reader = tf.train.load_checkpoint(src)
    names = sorted(reader.get_variable_to_shape_map())
    values = [graph_value if n == OBJECT_GRAPH_KEY else reader.get_tensor(n) for n in names]
    dst.mkdir(parents=True)
    prefix = str(dst / "ckpt")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(v) for v in values])
    return prefix


def _mutations(graph: pb.TrackableObjectGraph) -> list[tuple[str, object, bool]]:
    """(id, graph tensor value, sound?) built from the real graph with a seeded generator."""
    rng = random.Random(SEED)
    good = graph.SerializeToString()
    n = len(graph.nodes)
    with_children = [i for i, node in enumerate(graph.nodes) if node.children]
    with_attributes = [i for i, node in enumerate(graph.nodes) if node.attributes]
    cases: list[tuple[str, object, bool]] = []

    def mutated(name: str, edit, sound: bool = False) -> None:
        g = pb.TrackableObjectGraph()
        g.CopyFrom(graph)
        edit(g)
        cases.append((name, g.SerializeToString(), sound))

    for k in range(3):
        node_id = rng.choice(with_children)
        bad = rng.choice([n, n + 7, 2**31 - 1, -1, -2**31])
        mutated(f"child-out-of-range-{k}",
                lambda g, i=node_id, b=bad: setattr(g.nodes[i].children[rng.randrange(len(g.nodes[i].children))],
                                                    "node_id", b))
    for k, field in enumerate(("original_variable_node_id", "slot_variable_node_id")):
        def add_slot(g, field=field):
            slot = g.nodes[0].slot_variables.add()
            slot.slot_name = "m"
            slot.original_variable_node_id, slot.slot_variable_node_id = with_attributes[0], with_attributes[1]
            setattr(slot, field, n + 3)
        mutated(f"slot-{field}-out-of-range", add_slot)

    def self_slot(g):
        slot = g.nodes[0].slot_variables.add()
        slot.slot_name = "m"
        slot.original_variable_node_id = slot.slot_variable_node_id = with_attributes[0]
    mutated("slot-is-its-own-variable", self_slot)

    for k in range(2):
        node_id = rng.choice(with_attributes)
        mutated(f"missing-key-{k}", lambda g, i=node_id: setattr(g.nodes[i].attributes[0], "checkpoint_key",
                                                                 "no/such/key/.ATTRIBUTES/VARIABLE_VALUE"))
    mutated("empty-key", lambda g: setattr(g.nodes[with_attributes[0]].attributes[0], "checkpoint_key", ""))
    mutated("no-nodes", lambda g: g.ClearField("nodes"))

    def cycle(g):  # allowed: TF walks the graph with a visited set
        child = g.nodes[with_children[-1]].children.add()
        child.node_id, child.local_name = 0, "back_to_root"
    mutated("child-cycle-to-root", cycle, sound=True)

    for cut in sorted({1, 2, 5, len(good) // 3, len(good) // 2, len(good) - 3, len(good) - 1}):
        cases.append((f"truncated-{cut}", good[:cut], None))  # may decode to a smaller graph
    for k in range(3):
        cases.append((f"garbage-{k}", bytes(rng.randrange(256) for _ in range(rng.choice([3, 40, 400]))), None))
    flipped = bytearray(good)
    for _ in range(4):
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    cases.append(("bit-flips", bytes(flipped), None))
    cases.append(("non-scalar", np.array([good, good], dtype=object), False))
    cases.append(("sound", good, True))
    return cases


@pytest.fixture(scope="module")
def mutated_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphs")
    src = tf.train.Checkpoint(model=TinyModel(3)).save(str(root / "orig" / "ckpt"))
    graph = _graph(src)
    out = []
    for name, value, sound in _mutations(graph):
        prefix = _save_with_graph(src, root / name, value)
        if sound is None:  # truncated or garbage: sound only if it still decodes to a consistent graph
            names = set(tf.train.load_checkpoint(prefix).get_variable_to_shape_map())
            sound = not object_graph_problems(value, names)
        out.append((name, prefix, sound))
    return out


def _digest(prefix: str) -> dict[str, str]:
    folder = Path(prefix).parent
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_every_mutated_graph_is_reported_or_copied(mutated_checkpoints, tmp_path, capsys):
    failures = []
    broken = 0
    for name, prefix, sound in mutated_checkpoints:
        before = _digest(prefix)
        report = verify(prefix)
        graph_row = next(t for t in report.tensors if t.name == OBJECT_GRAPH_KEY)
        if (graph_row.status == BAD) == sound or report.exit_code != (0 if sound else 3):
            failures.append(f"{name}: verify says {graph_row.status} {graph_row.detail!r}")
        for argv in (["copy", prefix, str(tmp_path / name / "copy" / "ckpt"), "--no-progress"],
                     ["edit", prefix, str(tmp_path / name / "edit" / "ckpt"), "--drop", "decoder", "--dry-run"]):
            capsys.readouterr()
            code = cli.main(argv)
            err = capsys.readouterr().err.strip()
            want = 0 if sound else 3
            if code != want or (not sound and (len(err.splitlines()) != 1 or "object graph" not in err
                                               or prefix not in err)):
                failures.append(f"{name}: {argv[0]} exit {code} (want {want}): {err[:300]!r}")
        if not sound:
            broken += 1
            if (tmp_path / name).exists():
                failures.append(f"{name}: something was written under {tmp_path / name}")
        if _digest(prefix) != before:
            failures.append(f"{name}: the input changed")
    assert not failures, "\n".join(failures)
    assert broken >= 12  # the suite really exercises broken graphs


def test_sound_graph_with_a_cycle_still_restores(mutated_checkpoints, tmp_path, capsys):
    prefix = next(p for n, p, _ in mutated_checkpoints if n == "child-cycle-to-root")
    out = tmp_path / "c" / "ckpt"
    assert cli.main(["edit", prefix, str(out), "--drop", "decoder", "--no-progress"]) == 0, capsys.readouterr().err
    restored = TinyModel(9)
    tf.train.Checkpoint(model=restored).restore(str(out)).expect_partial()
    expected = tf.train.load_checkpoint(prefix)
    np.testing.assert_array_equal(restored.encoder.w.numpy(),
                                  expected.get_tensor("model/encoder/w/.ATTRIBUTES/VARIABLE_VALUE"))


@pytest.mark.parametrize("command", ["copy", "verify"])
def test_garbage_graph_through_the_real_cli(mutated_checkpoints, tmp_path, cli, command):
    prefix = next(p for n, p, _ in mutated_checkpoints if n == "garbage-1")
    args = [command, prefix] + ([str(tmp_path / "out" / "ckpt")] if command == "copy" else [])
    run = cli(*args, timeout=120)
    assert run.returncode == 3, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("ckptsurgery")]
    assert len(lines) == 1 and "object graph does not decode" in lines[0] and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
