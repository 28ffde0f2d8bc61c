"""The few TensorFlow protos we parse, without importing TensorFlow.

``from tensorflow.core.protobuf import tensor_bundle_pb2`` runs
``tensorflow/__init__`` (seconds, hundreds of MB), yet an index entry is a
handful of fields.  Here the same messages are declared field for field
(numbers and types of TF's ``tensor_bundle.proto``, ``tensor_shape.proto``,
``tensor_slice.proto``, ``versions.proto``, ``trackable_object_graph.proto``)
in a private descriptor pool of the ``protobuf`` package, so ``inspect`` and
every plan made only of pass-through entries run without TensorFlow.  The
pool is private: TF's own classes, when TF is loaded, are untouched.  Fields
we do not declare would still round-trip as unknown fields; the tests check
the declarations against TF's descriptors.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {"int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64, "fixed32": _F.TYPE_FIXED32, "string": _F.TYPE_STRING,
          "bool": _F.TYPE_BOOL, "double": _F.TYPE_DOUBLE}


def _message(container, name: str, fields: list[tuple], oneofs: tuple[str, ...] = ()):
    """Add message ``name`` to ``container``; a field is (number, name, type[, repeated[, oneof index]])."""
    message = container.add(name=name)
    for oneof in oneofs:
        message.oneof_decl.add(name=oneof)
    for number, field_name, kind, *rest in fields:
        repeated = bool(rest and rest[0])
        field = message.field.add(name=field_name, number=number,
                                  label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
        if len(rest) > 1:
            field.oneof_index = rest[1]
        if kind in _TYPES:
            field.type = _TYPES[kind]
        elif kind.startswith("enum:"):
            field.type, field.type_name = _F.TYPE_ENUM, kind[5:]
        else:
            field.type, field.type_name = _F.TYPE_MESSAGE, kind
    return message


@functools.lru_cache(maxsize=None)
def _classes() -> SimpleNamespace:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    f = descriptor_pb2.FileDescriptorProto(name="ckptsurgery/tf_protos.proto", package="tensorflow",
                                           syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    shape = _message(f.message_type, "TensorShapeProto", [(2, "dim", ".tensorflow.TensorShapeProto.Dim", True),
                                                          (3, "unknown_rank", "bool")])
    _message(shape.nested_type, "Dim", [(1, "size", "int64"), (2, "name", "string")])
    tslice = _message(f.message_type, "TensorSliceProto", [(1, "extent", ".tensorflow.TensorSliceProto.Extent", True)])
    _message(tslice.nested_type, "Extent", [(1, "start", "int64"), (2, "length", "int64", False, 0)],
             oneofs=("has_length",))
    _message(f.message_type, "VersionDef", [(1, "producer", "int32"), (2, "min_consumer", "int32"),
                                            (3, "bad_consumers", "int32", True)])
    header = _message(f.message_type, "BundleHeaderProto", [
        (1, "num_shards", "int32"), (2, "endianness", "enum:.tensorflow.BundleHeaderProto.Endianness"),
        (3, "version", ".tensorflow.VersionDef")])
    endianness = header.enum_type.add(name="Endianness")
    endianness.value.add(name="LITTLE", number=0)
    endianness.value.add(name="BIG", number=1)
    _message(f.message_type, "BundleEntryProto", [
        (1, "dtype", "int32"),  # TF's DataType enum, read as its number
        (2, "shape", ".tensorflow.TensorShapeProto"), (3, "shard_id", "int32"), (4, "offset", "int64"),
        (5, "size", "int64"), (6, "crc32c", "fixed32"), (7, "slices", ".tensorflow.TensorSliceProto", True)])
    _message(f.message_type, "RegisteredSaver", [(1, "name", "string"), (2, "object_name", "string")])
    graph = _message(f.message_type, "TrackableObjectGraph", [
        (1, "nodes", ".tensorflow.TrackableObjectGraph.TrackableObject", True)])
    node_type = ".tensorflow.TrackableObjectGraph.TrackableObject"
    node = _message(graph.nested_type, "TrackableObject", [
        (1, "children", node_type + ".ObjectReference", True),
        (2, "attributes", node_type + ".SerializedTensor", True),
        (3, "slot_variables", node_type + ".SlotVariableReference", True),
        (4, "registered_saver", ".tensorflow.RegisteredSaver"),
        (5, "has_checkpoint_values", ".google.protobuf.BoolValue")])
    _message(node.nested_type, "ObjectReference", [(1, "node_id", "int32"), (2, "local_name", "string")])
    _message(node.nested_type, "SerializedTensor", [(1, "name", "string"), (2, "full_name", "string"),
                                                    (3, "checkpoint_key", "string")])
    _message(node.nested_type, "SlotVariableReference", [
        (1, "original_variable_node_id", "int32"), (2, "slot_name", "string"), (3, "slot_variable_node_id", "int32")])
    _message(f.message_type, "CheckpointState", [
        (1, "model_checkpoint_path", "string"), (2, "all_model_checkpoint_paths", "string", True),
        (3, "all_model_checkpoint_timestamps", "double", True), (4, "last_preserved_timestamp", "double")])
    pool.Add(f)

    def cls(name: str):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow." + name))

    return SimpleNamespace(**{name: cls(name) for name in (
        "BundleHeaderProto", "BundleEntryProto", "TensorShapeProto", "TensorSliceProto", "VersionDef",
        "TrackableObjectGraph", "CheckpointState")})


@functools.lru_cache(maxsize=None)
def bundle_protos() -> SimpleNamespace:
    """``BundleHeaderProto`` and ``BundleEntryProto`` (and their parts), as :mod:`bundle_index` needs them."""
    return _classes()


def object_graph_protos() -> SimpleNamespace:
    """``TrackableObjectGraph``, as :mod:`objectgraph` needs it."""
    return _classes()


def checkpoint_state_class():
    """``CheckpointState`` (the folder's ``checkpoint`` text proto), for reading and writing it without TF."""
    return _classes().CheckpointState
