"""torchvision ResNet import: fixtures written by real torchvision (scripts/make_resnet_fixtures.py) give torchvision's
outputs, every key of the full-size state_dicts lands on a param of the same shape; with torchvision installed, a
random fcn_resnet50 equals fcn_jax's on odd sizes."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from fcn_jax.core import normalization
from fcn_jax.models import zoo
from fcn_jax.weights import checkpoints, merge, torchvision_resnet
from fcn_jax.weights import convert as weights_convert

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def _script():
    spec = importlib.util.spec_from_file_location("make_resnet_fixtures",
                                                  os.path.join(ROOT, "scripts", "make_resnet_fixtures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outputs(model, params, images_nchw):
    """(out, aux) in NCHW, as torchvision's FCN returns them in eval mode."""
    out, sown = model.apply({"params": params}, images_nchw.transpose(0, 2, 3, 1), mutable=["aux"])
    return np.asarray(out).transpose(0, 3, 1, 2), np.asarray(sown["aux"]["logits"][0]).transpose(0, 3, 1, 2)


def _relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _tiny():
    """(the tiny torchvision FCN's state_dict, its fcn_jax options, torchvision's out, aux) from the fixture."""
    script = _script()
    with np.load(os.path.join(FIXTURES, "torchvision_resnet_tiny.npz")) as fixture:
        keys, shapes = [str(k) for k in fixture["keys"]], json.loads(str(fixture["shapes"]))
        expected_out, expected_aux = fixture["out"], fixture["aux"]
    state = {k: script.pattern(i, k, tuple(s)) for i, (k, s) in enumerate(zip(keys, shapes))}
    return state, {k: script.TINY[k] for k in ("layers", "width_per_group", "expansion")}, expected_out, expected_aux


def test_the_tiny_torchvision_fcn_gives_torchvisions_outputs():
    script = _script()
    state, options, expected_out, expected_aux = _tiny()
    model = zoo.create_model("fcn_resnet50", num_classes=script.TINY["num_classes"], resnet=options)
    params, report = merge.merge_params(zoo.param_template(model), torchvision_resnet.to_params(state))
    assert report["new"] == report["unused"] == [] and "backbone/layer4_1/conv2" in report["loaded"]
    out, aux = _outputs(model, params, script.fixture_input())
    assert out.shape == expected_out.shape == (2, 3, 37, 45)
    assert _relative(out, expected_out) < 1e-4 and _relative(aux, expected_aux) < 1e-4


@pytest.mark.parametrize("name,variant,strict", [("fcn_resnet50", "fcn_resnet50", True),
                                                 ("fcn_resnet101", "fcn_resnet101", True),
                                                 ("resnet50", "fcn_resnet50", False),
                                                 ("resnet101", "fcn_resnet101", False)])
def test_every_key_of_torchvisions_state_dicts_fits_the_model(name, variant, strict):
    with open(os.path.join(FIXTURES, "torchvision_resnet_keys.json")) as f:
        shapes = json.load(f)[name]
    state = {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in shapes.items()}  # shapes only, no memory
    assert torchvision_resnet.is_resnet(state)
    template = zoo.param_template(zoo.create_model(variant, num_classes=21))
    if not strict:
        template = jax.tree.map(lambda x: np.broadcast_to(np.float32(0), x.shape), template)
    _, report = merge.merge_params(template, torchvision_resnet.to_params(state), strict=strict)
    if strict:  # fcn_resnet*: every param from the file, nothing left over (num_batches_tracked dropped)
        assert report["new"] == report["unused"] == []
    else:  # the ImageNet backbone: the heads are new, its 1000-way fc unused
        assert report["new"] == [f"{head}/{layer}" for head in ("aux_classifier", "classifier")
                                 for layer in ("bn", "conv", "score")] and report["unused"] == ["fc"]
    assert len(report["loaded"]) > 50


def test_converted_resnet_weights_predict_as_the_network(tmp_path):
    from PIL import Image

    from fcn_jax import predict

    state, options, _, _ = _tiny()
    torch_file = tmp_path / "tiny.pth"
    _write_state_dict(torch_file, state)
    params, meta = weights_convert.convert("torchvision", str(torch_file), "fcn_resnet50", num_classes=3,
                                           resnet=options)
    assert meta["resnet"]["layers"] == [1, 1, 2, 2] and meta["normalization"] == "imagenet_rgb"
    checkpoints.save_params(str(tmp_path / "weights"), params, meta)
    image = np.random.default_rng(4).integers(0, 256, (29, 35, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    assert predict.main(["--weights", str(tmp_path / "weights"), "--input", str(tmp_path / "photo.png"),
                         "--output", str(tmp_path / "out")]) == 0
    model = zoo.create_model("fcn_resnet50", num_classes=3, resnet=options)
    logits = model.apply({"params": params}, normalization.normalize(image, "imagenet_rgb")[None])[0]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "photo.png")), np.argmax(logits, -1))


def _write_state_dict(path, state):
    """A .pth of `state` in torch's zip format, written by pretrained_test's hand-written writer (no torch here)."""
    from formats_test import write_pth

    tensors, storages = {}, {}
    for name, value in state.items():
        key = str(len(storages))
        storages[key] = np.ascontiguousarray(value).ravel()
        stride = tuple(int(x) for x in np.cumprod((1,) + value.shape[:0:-1])[::-1]) if value.ndim else ()
        tensors[name] = (key, 0, value.shape, stride)
    write_pth(str(path), tensors, storages)


def test_params_without_statistics_are_torchvisions_documented_counts():
    for variant, documented in (("fcn_resnet50", 35_322_218), ("fcn_resnet101", 54_314_346)):
        params = zoo.param_template(zoo.create_model(variant, num_classes=21))
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        counted = sum(int(np.prod(x.shape)) for path, x in flat if path[-1].key not in ("mean", "var"))
        assert counted == documented


def test_a_resnet_cannot_take_another_normalisation_folded_in():
    params = {"backbone": {"conv1": {"kernel": np.zeros((7, 7, 3, 4), np.float32)}}}
    with pytest.raises(ValueError, match="only VGG16's conv1_1"):
        weights_convert.change_normalization(params, "imagenet_rgb", "caffe_bgr")


@pytest.mark.parametrize("size", [(67, 83), (50, 41)])
def test_a_random_torchvision_fcn_resnet50_equals_fcn_jax(size, tmp_path):
    torch = pytest.importorskip("torch")
    segmentation = pytest.importorskip("torchvision.models.segmentation")
    torch.manual_seed(0)
    reference = segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=True)
    for module in reference.modules():  # random statistics, so eval-mode batch norm is not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    reference.eval()
    torch.save(reference.state_dict(), tmp_path / "fcn_resnet50.pth")
    params, meta = weights_convert.convert("torchvision", str(tmp_path / "fcn_resnet50.pth"), "fcn_resnet50",
                                           num_classes=5)
    assert meta["normalization"] == "imagenet_rgb" and meta["unused"] == []
    images = np.random.default_rng(0).normal(size=(2, 3, *size)).astype(np.float32)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(images))
    out, aux = _outputs(zoo.create_model("fcn_resnet50", num_classes=5), params, images)
    assert _relative(out, expected["out"].numpy()) < 1e-4 and _relative(aux, expected["aux"].numpy()) < 1e-4
