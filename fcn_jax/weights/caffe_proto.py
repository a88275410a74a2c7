"""Minimal Caffe schema: read and write the weights in a binary .caffemodel.

A .caffemodel is a serialised `caffe.NetParameter`. We only need the layers'
names, types and parameter blobs, so the schema below declares just those
fields (same numbers as BVLC caffe.proto); everything else in a real file
(solver settings, layer params, ...) is skipped by protobuf as unknown fields.
The descriptors are built in Python with `descriptor_pb2`, so neither Caffe
nor protoc is needed, and the code runs on protobuf 4..7.

    NetParameter     layer = 100 (LayerParameter)   layers = 2 (V1LayerParameter, legacy)
    LayerParameter   name = 1, type = 2 (string), blobs = 7
    V1LayerParameter name = 4, type = 5 (enum LayerType), blobs = 6
    BlobProto        shape = 7 (BlobShape.dim = 1), data = 5, double_data = 8,
                     legacy num/channels/height/width = 1..4

Two variants of the schema are built. The *faithful* one declares blob data as
`repeated float [packed]`, exactly like caffe.proto; it writes files. The
*reader* declares the same field numbers as `repeated bytes`: a packed float
field is one length-delimited record on the wire, so it arrives as raw
little-endian bytes that `np.frombuffer` views without converting 100M floats
one by one (VGG16's fc6 alone is 103M). A writer that did not pack its floats
makes the reader see no bytes; such a blob is re-parsed with the faithful
schema.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

_F = descriptor_pb2.FieldDescriptorProto

# V1LayerParameter.LayerType codes of the layers that carry weights in VGG/FCN.
V1_LAYER_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution"}
_V1_CODES = {name: code for code, name in V1_LAYER_TYPES.items()}


class CaffeLayer(NamedTuple):
    """A layer of a .caffemodel: its name, type and blobs in Caffe's own layout."""

    name: str
    type: str  # "Convolution", "Deconvolution", "InnerProduct", ... ("V1:<code>" for other legacy types)
    blobs: tuple[np.ndarray, ...]  # float32, shaped as the blob says (legacy blobs are 4-D)


def _field(name, number, ftype, label=_F.LABEL_OPTIONAL, type_name=None, packed=False):
    f = _F(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name
    if packed:
        f.options.packed = True
    return f


def _file_descriptor(faithful: bool) -> descriptor_pb2.FileDescriptorProto:
    rep = _F.LABEL_REPEATED
    if faithful:
        floats = dict(ftype=_F.TYPE_FLOAT, label=rep, packed=True)
        doubles = dict(ftype=_F.TYPE_DOUBLE, label=rep, packed=True)
    else:
        floats = doubles = dict(ftype=_F.TYPE_BYTES, label=rep)
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"fcn_jax_caffe_{'faithful' if faithful else 'reader'}.proto",
        package="caffe",
        syntax="proto2",
    )
    messages = {
        "BlobShape": [_field("dim", 1, _F.TYPE_INT64, rep, packed=True)],
        "BlobProto": [
            _field("num", 1, _F.TYPE_INT32),
            _field("channels", 2, _F.TYPE_INT32),
            _field("height", 3, _F.TYPE_INT32),
            _field("width", 4, _F.TYPE_INT32),
            _field("data", 5, **floats),
            _field("shape", 7, _F.TYPE_MESSAGE, type_name=".caffe.BlobShape"),
            _field("double_data", 8, **doubles),
        ],
        "LayerParameter": [
            _field("name", 1, _F.TYPE_STRING),
            _field("type", 2, _F.TYPE_STRING),
            _field("blobs", 7, _F.TYPE_MESSAGE, rep, type_name=".caffe.BlobProto"),
        ],
        # `type` is an enum in caffe.proto; int32 has the same wire format and
        # keeps codes we do not list instead of dropping them.
        "V1LayerParameter": [
            _field("name", 4, _F.TYPE_STRING),
            _field("type", 5, _F.TYPE_INT32),
            _field("blobs", 6, _F.TYPE_MESSAGE, rep, type_name=".caffe.BlobProto"),
        ],
        "NetParameter": [
            _field("name", 1, _F.TYPE_STRING),
            _field("layers", 2, _F.TYPE_MESSAGE, rep, type_name=".caffe.V1LayerParameter"),
            _field("layer", 100, _F.TYPE_MESSAGE, rep, type_name=".caffe.LayerParameter"),
        ],
    }
    for name, fields in messages.items():
        fdp.message_type.add(name=name).field.extend(fields)
    return fdp


