"""Weight import: Caffe and torch files written here (and by real torch, tests/fixtures) give the exporter's outputs."""

import collections
import importlib.util
import io
import os
import pickle
import struct
import sys
import tarfile
import zipfile
from contextlib import contextmanager
from types import ModuleType
from unittest import mock

import jax
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from fcn_jax.core import normalization
from fcn_jax.models import fcn, vgg, zoo
from fcn_jax.models import layers as models_layers
from fcn_jax.weights import caffe_proto, formats, merge, torch_pickle
from fcn_jax.weights import convert as weights_convert
from fcn_jax.weights.caffe_proto import CaffeLayer

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
WIDTH = 1 / 128  # channels 1, 1, 2, 4, 4 and fc 32: fast, every layer still present
VGG16_BLOCKS = ((("conv1_1", 64), ("conv1_2", 64)), (("conv2_1", 128), ("conv2_2", 128)),
                (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256)),
                (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512)),
                (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512)))  # each block ends in a 2x2/2 max pool
SKIPS = {"fcn32s": (), "fcn16s": ("pool4",), "fcn8s": ("pool4", "pool3"), "fcn8s_atonce": ("pool4", "pool3")}
FINAL = {"fcn32s": ("upscore", 64, 32, 19), "fcn16s": ("upscore16", 32, 16, 27),
         "fcn8s": ("upscore8", 16, 8, 31), "fcn8s_atonce": ("upscore8", 16, 8, 31)}


