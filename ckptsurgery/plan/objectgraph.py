"""Keep a TF2 object graph consistent when keys are renamed or dropped.

A TF2 object-based checkpoint stores, beside its tensors, a serialized
``TrackableObjectGraph`` under ``_CHECKPOINTABLE_OBJECT_GRAPH``: one node per
Python object, named edges between them, and per node the attributes
(``checkpoint_key``) whose values are tensors in the bundle.
``tf.train.Checkpoint.restore`` walks this graph, not the keys, so after a
rename or drop the graph must be rewritten to match or the restore breaks:

* a renamed key updates its attribute's ``checkpoint_key``;
* a dropped key removes its attribute;
* a node left with no attributes, no children and no slot variables is
  removed (repeatedly, bottom-up), edges and slot links to it go too, and
  the remaining nodes are renumbered (node 0, the root, always stays).
"""

from __future__ import annotations

from collections.abc import Mapping


def _proto():
    from ..io.protos import object_graph_protos  # TF's fields, without importing TensorFlow

    return object_graph_protos()


def rewrite_object_graph(graph_bytes: bytes, key_map: Mapping[str, str | None]) -> bytes:
    """Return the graph with keys renamed per ``key_map`` (None = dropped).

    Keys absent from ``key_map`` are kept unchanged.
    """
    pb = _proto()
    graph = pb.TrackableObjectGraph()
    graph.ParseFromString(graph_bytes)

    for node in graph.nodes:
        kept = []
        for attribute in node.attributes:
            new_key = key_map.get(attribute.checkpoint_key, attribute.checkpoint_key)
            if new_key is not None:
                attribute.checkpoint_key = new_key
                kept.append(attribute)
        if len(kept) != len(node.attributes):
            del node.attributes[:]
            node.attributes.extend(kept)

    if not any(v is None for v in key_map.values()):
        return graph.SerializeToString()  # nothing dropped: keep every node as the writer made it
    alive = _prune(graph)
    out = _renumber(graph, alive)
    _refresh_has_checkpoint_values(out)
    return out.SerializeToString()


def _refresh_has_checkpoint_values(graph) -> None:
    """Recompute the optional ``has_checkpoint_values`` flag where a writer set it."""
    has = [bool(n.attributes) or n.HasField("registered_saver") for n in graph.nodes]
    changed = True
    while changed:
        changed = False
        for node_id, node in enumerate(graph.nodes):
            if not has[node_id] and any(has[c.node_id] for c in node.children):
                has[node_id] = changed = True
    for node_id, node in enumerate(graph.nodes):
        if node.HasField("has_checkpoint_values"):
            node.has_checkpoint_values.value = has[node_id]


def _prune(graph) -> list[bool]:
    """Mark nodes to keep: the root, and any node that (transitively) still holds a value."""
    alive = [True] * len(graph.nodes)
    changed = True
    while changed:
        changed = False
        for node_id, node in enumerate(graph.nodes):
            if node_id == 0 or not alive[node_id]:
                continue
            has_children = any(alive[c.node_id] for c in node.children if c.node_id < len(alive))
            has_slots = any(
                alive[s.slot_variable_node_id] for s in node.slot_variables if s.slot_variable_node_id < len(alive)
            )
            if not node.attributes and not has_children and not has_slots:
                alive[node_id] = False
                changed = True
    return alive


def _renumber(graph, alive: list[bool]):
    pb = _proto()
    new_id = {}
    for old_id, keep in enumerate(alive):
        if keep:
            new_id[old_id] = len(new_id)
    out = pb.TrackableObjectGraph()
    for old_id, node in enumerate(graph.nodes):
        if not alive[old_id]:
            continue
        new_node = out.nodes.add()
        new_node.CopyFrom(node)
        del new_node.children[:]
        for child in node.children:
            if child.node_id in new_id:
                c = new_node.children.add()
                c.CopyFrom(child)
                c.node_id = new_id[child.node_id]
        del new_node.slot_variables[:]
        for slot in node.slot_variables:
            if slot.slot_variable_node_id in new_id and slot.original_variable_node_id in new_id:
                s = new_node.slot_variables.add()
                s.CopyFrom(slot)
                s.original_variable_node_id = new_id[slot.original_variable_node_id]
                s.slot_variable_node_id = new_id[slot.slot_variable_node_id]
    return out


