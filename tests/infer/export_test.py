"""python -m fcn_jax.export: artifacts reloaded in fresh processes without fcn_jax give predict's outputs."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from evaluate_test import forward_fn, random_params, save_converted_weights
from jax import export as jax_export
from PIL import Image

from fcn_jax import export, predict
from fcn_jax.core import normalization, parallel
from fcn_jax.data import dataset_info
from fcn_jax.infer import export as infer_export
from fcn_jax.infer import network as infer_network
from fcn_jax.infer import steps
from fcn_jax.infer.runner import Runner
from fcn_jax.models import zoo

SHAPES = ((1, 37, 53), (2, 64, 48), (1, 1, 1), (3, 23, 31))  # (batch, height, width): odd, tiny, batched
RELOAD = textwrap.dedent("""
    import sys
    for name in {blocked!r}:
        sys.modules[name] = None  # any import of them now fails
    import numpy as np
    folder, inputs, outputs = sys.argv[1:]
    images = np.load(inputs)
    if {runtime!r} == "saved_model":
        import tensorflow as tf
        serve = tf.saved_model.load(folder + "/saved_model").signatures["serving_default"]
        results = [serve(images=tf.constant(images[k])) for k in images.files]
        out = {{f"{{k}}_{{name}}": r[name].numpy()
               for k, r in zip(images.files, results) for name in ("logits", "masks")}}
    else:
        sys.path.insert(0, folder)
        import segment
        run = segment.load(folder)  # the default runtime: jax if its artifact is there and imports, else onnxruntime
        out = {{f"{{k}}_{{name}}": value
               for k in images.files for name, value in zip(("logits", "masks"), run(images[k]))}}
        if {runtime!r} != "onnx_only":
            assert segment.main([folder + "/photo.png", "--output", folder + "/masks_" + {runtime!r}]) == 0
    np.savez(outputs, **out)
    print("reloaded")
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    params = random_params("fcn8s", seed=4)
    weights = save_converted_weights(root / "weights", params)
    assert export.main(["--weights", weights, "--output", str(root / "exported"), "--formats", "stablehlo",
                        "saved_model", "onnx"]) == 0
    rng = np.random.default_rng(0)
    images = {f"s{i}": rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for i, shape in enumerate(SHAPES)}
    np.savez(root / "inputs.npz", **images)
    return root, weights, params, images


BLOCKED = {"stablehlo": ("fcn_jax", "tensorflow"), "saved_model": ("fcn_jax", "jax", "jaxlib"),
           "onnx": ("fcn_jax", "jax", "jaxlib", "tensorflow")}  # onnxruntime, numpy and Pillow alone


def _reload(folder, inputs, runtime: str) -> dict:
    """The artifacts of `folder` run on the arrays of `inputs` (.npz) in a fresh process that cannot import
    fcn_jax (nor jax, for the SavedModel and ONNX)."""
    script = RELOAD.format(blocked=BLOCKED[runtime.removesuffix("_only")], runtime=runtime)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    outputs = folder.parent / f"outputs_{runtime}.npz"
    completed = subprocess.run([sys.executable, "-c", script, str(folder), str(inputs), str(outputs)],
                               capture_output=True, text=True, timeout=300, env=env, cwd=str(folder.parent))
    assert completed.returncode == 0, completed.stderr[-3000:]
    with np.load(outputs) as loaded:
        return dict(loaded)


@pytest.mark.parametrize("runtime", ["stablehlo", "saved_model", "onnx"])
def test_a_fresh_process_without_fcn_jax_gets_predicts_outputs_on_every_size(exported, runtime):
    root, weights, params, images = exported
    Image.fromarray(images["s0"][0]).save(root / "exported" / "photo.png")
    outputs = _reload(root / "exported", root / "inputs.npz", runtime)
    forward = forward_fn()
    network = infer_network.load_network(weights)
    for key, batch in images.items():
        expected = np.asarray(forward({"params": params}, normalization.normalize(batch, "caffe_bgr")))
        # symbolic sizes run fc6 as lax's convolution, predict on the CPU as im2col (conv_forms): other sum orders
        np.testing.assert_allclose(outputs[f"{key}_logits"], expected, rtol=1e-5, atol=1e-4)
        masks = [mask for _, _, mask in Runner.of(network).masks(network.params, enumerate(batch))]
        np.testing.assert_array_equal(outputs[f"{key}_masks"], np.stack(masks))
    if runtime != "saved_model":  # segment.py's PNG is predict's PNG
        assert predict.main(["--weights", weights, "--input", str(root / "exported" / "photo.png"),
                             "--output", str(root / f"predicted_{runtime}")]) == 0
        np.testing.assert_array_equal(np.asarray(Image.open(root / "exported" / f"masks_{runtime}" / "photo.png")),
                                      np.asarray(Image.open(root / f"predicted_{runtime}" / "photo.png")))


