"""Which output tensors move as bytes, and which are decoded through TensorFlow.

Most surgery leaves most tensors unchanged: a copy, a rename, a drop, a keep,
a transfer, a merge's ``--take``.  Their bytes in the input's data shard are
already a valid encoding of the output tensor, with their CRC32C in the
index entry, so the executor copies them as byte ranges
(:mod:`ckptsurgery.io.bytecopy`) and carries their entry into the index it
writes (:mod:`ckptsurgery.io.index_writer`): dtype, shape and CRC32C kept, name,
shard and offset new.  Computed tensors (cast, resize, merge methods) are
computed chunk by chunk from their inputs' bytes where the steps allow
(:mod:`.chunking`, :mod:`ckptsurgery.execute.chunked`), else decoded through
``RestoreV2``/``SaveV2``.

An entry moves as bytes when the plan marks it pass-through
(:attr:`~ckptsurgery.plan.entries.OutputEntry.passthrough`), its input is a V2 bundle
whose index we parsed (little-endian, a known version: the validator refuses
the rest), and the input's dtype and shape are the output's.  Everything else
is decoded, and ``--dry-run`` says so.

``CKPTSURGERY_BYTE_PATH=0`` in the environment (or ``byte_path=False``,
``--no-byte-path``, alias ``--tf-path``) sends every tensor through TensorFlow, as before the byte path.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import BadCheckpointError
from ..io.bytecopy import (ChecksumMismatch, RawTensor, ShardInput, SourceReadError, decode_string_scalar,
                           encode_string_tensor)
from ..io.index import DT_STRING, DT_VARIANT, IndexEntry, dtype_name
from ..io.reader import OBJECT_GRAPH_KEY
from .chunking import CHUNKED, WHOLE, ChunkPlan, verdict

if TYPE_CHECKING:  # the plan asks this module how it will be written (Plan.render), so no import back at run time
    from .entries import OutputEntry, Plan

ENV_SWITCH = "CKPTSURGERY_BYTE_PATH"


def byte_path_enabled(option: bool | None = None) -> bool:
    """The option when given, else the environment switch (on unless set to 0/false/no/off)."""
    if option is not None:
        return bool(option)
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def raw_tensor(plan: Plan, entry: OutputEntry) -> RawTensor | None:
    """The byte ranges ``entry`` can be copied from, or None when it must be decoded."""
    return _classify(plan, entry)[0] if entry.passthrough else None


def decode_reason(plan: Plan, entry: OutputEntry) -> str | None:
    """Why ``entry`` is decoded through TensorFlow (None: it is read as bytes: copied, or computed in chunks)."""
    return _classify(plan, entry)[1]


def chunk_plans(plan: Plan) -> dict[str, ChunkPlan]:
    """The computed entries produced chunk by chunk from byte ranges (see :mod:`.chunking`), by output name."""
    return {e.name: v.chunk_plan for e in plan.entries
            if not e.passthrough and (v := verdict(plan, e)).chunk_plan is not None}


def entry_note(plan: Plan, entry: OutputEntry) -> str:
    """For ``--dry-run``'s line of a computed entry: chunked, held whole (why) or decoded through TF (why)."""
    if entry.passthrough:
        return ""
    found = verdict(plan, entry)
    if found.kind == CHUNKED:
        return "chunked"
    return found.describe() + ("" if found.kind == WHOLE else ", decoded through TensorFlow")


def entry_compute_json(plan: Plan, entry: OutputEntry) -> dict:
    """For ``--dry-run --json``: how a computed entry is computed, as fields a script can test.

    ``kind`` is one of ``"chunked"``, ``"held whole"``, ``"falls back"`` (decoded
    through TensorFlow for the input's sake); ``reason`` is the human sentence
    (None when chunked).  ``computed`` keeps the one-string form of the text output.
    """
    found = verdict(plan, entry)
    return {"kind": found.kind, "reason": found.reason or None}


