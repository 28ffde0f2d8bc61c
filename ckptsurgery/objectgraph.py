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
    from .protos import object_graph_protos  # TF's fields, without importing TensorFlow

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
