"""python -m fcn_jax.convert: writes params that load back (load_converted, checkpoints.load_params) unchanged."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from formats_test import FIXTURES, WIDTH, caffe_fcn_layers

from fcn_jax import convert
from fcn_jax.models import layers, zoo
from fcn_jax.weights import artifacts, caffe_proto, checkpoints, formats
from fcn_jax.weights import convert as weights_convert

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _caffemodel(tmp_path, variant, name=None):
    path = str(tmp_path / f"{name or variant}.caffemodel")
    caffe_proto.write_caffemodel(path, caffe_fcn_layers(variant, 3, np.random.default_rng(0)))
    return path


def _args(fmt, path, variant, out, *extra):
    return ["--format", fmt, "--input", path, "--variant", variant, "--num_classes", "3",
            "--width", str(WIDTH), "--output", str(out), *extra]


def test_convert_writes_params_and_sidecar(tmp_path, capsys):
    path = _caffemodel(tmp_path, "fcn8s")
    out = tmp_path / "converted"
    assert convert.main(_args("caffe", path, "fcn8s", out)) == 0
    printed = capsys.readouterr().out
    assert "loaded (21): backbone/conv1_1, backbone/conv1_2" in printed
    assert "expects input normalization caffe_bgr" in printed

    params, meta = checkpoints.load_converted(str(out))
    expected, _ = formats.load_caffemodel(path)
    jax.tree.map(np.testing.assert_array_equal, params, expected)
    assert all(isinstance(x, np.ndarray) and x.dtype == np.float32 for x in jax.tree.leaves(params))
    sidecar = json.loads((out / artifacts.WEIGHTS_SIDECAR).read_text())
    assert sidecar == meta
    keys = ("format", "variant", "num_classes", "width", "geometry", "normalization", "source")
    assert {k: meta[k] for k in keys} == {
        "format": "caffe", "variant": "fcn8s", "num_classes": 3, "width": WIDTH, "geometry": "caffe",
        "normalization": "caffe_bgr", "source": os.path.abspath(path)}
    assert meta["new"] == [] and meta["unused"] == []
    # training's init_from and evaluate/predict read it through checkpoints.load_params
    jax.tree.map(np.testing.assert_array_equal, checkpoints.load_params(str(out)), expected)
    # and the params run in the model they were converted for
    model = zoo.create_model("fcn8s", num_classes=3, width=WIDTH)
    logits = model.apply({"params": params}, np.zeros((1, 8, 8, 3), np.float32))
    assert logits.shape == (1, 8, 8, 3)


def test_convert_refuses_a_variant_that_does_not_match(tmp_path, capsys):
    path = _caffemodel(tmp_path, "fcn32s")
    assert convert.main(_args("caffe", path, "fcn8s", tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert err == (f"error: {path} does not fit fcn8s with num_classes=3: "
                   "missing: score_pool3, score_pool4, upscore2, upscore8, upscore_pool4; unexpected: upscore\n")
    assert not (tmp_path / "out").exists()
    assert convert.main(_args("caffe", path, "fcn32s", tmp_path / "out") + ["--num_classes", "5"]) == 1  # last wins
    assert "shape mismatch: score_fr/bias (3,) in weights vs (5,) in model" in capsys.readouterr().err


def test_convert_backbone_only_with_allow_missing(tmp_path, capsys):
    """torchvision VGG16 -> FCN-8s: score layers zero, upscore bilinear, fc8 reported unused."""
    path = os.path.join(FIXTURES, "torchvision_vgg16_tiny.pth")
    assert convert.main(_args("torchvision", path, "fcn8s", tmp_path / "strict")) == 1
    assert "missing: score_fr, score_pool3, score_pool4, upscore2, upscore8, upscore_pool4; unexpected: fc8" in (
        capsys.readouterr().err)
    out = tmp_path / "vgg"
    assert convert.main(_args("torchvision", path, "fcn8s", out, "--allow_missing")) == 0
    printed = capsys.readouterr().out
    assert ("fresh init, not in the file (6): score_fr, score_pool3, score_pool4, upscore2, upscore8, upscore_pool4"
            in printed)
    assert "unused, not in the model (1): fc8" in printed
    params, meta = checkpoints.load_converted(str(out))
    assert meta["normalization"] == "imagenet_rgb" and meta["format"] == "torchvision"
    loaded, _ = formats.load_pth(path)
    jax.tree.map(np.testing.assert_array_equal, params["backbone"], loaded["backbone"])
    for name in ("score_fr", "score_pool4", "score_pool3"):
        np.testing.assert_array_equal(params[name]["kernel"], 0)
    np.testing.assert_array_equal(params["upscore8"]["kernel"], layers.bilinear_kernel(16, 3))
    np.testing.assert_array_equal(params["upscore2"]["kernel"], layers.bilinear_kernel(4, 3))


def test_convert_can_change_the_input_normalization(tmp_path):
    path = os.path.join(FIXTURES, "pytorch_fcn8s_tiny.pth")
    out = tmp_path / "rgb"
    assert convert.main(_args("pytorch_fcn", path, "fcn8s", out, "--normalization", "imagenet_rgb")) == 0
    params, meta = checkpoints.load_converted(str(out))
    assert meta["normalization"] == "imagenet_rgb"
    original, _ = formats.load_pth(path)
    expected = weights_convert.change_normalization(original, "caffe_bgr", "imagenet_rgb")
    jax.tree.map(np.testing.assert_array_equal, params, expected)
    assert not np.allclose(params["backbone"]["conv1_1"]["kernel"], original["backbone"]["conv1_1"]["kernel"])


def test_convert_bad_inputs_give_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    path = _caffemodel(tmp_path, "fcn32s")
    assert convert.main(_args("caffe", path, "fcn32s", out)) == 1
    assert capsys.readouterr().err == f"error: output directory {out} is not empty; choose a new one\n"
    assert convert.main(_args("caffe", str(tmp_path / "nope.caffemodel"), "fcn32s", tmp_path / "o2")) == 1
    assert "nope.caffemodel does not exist" in capsys.readouterr().err
    assert convert.main(_args("pytorch_fcn", path, "fcn32s", tmp_path / "o3")) == 1  # a caffemodel given as .pth
    assert "is not a PyTorch .pth file" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="fcn_jax_weights.json missing"):
        checkpoints.load_converted(str(tmp_path))


def test_module_entry_point(tmp_path):
    """`python -m fcn_jax.convert` exits non-zero with one line on stderr for a file of the wrong kind."""
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "fcn_jax.convert", *_args("pytorch_fcn", str(png), "fcn8s", tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {png} is not a PyTorch .pth file "
                                                  "(neither a torch zip archive nor a legacy torch pickle)"]