@functools.cache
def schema(faithful: bool) -> dict[str, type[message.Message]]:
    """Message classes {name: class} of the faithful (writing) or reader schema."""
    pool = descriptor_pool.DescriptorPool()
    fdp = _file_descriptor(faithful)
    pool.Add(fdp)
    return {
        m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{m.name}"))
        for m in fdp.message_type
    }


def _blob_shape(blob) -> tuple[int, ...]:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)


def _blob_array(blob, where: str) -> np.ndarray:
    """BlobProto (reader schema) -> float32 array of the blob's shape."""
    shape = _blob_shape(blob)
    count = int(np.prod(shape))
    if blob.data:
        values = np.frombuffer(b"".join(blob.data), dtype="<f4")
    elif blob.double_data:
        values = np.frombuffer(b"".join(blob.double_data), dtype="<f8")
    else:  # unpacked floats (or an empty blob): parse this blob the slow, faithful way
        faithful = schema(faithful=True)["BlobProto"].FromString(blob.SerializeToString())
        values = np.asarray(faithful.data or faithful.double_data, dtype=np.float64)
    if values.size != count:
        raise ValueError(f"{where}: blob holds {values.size} values but its shape {shape} needs {count}")
    return values.astype(np.float32, copy=False).reshape(shape)  # packed float32: no copy (read-only)


def _looks_like_text(data: bytes) -> bool:
    head = data[:4096]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(b in b"\t\n\r" or 32 <= b < 127 or b >= 128 for b in head)


def read_caffemodel(path: str) -> list[CaffeLayer]:
    """Layers that carry blobs, in file order; a clear ValueError for anything else."""
    with open(path, "rb") as f:
        data = f.read()
    if _looks_like_text(data):
        raise ValueError(
            f"{path} is a text file, not a binary .caffemodel (a .prototxt describes the net but holds no weights)"
        )
    try:
        net = schema(faithful=False)["NetParameter"].FromString(data)
    except message.DecodeError as e:
        raise ValueError(f"{path} is truncated or not a Caffe .caffemodel (protobuf: {e})") from None
    del data  # half a gigabyte for VGG16: free it before the arrays are made
    layers = [(layer.name, layer.type, layer.blobs) for layer in net.layer if layer.blobs]
    layers += [(layer.name, V1_LAYER_TYPES.get(layer.type, f"V1:{layer.type}"), layer.blobs)
               for layer in net.layers if layer.blobs]
    layers = [CaffeLayer(name, kind, tuple(_blob_array(b, f"{path}: layer {name}") for b in blobs))
              for name, kind, blobs in layers]
    if not layers:
        raise ValueError(f"{path} is not a Caffe .caffemodel with weights: no layer with blobs found")
    return layers


def write_caffemodel(path: str, layers: Sequence[CaffeLayer], legacy: bool = False, name: str = "net") -> None:
    """Writes layers as Caffe does (packed floats). legacy=True: V1 `layers` with num/channels/height/width blobs.

    Goes through Python floats, so it is meant for small (test) nets.
    """
    msgs = schema(faithful=True)
    net = msgs["NetParameter"](name=name)
    for layer in layers:
        if legacy:
            out = net.layers.add(name=layer.name, type=_V1_CODES[layer.type])
        else:
            out = net.layer.add(name=layer.name, type=layer.type)
        for array in layer.blobs:
            blob = out.blobs.add()
            array = np.asarray(array, dtype=np.float32)
            if legacy:  # 4-D, leading 1s: an InnerProduct weight (O, K) is (1, 1, O, K)
                blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
            else:
                blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel().tolist())
    with open(path, "wb") as f:
        f.write(net.SerializeToString())