def _fixture_script():
    script = os.path.join(ROOT, "scripts", "make_pth_fixtures.py")
    spec = importlib.util.spec_from_file_location("make_pth_fixtures", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------- a Caffe FCN and its NumPy forward


def caffe_fcn_layers(variant, num_classes, rng, fc_as="Convolution"):
    """Random weights of an FCN (or, fc_as='InnerProduct', the ImageNet VGG16) in Caffe's layout and order."""
    c = lambda n: max(1, round(n * WIDTH))  # noqa: E731  the contract's width rule
    layers, cin = [], 3

    def add(name, kind, shape, bias=True, gain=1.0):  # variance-preserving random weights
        fan_in = np.prod(shape[1:]) if kind != "Deconvolution" else shape[0] * shape[2] * shape[3] / 4
        w = rng.normal(0, gain * np.sqrt(2 / fan_in), shape).astype(np.float32)
        blobs = (w, rng.uniform(-0.1, 0.1, shape[0]).astype(np.float32)) if bias else (w,)
        layers.append(CaffeLayer(name, kind, blobs))

    for block in VGG16_BLOCKS:
        for name, n in block:
            add(name, "Convolution", (c(n), cin, 3, 3))
            cin = c(n)
    fc = c(4096)
    if fc_as == "InnerProduct":
        add("fc6", "InnerProduct", (fc, cin * 49))
        add("fc7", "InnerProduct", (fc, fc))
        add("fc8", "InnerProduct", (10, fc))
        return layers
    add("fc6", "Convolution", (fc, cin, 7, 7))
    add("fc7", "Convolution", (fc, fc, 1, 1))
    add("score_fr", "Convolution", (num_classes, fc, 1, 1))
    k = num_classes
    if "pool4" in SKIPS[variant]:
        add("upscore2", "Deconvolution", (k, k, 4, 4), bias=False)
        add("score_pool4", "Convolution", (k, c(512), 1, 1), gain=100 if variant == "fcn8s_atonce" else 1)
    if "pool3" in SKIPS[variant]:
        add("upscore_pool4", "Deconvolution", (k, k, 4, 4), bias=False)
        add("score_pool3", "Convolution", (k, c(256), 1, 1), gain=1e4 if variant == "fcn8s_atonce" else 1)
    name, size, stride, _ = FINAL[variant]
    add(name, "Deconvolution", (k, k, size, size), bias=False)
    return layers


def np_conv(x, w, b, pad):
    """Caffe Convolution: x (N,C,H,W), w (O,C,kh,kw)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))  # (N, C, H', W', kh, kw)
    return np.einsum("nchwij,ocij->nohw", windows, w, optimize=True) + b[None, :, None, None]


def np_pool(x):
    """Caffe 2x2/2 max pool, ceil rounding."""
    n, c, h, w = x.shape
    x = np.pad(x, ((0, 0), (0, 0), (0, h % 2), (0, w % 2)), constant_values=-np.inf)
    return x.reshape(n, c, (h + 1) // 2, 2, (w + 1) // 2, 2).max(axis=(3, 5))


def np_deconv(x, w, stride):
    """Caffe Deconvolution, no bias: w (Cin, Cout, k, k); out[s*i+u, s*j+v] += x[i, j] . w[:, :, u, v]."""
    n, _, h, wd = x.shape
    k = w.shape[2]
    out = np.zeros((n, w.shape[1], (h - 1) * stride + k, (wd - 1) * stride + k))
    for u in range(k):
        for v in range(k):
            out[:, :, u:u + stride * (h - 1) + 1:stride, v:v + stride * (wd - 1) + 1:stride] += np.einsum(
                "nchw,cd->ndhw", x, w[:, :, u, v])
    return out


def np_crop(x, offset, like):
    return x[:, :, offset:offset + like.shape[2], offset:offset + like.shape[3]]


def np_vgg(layers, x, pad1=100):
    """conv1_1..pool5 in Caffe's net; returns pool3, pool4, pool5."""
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    pools = []
    for block in VGG16_BLOCKS:
        for name, _ in block:
            w, b = layers[name].blobs
            x = relu(np_conv(x, w.astype(np.float64), b, pad1 if name == "conv1_1" else 1))
        x = np_pool(x)
        pools.append(x)
    return pools[2], pools[3], pools[4]


def np_caffe_fcn(layers, x, variant):
    """The reference FCN (voc-fcn*/net.py) in NumPy float64 on Caffe-layout weights; x (N,3,H,W)."""
    layers = {layer.name: layer for layer in layers}
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    conv = lambda name, t, pad=0: np_conv(t, *(b.astype(np.float64) for b in layers[name].blobs), pad)  # noqa: E731
    pool3, pool4, pool5 = np_vgg(layers, x)
    score = conv("score_fr", relu(conv("fc7", relu(conv("fc6", pool5)))))
    scales = {"pool4": 0.01, "pool3": 1e-4} if variant == "fcn8s_atonce" else {"pool4": 1, "pool3": 1}
    for skip, up_name, offset in (("pool4", "upscore2", 5), ("pool3", "upscore_pool4", 9)):
        if skip in SKIPS[variant]:
            up = np_deconv(score, layers[up_name].blobs[0], 2)
            side = conv(f"score_{skip}", {"pool4": pool4, "pool3": pool3}[skip] * scales[skip])
            score = up + np_crop(side, offset, up)
    name, _, stride, offset = FINAL[variant]
    return np_crop(np_deconv(score, layers[name].blobs[0], stride), offset, x)


def fcn_apply(variant, params, x_nchw, num_classes):
    model = zoo.create_model(variant, num_classes=num_classes, width=WIDTH, geometry="caffe")
    out = jax.jit(model.apply)({"params": params}, x_nchw.transpose(0, 2, 3, 1))
    return np.asarray(out).transpose(0, 3, 1, 2)


def assert_close(actual, expected):
    """1e-4 relative to the output's scale."""
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def random_input(shape, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# --------------------------------------------------------------------- Caffe


@pytest.mark.parametrize("variant", fcn.VARIANTS)
def test_caffe_fcn_matches_numpy_reference(tmp_path, variant):
    layers = caffe_fcn_layers(variant, 3, np.random.default_rng(0))
    path = str(tmp_path / f"{variant}.caffemodel")
    caffe_proto.write_caffemodel(path, layers)
    params, meta = weights_convert.convert("caffe", path, variant, 3, width=WIDTH)
    assert meta["normalization"] == "caffe_bgr" and meta["new"] == [] and meta["unused"] == []
    x = random_input((1, 3, 21, 27))
    expected = np_caffe_fcn(layers, x.astype(np.float64), variant)
    assert expected.shape == (1, 3, 21, 27)
    assert_close(fcn_apply(variant, params, x, 3), expected)


def test_caffe_legacy_v1_layers_give_the_same_params(tmp_path):
    layers = caffe_fcn_layers("fcn8s", 3, np.random.default_rng(0))
    new, legacy = str(tmp_path / "new.caffemodel"), str(tmp_path / "v1.caffemodel")
    caffe_proto.write_caffemodel(new, layers)
    caffe_proto.write_caffemodel(legacy, layers, legacy=True)
    read = caffe_proto.read_caffemodel(legacy)
    assert read[4].blobs[1].shape == (1, 1, 1, 2)  # conv3_1: legacy 4-D bias blob (num, channels, height, width)
    assert [layer.type for layer in read][-3:] == ["Deconvolution", "Convolution", "Deconvolution"]
    p_new, _ = formats.load_caffemodel(new)
    p_legacy, _ = formats.load_caffemodel(legacy)
    jax.tree.map(np.testing.assert_array_equal, p_new, p_legacy)
    # layouts: conv OIHW -> HWIO, deconv (Cin, Cout, u, v) -> (u, v, Cin, Cout)
    np.testing.assert_array_equal(p_new["backbone"]["conv3_1"]["kernel"][1, 2, 0, 1], layers[4].blobs[0][1, 0, 1, 2])
    up = layers[-1].blobs[0]
    np.testing.assert_array_equal(p_new["upscore8"]["kernel"][3, 5, 0, 2], up[0, 2, 3, 5])


def test_caffe_imagenet_vgg16_inner_product_is_convolutionalised(tmp_path):
    """VGG16 ILSVRC style (V1 layers, InnerProduct fc6/fc7/fc8): fc7 of the FCN backbone = Caffe's fc7."""
    layers = caffe_fcn_layers(None, None, np.random.default_rng(2), fc_as="InnerProduct")
    path = str(tmp_path / "vgg16.caffemodel")
    caffe_proto.write_caffemodel(path, layers, legacy=True)
    loaded, _ = formats.load_caffemodel(path)
    assert loaded["backbone"]["fc6"]["kernel"].shape == (7, 7, 4, 32)
    assert loaded["fc8"]["kernel"].shape == (1, 1, 32, 10)
    params, meta = weights_convert.convert("caffe", path, "fcn32s", 3, width=WIDTH, allow_missing=True)
    assert meta["new"] == ["score_fr", "upscore"] and meta["unused"] == ["fc8"]
    np.testing.assert_array_equal(params["score_fr"]["kernel"], 0)
    np.testing.assert_array_equal(params["upscore"]["kernel"], models_layers.bilinear_kernel(64, 3))

    x = random_input((1, 3, 224, 224), seed=3)  # pool5 7x7: what fc6 (InnerProduct) was trained on
    by_name = {layer.name: layer for layer in layers}
    _, _, pool5 = np_vgg(by_name, x.astype(np.float64), pad1=1)
    fc = pool5.reshape(1, -1)  # Caffe flattens C, H, W
    for name in ("fc6", "fc7"):
        w, b = by_name[name].blobs
        fc = np.maximum(fc @ w.T.astype(np.float64) + b, 0)
    # "same" geometry: fc6 is a SAME 7x7 conv, whose centre output sees exactly pool5
    feats = vgg.VGG16(geometry="same", width=WIDTH).apply({"params": params["backbone"]}, x.transpose(0, 2, 3, 1))
    assert_close(np.asarray(feats["fc7"][0, 3, 3]), fc[0])


def _varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _length_delimited(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_caffe_unpacked_and_double_blobs(tmp_path):
    """Writers that did not pack their floats, or stored doubles, still read correctly."""
    values = np.arange(6, dtype=np.float32) / 4 - 0.5
    shape = _length_delimited(7, _length_delimited(1, _varint(2) + _varint(3)))
    unpacked = b"".join(_varint(5 << 3 | 5) + struct.pack("<f", v) for v in values)  # wire type 5 per float
    layer = _length_delimited(1, b"fc7") + _length_delimited(2, b"Convolution") + _length_delimited(7, shape + unpacked)
    path = tmp_path / "unpacked.caffemodel"
    path.write_bytes(_length_delimited(100, layer))
    (read,) = caffe_proto.read_caffemodel(str(path))
    np.testing.assert_array_equal(read.blobs[0], values.reshape(2, 3))

    msgs = caffe_proto.schema(faithful=True)
    net = msgs["NetParameter"]()
    blob = net.layer.add(name="fc7", type="Convolution").blobs.add()
    blob.shape.dim.extend([3, 2])
    blob.double_data.extend((values * 3).tolist())
    path.write_bytes(net.SerializeToString())
    (read,) = caffe_proto.read_caffemodel(str(path))
    assert read.blobs[0].dtype == np.float32
    np.testing.assert_array_equal(read.blobs[0], (values * 3).reshape(3, 2))


def test_caffe_blob_with_wrong_count_is_refused(tmp_path):
    msgs = caffe_proto.schema(faithful=True)
    net = msgs["NetParameter"]()
    blob = net.layer.add(name="conv1_1", type="Convolution").blobs.add()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([1.0] * 5)
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(ValueError, match="layer conv1_1: blob holds 5 values but its shape .2, 3. needs 6"):
        caffe_proto.read_caffemodel(str(path))


def _png(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"
                     b"\x90wS\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef"
                     b"\x00\x00\x00\x00IEND\xaeB`\x82")
    return str(path)


def test_caffe_bad_files_give_one_clear_line(tmp_path):
    text = tmp_path / "deploy.prototxt"
    text.write_text('name: "FCN"\nlayer { name: "conv1_1" type: "Convolution" }\n')
    with pytest.raises(ValueError, match="is a text file, not a binary .caffemodel"):
        formats.load_caffemodel(str(text))
    with pytest.raises(ValueError, match="truncated or not a Caffe .caffemodel|no layer with blobs"):
        formats.load_caffemodel(_png(tmp_path / "image.png"))
    good = tmp_path / "good.caffemodel"
    caffe_proto.write_caffemodel(str(good), caffe_fcn_layers("fcn32s", 3, np.random.default_rng(0))[:3])
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(good.read_bytes()[:-37])
    with pytest.raises(ValueError, match="cut.caffemodel is truncated or not a Caffe .caffemodel"):
        formats.load_caffemodel(str(cut))


# --------------------------------------------------------------------- torch .pth: real torch fixtures


def test_pytorch_fcn_fixtures_match_torch_forward():
    """Files torch 2.x wrote (zip and legacy format) give torch's FCN8s outputs."""
    fixture = _fixture_script()
    expected = np.load(os.path.join(FIXTURES, "torch_outputs.npz"))["fcn8s"]
    x = fixture.fixture_input(fixture.FCN_INPUT_SHAPE)
    for name in ("pytorch_fcn8s_tiny.pth", "pytorch_fcn8s_tiny_legacy.pth"):
        params, meta = weights_convert.convert("pytorch_fcn", os.path.join(FIXTURES, name), "fcn8s", 3, width=WIDTH)
        assert meta["normalization"] == "caffe_bgr" and len(meta["loaded"]) == 21
        assert_close(fcn_apply("fcn8s", params, x, 3), expected)


def test_torchvision_fixture_matches_torch_classifier():
    """features.N / classifier.0,3 -> conv1_1..fc7; the FCN backbone's fc7 and fc8 equal torch's classifier."""
    fixture = _fixture_script()
    outputs = np.load(os.path.join(FIXTURES, "torch_outputs.npz"))
    loaded, meta = formats.load_pth(os.path.join(FIXTURES, "torchvision_vgg16_tiny.pth"))
    assert meta["format"] == "torchvision" and meta["normalization"] == "imagenet_rgb"
    x = fixture.fixture_input(fixture.VGG_INPUT_SHAPE).transpose(0, 2, 3, 1)
    feats = vgg.VGG16(geometry="same", width=WIDTH).apply({"params": loaded["backbone"]}, x)
    fc7 = np.asarray(feats["fc7"][0, 3, 3])
    assert_close(fc7, outputs["vgg16_fc7"][0])
    fc8 = fc7 @ loaded["fc8"]["kernel"][0, 0] + loaded["fc8"]["bias"]  # classifier.6 as a 1x1 conv
    assert_close(fc8, outputs["vgg16_fc8"][0])


# --------------------------------------------------------------------- torch .pth: hand-written files


@contextmanager
def _fake_torch_globals():
    """Lets pickle write references to torch._utils._rebuild_tensor_v2 / torch.<X>Storage without torch."""
    torch_mod, utils_mod = ModuleType("torch"), ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called when writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "HalfStorage", "DoubleStorage", "LongStorage"):
        setattr(torch_mod, name, type(name, (), {"__module__": "torch"}))
    torch_mod._utils = utils_mod
    with mock.patch.dict(sys.modules, {"torch": torch_mod, "torch._utils": utils_mod}):
        yield torch_mod, _rebuild_tensor_v2


class _TensorRef:
    def __init__(self, rebuild, storage, offset, size, stride):
        size, stride = tuple(map(int, size)), tuple(map(int, stride))  # plain ints: no numpy globals in the pickle
        self.args = (rebuild, (storage, int(offset), size, stride, False, collections.OrderedDict()))

    def __reduce__(self):
        return self.args


class _StorageRef:
    def __init__(self, *pid):
        self.pid = pid


def write_pth(path, tensors, storages, byteorder="little", legacy=False, views=()):
    """torch's file formats by hand.

    tensors {name: (storage_key, offset, size, stride)}; storages {key: 1-D array};
    views {key: (root_key, offset, numel)} (legacy only): storages that are slices of another.
    """
    types = {np.float32: "FloatStorage", np.float16: "HalfStorage", np.float64: "DoubleStorage",
             np.int64: "LongStorage"}
    endian = "<" if byteorder == "little" else ">"
    raw = {k: a.astype(a.dtype.newbyteorder(endian)).tobytes() for k, a in storages.items()}
    with _fake_torch_globals() as (torch_mod, rebuild):
        def ref(key):
            root_key, offset, numel = views[key] if key in views else (key, 0, None)
            root = storages[root_key]
            pid = ("storage", getattr(torch_mod, types[root.dtype.type]), root_key, "cpu", root.size)
            if legacy:
                pid += (None if numel is None else (key, offset, numel),)
            return _StorageRef(*pid)

        state = collections.OrderedDict(
            (name, _TensorRef(rebuild, ref(key), offset, size, stride))
            for name, (key, offset, size, stride) in tensors.items())

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                return obj.pid if isinstance(obj, _StorageRef) else None

        buffer = io.BytesIO()
        if legacy:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": endian == "<",
                                                          "type_sizes": {"short": 2, "int": 4, "long": 8}}):
                pickle.dump(header, buffer, protocol=2)
        Pickler(buffer, protocol=2).dump(state)
    if legacy:
        pickle.dump(sorted(storages), buffer, protocol=2)
        for key in sorted(storages):
            buffer.write(storages[key].size.to_bytes(8, byteorder, signed=True) + raw[key])
        with open(path, "wb") as f:
            f.write(buffer.getvalue())
        return
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buffer.getvalue())
        zf.writestr("archive/byteorder", byteorder)
        for key, data in raw.items():
            zf.writestr(f"archive/data/{key}", data)
        zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_pth_reader_respects_offset_stride_dtype_byteorder(tmp_path, byteorder, legacy):
    base = np.arange(24, dtype=np.float32) * 0.5
    storages = {"0": base, "1": np.arange(5, dtype=np.float16), "2": np.arange(3, dtype=np.int64) - 1,
                "3": np.linspace(0, 1, 4)}
    tensors = {
        "w": ("0", 0, (2, 3, 4), (12, 4, 1)),
        "transposed": ("0", 0, (4, 3), (1, 4)),       # a .t() view: non-contiguous strides
        "slice": ("0", 13, (2, 2), (4, 1)),           # storage offset into a shared storage
        "half": ("1", 1, (4,), (1,)),
        "long": ("2", 0, (3,), (1,)),
        "double": ("3", 0, (2, 2), (2, 1)),
        "empty": ("0", 0, (0, 3), (3, 1)),
    }
    views = {}
    if legacy:  # torch < 0.4 stored slices of storages as views: elements 10..13 of storage 0
        views = {"v": ("0", 10, 4)}
        tensors["in_view"] = ("v", 1, (2,), (2,))
    path = str(tmp_path / "hand.pth")
    write_pth(path, tensors, storages, byteorder, legacy, views)
    got = torch_pickle.load_torch_file(path)
    assert isinstance(got, collections.OrderedDict) and list(got) == list(tensors)
    np.testing.assert_array_equal(got["w"], base.reshape(2, 3, 4))
    np.testing.assert_array_equal(got["transposed"], base[:12].reshape(3, 4).T)
    np.testing.assert_array_equal(got["slice"], [[6.5, 7.0], [8.5, 9.0]])
    np.testing.assert_array_equal(got["half"], [1, 2, 3, 4])
    assert got["half"].dtype == np.float16 and got["long"].dtype == np.int64 and got["double"].dtype == np.float64
    np.testing.assert_array_equal(got["long"], [-1, 0, 1])
    np.testing.assert_array_equal(got["double"], np.linspace(0, 1, 4).reshape(2, 2))
    assert got["empty"].shape == (0, 3)
    if legacy:
        np.testing.assert_array_equal(got["in_view"], [5.5, 6.5])