def _classify(plan: Plan, entry: OutputEntry) -> tuple[RawTensor | None, str | None]:
    if not entry.passthrough:
        found = verdict(plan, entry)
        return None, None if found.kind == CHUNKED else f"computed, {found.describe()}"
    ref = entry.inputs[0]
    index = plan.sources[ref.source].bundle_index
    if index is None:
        return None, f"source {ref.source} is not a V2 bundle"
    stored = index.entries.get(ref.name)
    if stored is None:
        return None, "not in the source index"
    if stored.dtype == DT_VARIANT:  # its per-element checksums are not what bytecopy checks
        return None, "variant tensor"
    if dtype_name(stored.dtype) != entry.dtype or tuple(stored.shape) != tuple(entry.shape):
        return None, "dtype or shape changes"
    parts = index.slice_entries.get(ref.name, ()) if stored.slices else (stored,)
    return RawTensor(index, stored, tuple(parts)), None


def summary(plan: Plan, option: bool | None = None) -> dict:
    """For ``--dry-run --json``: is the byte path on, how many tensors are copied as bytes, how many
    computed chunk by chunk from bytes, why the rest are decoded."""
    if not byte_path_enabled(option):
        return {"enabled": False, "bytes": 0, "chunked": 0, "decoded": {"byte path off": len(plan.entries)}}
    reasons: dict[str, int] = {}
    raw = chunked = 0
    for entry in plan.entries:
        reason = decode_reason(plan, entry)
        if reason is None and entry.passthrough:
            raw += 1
        elif reason is None:
            chunked += 1
        else:
            reasons[reason] = reasons.get(reason, 0) + 1
    return {"enabled": True, "bytes": raw, "chunked": chunked, "decoded": dict(sorted(reasons.items()))}


def describe(plan: Plan, option: bool | None = None) -> str:
    """One line for ``--dry-run``: how many tensors move as bytes, how many are decoded, and why."""
    counts = summary(plan, option)
    if not counts["enabled"]:
        return f"byte path: off ({ENV_SWITCH}=0 or --no-byte-path): every tensor is decoded through TensorFlow"
    decoded = sum(counts["decoded"].values())
    why = "; ".join(f"{count} {reason}" for reason, count in counts["decoded"].items())
    return (f"byte path: {counts['bytes']} tensors copied as bytes, {counts['chunked']} computed chunk by chunk "
            f"from bytes, {decoded} decoded through TensorFlow" + (f" ({why})" if why else ""))


def object_graph_raw(plan: Plan) -> RawTensor | None:
    """The source's object graph entry, when the plan carries it unchanged (every key kept as it was)."""
    graph = plan.object_graph
    if graph is None or any(new != old for old, new in graph.key_map.items()):
        return None
    index = plan.sources[graph.source].bundle_index
    stored = index.entries.get(OBJECT_GRAPH_KEY) if index is not None else None
    if stored is None or stored.dtype != DT_STRING or stored.shape != ():
        return None
    return RawTensor(index, stored, (stored,))


def encode_object_graph(graph_bytes: bytes) -> tuple[IndexEntry, bytes]:
    """A rewritten object graph as a string scalar we encode ourselves: its entry and its bytes."""
    data, crc = encode_string_tensor([graph_bytes])
    return IndexEntry(OBJECT_GRAPH_KEY, DT_STRING, (), 0, 0, len(data), crc), data


def read_object_graph(plan: Plan) -> bytes | None:
    """The source's serialized object graph, read from its data shard (CRC32C checked), no TF.

    None when the source is not a V2 bundle we parsed; the caller then asks TF's reader.
    """
    graph = plan.object_graph
    index = plan.sources[graph.source].bundle_index if graph is not None else None
    stored = index.entries.get(OBJECT_GRAPH_KEY) if index is not None else None
    if stored is None or stored.dtype != DT_STRING or stored.shape != ():
        return None
    path = index.data_path(stored.shard_id)
    try:
        shard = ShardInput(path)
    except SourceReadError as exc:
        raise BadCheckpointError(path, str(exc), OBJECT_GRAPH_KEY) from None
    try:
        return decode_string_scalar(shard.read(stored.offset, stored.size), stored)
    except (ChecksumMismatch, EOFError, SourceReadError, IndexError) as exc:
        raise BadCheckpointError(path, f"the object graph's bytes are corrupt or unreadable ({exc})",
                                 OBJECT_GRAPH_KEY) from None
    finally:
        shard.close()
