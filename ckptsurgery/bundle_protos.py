"""The V2 index's protos (``BundleHeaderProto``, ``BundleEntryProto``) without importing TensorFlow.

Importing ``tensorflow.core.protobuf.tensor_bundle_pb2`` runs
``tensorflow/__init__`` (seconds, and hundreds of MB of RSS), which
``inspect`` does not otherwise need.  These classes are built from a
descriptor written here, wire-compatible with TensorFlow's
``tensor_bundle.proto``, ``tensor_shape.proto``, ``tensor_slice.proto`` and
``versions.proto`` (same field numbers and types; the ``DataType`` enum is read
as its int32 wire value).  They live in a private descriptor pool so they never
clash with TensorFlow's own classes when TF is imported too.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _message(file: descriptor_pb2.FileDescriptorProto, name: str, fields: list[tuple], parent=None):
    msg = (parent.nested_type if parent is not None else file.message_type).add()
    msg.name = name
    for spec in fields:
        number, field_name, ftype, label, type_name, oneof = (*spec, None, None, None)[:6]
        f = msg.field.add()
        f.name, f.number, f.type = field_name, number, ftype
        f.label = label or _F.LABEL_OPTIONAL
        if type_name:
            f.type_name = type_name
        if oneof is not None:
            f.oneof_index = oneof
    return msg


@functools.lru_cache(maxsize=None)
def bundle_pb2() -> SimpleNamespace:
    """``BundleHeaderProto`` and ``BundleEntryProto`` classes (``LITTLE``/``BIG`` on the header class)."""
    file = descriptor_pb2.FileDescriptorProto(name="ckptsurgery/bundle.proto", package="ckptsurgery_bundle",
                                              syntax="proto3")
    p = ".ckptsurgery_bundle."
    rep = _F.LABEL_REPEATED
    shape = _message(file, "TensorShapeProto", [(2, "dim", _F.TYPE_MESSAGE, rep, p + "TensorShapeProto.Dim"),
                                                 (3, "unknown_rank", _F.TYPE_BOOL)])
    _message(file, "Dim", [(1, "size", _F.TYPE_INT64), (2, "name", _F.TYPE_STRING)], parent=shape)
    slice_ = _message(file, "TensorSliceProto", [(1, "extent", _F.TYPE_MESSAGE, rep, p + "TensorSliceProto.Extent")])
    extent = _message(file, "Extent", [(1, "start", _F.TYPE_INT64), (2, "length", _F.TYPE_INT64, None, None, 0)],
                      parent=slice_)
    extent.oneof_decl.add().name = "has_length"
    _message(file, "VersionDef", [(1, "producer", _F.TYPE_INT32), (2, "min_consumer", _F.TYPE_INT32),
                                  (3, "bad_consumers", _F.TYPE_INT32, rep)])
    header = _message(file, "BundleHeaderProto", [(1, "num_shards", _F.TYPE_INT32),
                                                  (2, "endianness", _F.TYPE_ENUM, None, p + "BundleHeaderProto.Endianness"),
                                                  (3, "version", _F.TYPE_MESSAGE, None, p + "VersionDef")])
    endianness = header.enum_type.add(name="Endianness")
    endianness.value.add(name="LITTLE", number=0)
    endianness.value.add(name="BIG", number=1)
    _message(file, "BundleEntryProto", [(1, "dtype", _F.TYPE_INT32), (2, "shape", _F.TYPE_MESSAGE, None, p + "TensorShapeProto"),
                                        (3, "shard_id", _F.TYPE_INT32), (4, "offset", _F.TYPE_INT64),
                                        (5, "size", _F.TYPE_INT64), (6, "crc32c", _F.TYPE_FIXED32),
                                        (7, "slices", _F.TYPE_MESSAGE, rep, p + "TensorSliceProto")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    get = lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName("ckptsurgery_bundle." + name))  # noqa: E731
    header_cls = get("BundleHeaderProto")
    return SimpleNamespace(BundleHeaderProto=header_cls, BundleEntryProto=get("BundleEntryProto"))


@functools.lru_cache(maxsize=None)
def checkpoint_state_class() -> type:
    """``CheckpointState`` (the ``checkpoint`` state file's text proto), wire- and text-compatible with
    TF's ``checkpoint_state.proto``, so resolving a folder does not import TensorFlow either."""
    file = descriptor_pb2.FileDescriptorProto(name="ckptsurgery/checkpoint_state.proto",
                                              package="ckptsurgery_state", syntax="proto3")
    rep = _F.LABEL_REPEATED
    _message(file, "CheckpointState", [(1, "model_checkpoint_path", _F.TYPE_STRING),
                                       (2, "all_model_checkpoint_paths", _F.TYPE_STRING, rep),
                                       (3, "all_model_checkpoint_timestamps", _F.TYPE_DOUBLE, rep),
                                       (4, "last_preserved_timestamp", _F.TYPE_DOUBLE)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("ckptsurgery_state.CheckpointState"))