def test_pth_training_checkpoints_and_data_parallel_prefixes_are_unwrapped(tmp_path, monkeypatch):
    """pytorch-fcn's trainer saves {'model_state_dict': ...}; nn.DataParallel prefixes keys with 'module.'."""
    w, b = np.ones((2, 3, 3, 3), np.float32), np.arange(2, dtype=np.float32)
    checkpoint = {"epoch": 7, "optim_state_dict": {"state": {}},
                  "model_state_dict": collections.OrderedDict(
                      [("module.conv1_1.weight", w), ("module.conv1_1.bias", b)])}
    monkeypatch.setattr(torch_pickle, "load_torch_file", lambda path: checkpoint)
    params, meta = formats.load_pth("checkpoint.pth.tar")
    assert meta["format"] == "pytorch_fcn"
    np.testing.assert_array_equal(params["backbone"]["conv1_1"]["kernel"], w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["backbone"]["conv1_1"]["bias"], b)
    torchvision_checkpoint = {"epoch": 3, "model": {"backbone.layer1.0.conv1.weight": w}}  # its reference train.py
    monkeypatch.setattr(torch_pickle, "load_torch_file", lambda path: torchvision_checkpoint)
    params, meta = formats.load_pth("model_29.pth")
    assert meta["format"] == "torchvision" and params["backbone"]["layer1_0"]["conv1"]["kernel"].shape == (3, 3, 3, 2)
    monkeypatch.setattr(torch_pickle, "load_torch_file", lambda path: [w])
    with pytest.raises(ValueError, match="x.pth does not hold a state_dict .a dict of tensors., but a list"):
        formats.load_pth("x.pth")