def checkpoint_keys(graph_bytes: bytes) -> set[str]:
    """Every ``checkpoint_key`` the graph refers to (to check it against the bundle)."""
    pb = _proto()
    graph = pb.TrackableObjectGraph()
    graph.ParseFromString(graph_bytes)
    return {a.checkpoint_key for node in graph.nodes for a in node.attributes}


# -- Optimizer slot links (which variable each slot belongs to) --------------------------
_KERAS_LIST_ROOTS = ("_variables", "_trainable_variables")


def _variable_key(node) -> str | None:
    """The checkpoint key of a variable node's value, or None for a node that holds no tensor."""
    for attribute in node.attributes:
        if attribute.name == "VARIABLE_VALUE":
            return attribute.checkpoint_key
    return node.attributes[0].checkpoint_key if len(node.attributes) == 1 else None


def _list_elements(graph, node) -> list[str | None] | None:
    """Keys of a tracked list's elements in order (``0``, ``1``...), or None when ``node`` is no list."""
    if not node.children or not all(c.local_name.isdigit() for c in node.children):
        return None
    by_index = {int(c.local_name): _variable_key(graph.nodes[c.node_id])
                for c in node.children if c.node_id < len(graph.nodes)}
    return [by_index.get(i) for i in range(max(by_index) + 1)] if by_index else None


def graph_slot_links(graph_bytes: bytes) -> dict[str, str]:
    """``slot key -> variable key`` from the graph's ``slot_variables`` entries.

    TF2 ``tf.train``/``tf.keras`` (OptimizerV2, tf_keras's ``optimizers.legacy``)
    optimizers record each slot as ``(original_variable_node_id,
    slot_variable_node_id)`` on the optimizer's node: an exact link.
    """
    pb = _proto()
    graph = pb.TrackableObjectGraph()
    graph.ParseFromString(graph_bytes)
    links: dict[str, str] = {}
    for node in graph.nodes:
        for slot in node.slot_variables:
            if max(slot.original_variable_node_id, slot.slot_variable_node_id) >= len(graph.nodes):
                continue
            variable = _variable_key(graph.nodes[slot.original_variable_node_id])
            value = _variable_key(graph.nodes[slot.slot_variable_node_id])
            if variable and value:
                links[value] = variable
    return links


def keras_slot_lists(graph_bytes: bytes) -> list[tuple[list[str | None] | None, list[list[str | None]]]]:
    """Per Keras optimizer: its ``_trainable_variables`` keys (None if absent) and its per-variable slot lists.

    Keras 3 and tf_keras's current optimizers write no ``slot_variables``
    links.  Their node has tracked lists as children: ``_variables`` (every
    optimizer variable, counters included), ``_trainable_variables`` (Keras 3
    only: the model's variables in the order the optimizer was built with)
    and one list per kind of slot (``_momentums``, ``_velocities``,
    ``_accumulators``...), whose element *i* belongs to trainable variable *i*.
    Lists of keys are returned in element order.
    """
    pb = _proto()
    graph = pb.TrackableObjectGraph()
    graph.ParseFromString(graph_bytes)
    found = []
    for node in graph.nodes:
        children = {c.local_name: c.node_id for c in node.children if c.node_id < len(graph.nodes)}
        if "_variables" not in children or _list_elements(graph, graph.nodes[children["_variables"]]) is None:
            continue
        trainable = None
        if "_trainable_variables" in children:
            trainable = _list_elements(graph, graph.nodes[children["_trainable_variables"]])
        slot_lists = []
        for name, node_id in children.items():
            if name in _KERAS_LIST_ROOTS:
                continue
            elements = _list_elements(graph, graph.nodes[node_id])
            if elements is not None:
                slot_lists.append(elements)
        found.append((trainable, slot_lists))
    return found

# -- validation: the object graph is input like any other --------------------------------------
_MAX_LISTED = 3