def _calibrated(model, params):
    """params with the score layers scaled so that logits span about -10..10, as a trained model's do (random
    weights give the ResNet logits of 60, one class everywhere), and its score bias centred."""
    is_score = lambda path: any(str(getattr(p, "key", "")).startswith("score") for p in path)  # noqa: E731
    probe = np.asarray(model.apply({"params": params}, np.random.default_rng(0).normal(size=(1, 40, 40, 3))))
    if "classifier" in params:
        params["classifier"]["score"]["bias"] = params["classifier"]["score"]["bias"] - probe.mean((0, 1, 2))
        probe = probe - probe.mean((0, 1, 2))
    factor = np.float32(10 / np.abs(probe).max())
    return jax.tree_util.tree_map_with_path(lambda path, x: x * factor if is_score(path) else x, params)


@pytest.mark.parametrize("kind", ["fcn32s_caffe", "resnet", "two_heads"])
def test_onnx_of_other_geometries_models_and_heads_in_a_fresh_process(kind, tmp_path):
    """Symbolic batch, height and width through the caffe crops of FCN-32s, the ResNet's pools, batch norm and
    bilinear resize, and two score heads: onnxruntime alone gives the model's logits and masks."""
    create = {"fcn32s_caffe": dict(variant="fcn32s", width=1 / 32, geometry="caffe"),
              "resnet": dict(variant="fcn_resnet50", num_classes=4,
                             resnet={"layers": (1, 1, 1, 1), "width_per_group": 8, "expansion": 1}),
              "two_heads": dict(variant="fcn16s", num_classes=0, width=1 / 32, geometry="same",
                                heads=(("sem", 5), ("geo", 3)))}[kind]
    model = zoo.create_model(create.pop("variant"), **create)
    rng = np.random.default_rng(5)
    params = _calibrated(model, jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(np.float32) * 0.1,
                                             zoo.param_template(model, jax.random.PRNGKey(1))))
    mesh = parallel.create_mesh()
    network = infer_network.Network(model, parallel.replicate(params, mesh), {"normalization": "imagenet_rgb"}, mesh)
    heads = tuple((name, dataset_info.generic(k)) for name, k in network.heads)
    meta = infer_export.write_artifacts(network, heads, str(tmp_path / "onnx"), formats=("onnx",))
    assert meta["accepts"]["height"] == "any >= 1" and meta["versions"]["onnx_opset"] == 17
    images = {f"s{i}": rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
              for i, shape in enumerate(((2, 37, 45), (1, 64, 48), (1, 19, 1)))}
    np.savez(tmp_path / "inputs.npz", **images)
    outputs = _reload(tmp_path / "onnx", tmp_path / "inputs.npz", "onnx_only")
    for key, batch in images.items():
        expected = np.asarray(model.apply({"params": params}, normalization.normalize(batch, "imagenet_rgb")))
        np.testing.assert_allclose(outputs[f"{key}_logits"], expected, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(outputs[f"{key}_masks"], steps.head_masks(expected, network.heads))
    assert len(np.unique(outputs["s0_masks"])) > 1  # masks with several classes: argmax is tested


def test_export_json_says_what_the_artifacts_accept(exported):
    root = exported[0]
    meta = json.loads((root / "exported" / infer_export.META_FILE).read_text())
    assert meta["accepts"] == {"batch": "any >= 1", "height": "any >= 1", "width": "any >= 1"}
    assert meta["outputs"]["logits"] == "float32 (batch, height, width, 21)"
    assert meta["heads"][0]["classes"][15] == "person" and meta["heads"][0]["palette"][1] == [128, 0, 0]
    assert {"dataset.json", "export.json", "model.jax_export", "params.npz", "saved_model", "segment.py",
            "model.onnx"} <= set(os.listdir(root / "exported"))
    assert meta["versions"]["onnx_opset"] == 17 and meta["formats"] == ["stablehlo", "saved_model", "onnx"]


def test_export_without_the_onnx_package_is_one_line_naming_the_extra(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.delitem(sys.modules, "fcn_jax.infer.onnx_export", raising=False)
    import fcn_jax.infer

    monkeypatch.delattr(fcn_jax.infer, "onnx_export", raising=False)  # so that it is imported again, and fails
    assert export.main(["--weights", exported[1], "--output", str(tmp_path / "onnx"), "--formats", "onnx"]) == 1
    assert capsys.readouterr().err.strip().endswith('(--formats onnx needs the onnx package: pip install ".[onnx]")')
    assert not (tmp_path / "onnx").exists()


def test_fixed_sizes_and_several_heads(tmp_path):
    model = zoo.create_model("fcn16s", num_classes=0, width=1 / 32, geometry="same", heads=(("sem", 5), ("geo", 3)),
                             winograd_min_channels=1)
    params = zoo.param_template(model, jax.random.PRNGKey(1))
    params = jax.tree.map(lambda x: x + np.random.default_rng(2).normal(size=x.shape).astype(np.float32) * 0.1, params)
    mesh = parallel.create_mesh()
    network = infer_network.Network(model, parallel.replicate(params, mesh),
                                {"normalization": "imagenet_rgb"}, mesh)
    segment, flat = infer_export.serving_function(network)
    fixed = infer_export.export_stablehlo(segment, flat, infer_export.shape_spec(2, (24, 40)), ("cpu",))
    assert [tuple(a.shape) for a in fixed.in_avals][-1] == (2, 24, 40, 3)
    reloaded = jax_export.deserialize(bytearray(fixed.serialize()))
    images = np.random.default_rng(3).integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    logits, masks = reloaded.call(flat, images)
    direct = zoo.direct_convolutions(model)
    expected = direct.apply({"params": params}, normalization.normalize(images, "imagenet_rgb"))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(masks, steps.head_masks(np.asarray(expected), network.heads))
    assert masks.shape == (2, 24, 40, 2)
    with pytest.raises(ValueError, match="shape"):
        reloaded.call(flat, images[:1])

    # the artifact holds direct convolutions, though this model takes Winograd's at fixed sizes on the CPU
    def convolutions(fn, *args):
        return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated")

    def apply(module):
        return lambda p, x: module.apply({"params": p}, normalization.normalize(x, "imagenet_rgb"))

    assert (convolutions(segment, flat, images) == convolutions(apply(direct), params, images)
            > convolutions(apply(model), params, images))


def test_a_crf_model_is_refused_in_one_line_at_symbolic_sizes_and_in_onnx_before_any_work(tmp_path):
    model = zoo.create_model("fcn32s", num_classes=3, width=1 / 32, geometry="same", crf={"enabled": True})
    network = infer_network.Network(model, zoo.param_template(model), {"normalization": "caffe_bgr"},
                                    parallel.create_mesh())
    with pytest.raises(ValueError, match="exports at one image size only: give --size H W"):
        infer_export.write_artifacts(network, None, str(tmp_path / "symbolic"), formats=("stablehlo",))
    with pytest.raises(ValueError, match="no ONNX lowering"):
        infer_export.write_artifacts(network, None, str(tmp_path / "onnx"), size=(24, 32), formats=("onnx",))
    assert not os.listdir(tmp_path)


def test_segment_py_fits_fixed_batches_and_refuses_other_sizes_in_one_line(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("segment_exported", infer_export.SCRIPT_SOURCE)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "photo.png")
    calls = []

    def run(images):
        calls.append(images.shape)
        return None, np.zeros(images.shape[:3], np.uint8)

    assert script.segment_file(run, str(tmp_path / "photo.png"),
                               {"batch": 3, "height": 20, "width": 30}).shape == (20, 30)
    assert calls == [(3, 20, 30, 3)]  # a fixed batch is filled with copies
    with pytest.raises(ValueError, match="takes 32x32 images only"):
        script.segment_file(run, str(tmp_path / "photo.png"), {"batch": "any >= 1", "height": 32, "width": 32})
    (tmp_path / "export.json").write_text("{}")
    assert script.main([str(tmp_path / "missing.jpg"), "--output", str(tmp_path / "out"),
                        "--model", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_bad_outputs_and_a_missing_tensorflow_are_one_line_errors(exported, tmp_path, capsys, monkeypatch):
    weights = exported[1]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert export.main(["--weights", weights, "--output", str(tmp_path / "taken")]) == 1
    assert "is not an earlier export" in capsys.readouterr().err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    monkeypatch.delitem(sys.modules, "jax.experimental.jax2tf", raising=False)
    assert export.main(["--weights", weights, "--output", str(tmp_path / "new"), "--formats", "saved_model"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "needs TensorFlow" in error[0]
    assert not os.path.exists(tmp_path / "new") and not any("exporting" in name for name in os.listdir(tmp_path))
    earlier = exported[0] / "exported"
    monkeypatch.chdir(earlier)  # an earlier export, but replacing it would pull the folder from under us
    assert export.main(["--weights", weights, "--output", "."]) == 1
    assert "holds the current folder" in capsys.readouterr().err
    assert (earlier / infer_export.META_FILE).is_file() and (earlier / infer_export.JAX_FILE).is_file()