def test_hand_written_pytorch_fcn_pth_imports_with_pytorch_layouts(tmp_path):
    """A pytorch-fcn state_dict (OIHW convs, (Cin, Cout, u, v) deconvs) lands in HWIO / (u, v, Cin, Cout)."""
    layers = caffe_fcn_layers("fcn16s", 3, np.random.default_rng(4))  # same layouts as PyTorch's
    tensors, storages = {}, {}
    for layer in layers:
        for leaf, blob in zip(("weight", "bias"), layer.blobs):
            key = str(len(storages))
            storages[key] = blob.ravel()
            tensors[f"{layer.name}.{leaf}"] = (key, 0, blob.shape, np.cumprod((1,) + blob.shape[:0:-1])[::-1])
    path = str(tmp_path / "fcn16s.pth")
    write_pth(path, tensors, storages)
    from_pth, meta = formats.load_pth(path)
    assert meta["format"] == "pytorch_fcn"
    caffe_path = str(tmp_path / "fcn16s.caffemodel")
    caffe_proto.write_caffemodel(caffe_path, layers)
    from_caffe, _ = formats.load_caffemodel(caffe_path)
    jax.tree.map(np.testing.assert_array_equal, from_pth, from_caffe)
    with pytest.raises(ValueError, match="--format torchvision, but .*fcn16s.pth holds a pytorch_fcn state_dict"):
        formats.load_pth(path, "torchvision")