def object_graph_problems(graph_bytes: bytes, bundle_keys: set[str] | frozenset[str]) -> list[str]:
    """What is wrong with a serialized object graph, as short phrases ([] when it is sound).

    Checked: it decodes as a ``TrackableObjectGraph``; it has a root node;
    every child, slot-variable and original-variable id names an existing
    node; no slot variable is its own original variable or its own optimizer
    (TF would restore a value into the variable it is a slot of); every
    attribute's ``checkpoint_key`` is a tensor of the bundle (else
    ``tf.train.Checkpoint.restore`` fails on it later, or our rewrite would
    carry a dangling key).  Cycles among ``children`` are allowed: TF walks
    the graph breadth-first with a visited set, and Python objects may refer
    to each other.
    """
    pb = _proto()
    graph = pb.TrackableObjectGraph()
    try:
        graph.ParseFromString(bytes(graph_bytes))
    except Exception as exc:  # google.protobuf.message.DecodeError, or RuntimeError from the C++ parser
        return [f"does not decode as a TrackableObjectGraph ({type(exc).__name__})"]
    n = len(graph.nodes)
    if n == 0:
        return ["has no nodes (a TF2 object graph always has a root node 0)"]
    problems: list[str] = []
    missing: list[str] = []
    for node_id, node in enumerate(graph.nodes):
        for child in node.children:
            if not 0 <= child.node_id < n:
                problems.append(f"node {node_id} has child {child.local_name!r} -> node {child.node_id}, "
                                f"out of range (graph has {n} nodes)")
        for slot in node.slot_variables:
            for what, ref in (("original variable", slot.original_variable_node_id),
                              ("slot variable", slot.slot_variable_node_id)):
                if not 0 <= ref < n:
                    problems.append(f"node {node_id} has slot {slot.slot_name!r} whose {what} is node {ref}, "
                                    f"out of range (graph has {n} nodes)")
            if slot.slot_variable_node_id in (slot.original_variable_node_id, node_id):
                problems.append(f"node {node_id} has slot {slot.slot_name!r} whose slot variable "
                                f"(node {slot.slot_variable_node_id}) is its own variable or optimizer")
        for attribute in node.attributes:
            if attribute.checkpoint_key not in bundle_keys:
                missing.append(attribute.checkpoint_key)
    if missing:
        listed = ", ".join(repr(k) for k in missing[:_MAX_LISTED]) + (" ..." if len(missing) > _MAX_LISTED else "")
        problems.append(f"names {len(missing)} checkpoint key{'s' if len(missing) != 1 else ''} "
                        f"that the bundle does not hold: {listed}")
    return problems


def describe_problems(problems: list[str]) -> str:
    """One line for a list of :func:`object_graph_problems`."""
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return f"object graph {problems[0]}{more}"


def graph_bytes_of(value) -> bytes | None:
    """The serialized graph held by the ``_CHECKPOINTABLE_OBJECT_GRAPH`` tensor's value, or None
    when the tensor is not the scalar string TF writes."""
    import numpy as np

    array = np.asarray(value)
    if array.shape != () or array.dtype != np.object_ or not isinstance(array.item(), bytes):
        return None
    return array.item()


def checked_object_graph(ckpt, graph_bytes: bytes | None = None) -> bytes:
    """Validate ``ckpt``'s object graph against its bundle before anything is planned on it.

    ``graph_bytes`` is the graph when the caller already read it (the byte path
    reads it without TensorFlow); otherwise it is read through ``ckpt``.
    Raises :class:`~ckptsurgery.errors.BadCheckpointError` (exit 3) naming the
    file and what is wrong.  Returns the serialized graph."""
    from ..errors import BadCheckpointError
    from ..io.reader import OBJECT_GRAPH_KEY

    if graph_bytes is None:
        graph_bytes = graph_bytes_of(ckpt.read(OBJECT_GRAPH_KEY))
    if graph_bytes is None:
        raise BadCheckpointError(ckpt.prefix, "object graph is not a scalar string tensor", OBJECT_GRAPH_KEY)
    problems = object_graph_problems(graph_bytes, {t.name for t in ckpt})
    if problems:
        raise BadCheckpointError(ckpt.prefix, describe_problems(problems), OBJECT_GRAPH_KEY)
    return graph_bytes