_MALICIOUS = {
    "os.system": lambda marker: f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),
    "builtins.exec": lambda marker: pickle.dumps(_Exec(f"open({str(marker)!r}, 'w').close()"), protocol=2),
    "builtins.eval (protocol 4)": lambda marker: pickle.dumps(_Exec(f"open({str(marker)!r}, 'w')", eval), protocol=4),
}


class _Exec:
    def __init__(self, code, fn=exec):
        self.code, self.fn = code, fn

    def __reduce__(self):
        return self.fn, (self.code,)


@pytest.mark.parametrize("container", ["zip", "plain pickle"])
@pytest.mark.parametrize("attack", list(_MALICIOUS))
def test_malicious_pickle_is_refused_and_not_run(tmp_path, container, attack):
    marker = tmp_path / "pwned"
    payload = _MALICIOUS[attack](marker)
    path = tmp_path / "evil.pth"
    if container == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", payload)
            zf.writestr("archive/version", "3\n")
    else:
        path.write_bytes(payload)
    module, name = attack.split()[0].split(".")
    module = "(__builtin__|builtins)" if module == "builtins" else module  # protocol 2 writes Python 2's name
    with pytest.raises(torch_pickle.UnsafePickleError, match=rf"evil.pth: refusing to load global '{module}\.{name}'"):
        formats.load_pth(str(path))
    assert not marker.exists()


def test_pth_bad_files_give_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="image.png is not a PyTorch .pth file"):
        formats.load_pth(_png(tmp_path / "image.png"))
    text = tmp_path / "notes.pth"
    text.write_text("just some text\n")
    with pytest.raises(ValueError, match="notes.pth is not a PyTorch .pth file"):
        formats.load_pth(str(text))
    plain = tmp_path / "dict.pth"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ValueError, match="is a pickle but not a PyTorch .pth file"):
        formats.load_pth(str(plain))

    for name in ("pytorch_fcn8s_tiny.pth", "pytorch_fcn8s_tiny_legacy.pth"):
        data = open(os.path.join(FIXTURES, name), "rb").read()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(ValueError, match="truncated"):
            formats.load_pth(str(cut))

    tar = tmp_path / "old.pth"
    with tarfile.open(tar, "w") as tf:
        tf.add(text, arcname="pickle")
    with pytest.raises(ValueError, match="old tar format"):
        formats.load_pth(str(tar))

    bad = tmp_path / "oob.pth"
    write_pth(str(bad), {"w": ("0", 2, (2, 3), (3, 1))}, {"0": np.zeros(6, np.float32)})
    with pytest.raises(ValueError, match="reaches past its storage"):
        torch_pickle.load_torch_file(str(bad))

    bn = tmp_path / "vgg16_bn.pth"
    write_pth(str(bn), {"features.0.weight": ("0", 0, (1,), (1,)), "features.1.running_mean": ("0", 0, (1,), (1,))},
              {"0": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="batch-norm VGG"):
        formats.load_pth(str(bn))


# --------------------------------------------------------------------- merge_params


def _tree(*names, k=3):
    shapes = {"score_fr": {"kernel": (1, 1, 8, k), "bias": (k,)}, "score_pool4": {"kernel": (1, 1, 4, k), "bias": (k,)},
              "score_pool3": {"kernel": (1, 1, 2, k), "bias": (k,)}, "upscore": {"kernel": (64, 64, k, k)},
              "upscore2": {"kernel": (4, 4, k, k)}, "upscore_pool4": {"kernel": (4, 4, k, k)},
              "upscore16": {"kernel": (32, 32, k, k)}, "upscore8": {"kernel": (16, 16, k, k)}}
    tree = {"backbone": {"conv1_1": {"kernel": np.ones((3, 3, 3, 1), np.float32), "bias": np.ones(1, np.float32)}}}
    tree.update({n: {leaf: np.full(s, 0.5, np.float32) for leaf, s in shapes[n].items()} for n in names})
    return tree


def test_merge_params_strict_lists_every_problem_in_one_error():
    fcn32s = _tree("score_fr", "upscore")
    fcn8s = _tree("score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8")
    template = jax.eval_shape(lambda: fcn8s)
    with pytest.raises(merge.ParamMismatchError) as error:
        merge.merge_params(template, fcn32s)
    assert error.value.problems == ["missing: score_pool3, score_pool4, upscore2, upscore8, upscore_pool4",
                                    "unexpected: upscore"]
    assert str(error.value) == ("weights do not fit the model: missing: score_pool3, score_pool4, upscore2, "
                                "upscore8, upscore_pool4; unexpected: upscore")
    other_classes = _tree("score_fr", "upscore", k=5)
    other_classes["backbone"]["conv1_1"].pop("bias")
    with pytest.raises(ValueError) as error:
        merge.merge_params(fcn32s, other_classes, strict=False)  # mismatches fail even when not strict
    assert "missing" not in str(error.value)
    assert str(error.value).endswith("shape mismatch: score_fr/bias (5,) in weights vs (3,) in model, "
                                     "score_fr/kernel (1, 1, 8, 5) in weights vs (1, 1, 8, 3) in model, "
                                     "upscore/kernel (64, 64, 5, 5) in weights vs (64, 64, 3, 3) in model")
    with pytest.raises(ValueError, match="missing: backbone/conv1_1/bias"):
        merge.merge_params(_tree(), {"backbone": {"conv1_1": {"kernel": np.ones((3, 3, 3, 1))}}})


def test_merge_params_partial_keeps_fresh_values_and_reports():
    """16s from 32s (training's init_from): shared layers loaded, new ones keep their init, upscore unused."""
    fcn32s = _tree("score_fr", "upscore")
    fcn32s["score_fr"]["kernel"] = np.arange(24, dtype=np.float64).reshape(1, 1, 8, 3)
    fcn16s = _tree("score_fr", "upscore2", "score_pool4", "upscore16")
    fcn16s["backbone"]["conv1_1"]["bias"] = np.zeros(1, np.float32)
    params, report = merge.merge_params(fcn16s, fcn32s, strict=False)
    assert report == {"loaded": ["backbone/conv1_1", "score_fr"], "new": ["score_pool4", "upscore16", "upscore2"],
                      "unused": ["upscore"]}
    assert params["score_fr"]["kernel"].dtype == np.float32  # cast to the template's dtype
    np.testing.assert_array_equal(params["score_fr"]["kernel"], fcn32s["score_fr"]["kernel"])
    np.testing.assert_array_equal(params["backbone"]["conv1_1"]["bias"], 1)  # loaded over the template's 0
    assert params["upscore16"]["kernel"] is fcn16s["upscore16"]["kernel"]
    assert jax.tree.structure(params) == jax.tree.structure(fcn16s)


def test_merge_params_accepts_real_model_trees():
    model = zoo.create_model("fcn16s", num_classes=3, width=WIDTH)
    template = zoo.param_template(model)  # ShapeDtypeStructs
    fresh = zoo.param_template(model, jax.random.PRNGKey(0))
    params, report = merge.merge_params(template, fresh)
    assert report["new"] == report["unused"] == [] and len(report["loaded"]) == 15 + 4
    assert jax.tree.structure(params) == jax.tree.structure(jax.tree.map(np.asarray, fresh))


# --------------------------------------------------------------------- layouts and normalisation


def test_dense_to_conv_follows_chw_flatten():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(6, 4 * 3 * 3)).astype(np.float32)
    window = rng.normal(size=(4, 3, 3)).astype(np.float32)  # (C, k, k): what the dense layer saw, flattened
    kernel = formats.dense_to_conv(w, in_channels=4)
    assert kernel.shape == (3, 3, 4, 6)
    np.testing.assert_allclose(np.einsum("hwio,ihw->o", kernel, window), w @ window.ravel(), rtol=1e-5)
    with pytest.raises(ValueError, match="fc6: 36 inputs are not 5 channels times a square k x k window"):
        formats.dense_to_conv(w, in_channels=5, name="fc6")


def _conv1_1_valid(conv, x):
    return np_conv(x.transpose(0, 3, 1, 2), conv["kernel"].transpose(3, 2, 0, 1).astype(np.float64), conv["bias"], 0)


def test_change_normalization_is_exact_inside_the_image():

    rng = np.random.default_rng(6)
    conv = {"kernel": rng.normal(size=(3, 3, 3, 5)).astype(np.float32), "bias": rng.normal(size=5).astype(np.float32)}
    params = {"backbone": {"conv1_1": conv, "conv1_2": "untouched"}}
    rgb = rng.integers(0, 256, size=(1, 9, 11, 3)).astype(np.float32)
    caffe_input = normalization.normalize(rgb, "caffe_bgr")
    imagenet_input = normalization.normalize(rgb, "imagenet_rgb")
    converted = weights_convert.change_normalization(params, "caffe_bgr", "imagenet_rgb")
    assert converted["backbone"]["conv1_2"] == "untouched" and params["backbone"]["conv1_1"] is conv
    expected = _conv1_1_valid(conv, caffe_input)
    actual = _conv1_1_valid(converted["backbone"]["conv1_1"], imagenet_input)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    back = weights_convert.change_normalization(converted, "imagenet_rgb", "caffe_bgr")["backbone"]["conv1_1"]
    np.testing.assert_allclose(back["kernel"], conv["kernel"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(back["bias"], conv["bias"], rtol=1e-4, atol=1e-4)
