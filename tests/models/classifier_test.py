"""Tests for fcn_jax.models.classifier: the Dense head as convolutions, exactly where it can be."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import pipeline_demo
from fcn_jax.core import parallel
from fcn_jax.flows import classifier as flows_classifier
from fcn_jax.models import classifier as models_classifier
from fcn_jax.models import fcn as models_fcn
from fcn_jax.models import vgg

WIDTH = 1 / 16  # 4..32 conv channels, 256 fc channels; the geometry stays VGG16's
CLASSES = 10


def make_params(model, size, seed=0):
    """He-normal kernels and small random biases, built with NumPy from the shapes."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *size, 3)))["params"]
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        if path[-1] == "bias":
            return jnp.asarray(rng.normal(size=x.shape) * 0.01, jnp.float32)
        return jnp.asarray(rng.normal(size=x.shape) * np.sqrt(2 / np.prod(x.shape[:-1])),
                           jnp.float32)

    flat = flax.traverse_util.flatten_dict(shapes)
    return flax.traverse_util.unflatten_dict({k: leaf(k, v) for k, v in flat.items()})


def zeros(model, size):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *size, 3)))["params"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def images(size, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(1, *size, 3)), jnp.float32)


def crops(image, size, cells):
    """The size x size crops at (32i, 32j), batched, for i, j < cells."""
    return jnp.concatenate([image[:, 32 * i:32 * i + size, 32 * j:32 * j + size]
                            for i in range(cells) for j in range(cells)])


def test_classifier_has_real_vgg16_geometry():
    shapes = jax.eval_shape(models_classifier.VGG16Classifier().init, jax.random.key(0),
                            jnp.zeros((1, 224, 224, 3)))["params"]
    convs = [n for n in shapes if n.startswith("conv")]
    assert len(convs) == 13 and all(shapes[n]["kernel"].shape[:2] == (3, 3) for n in convs)
    assert shapes["fc6"]["kernel"].shape == (7 * 7 * 512, 4096)
    assert shapes["fc7"]["kernel"].shape == (4096, 4096)
    assert shapes["fc8"]["kernel"].shape == (4096, 1000)
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)) == 138_357_544  # VGG16


def test_384_input_gives_6x6_map_and_224_gives_the_classifier_output():
    classifier = models_classifier.VGG16Classifier(CLASSES, WIDTH)
    net = models_classifier.ConvolutionalVGG16(CLASSES, WIDTH)
    params = make_params(classifier, (224, 224))
    conv_params = models_classifier.convolutionalize_params(params)
    assert conv_params["fc6"]["kernel"].shape == (7, 7, 32, 256)
    assert conv_params["fc8"]["kernel"].shape == (1, 1, 256, CLASSES)
    out = jax.eval_shape(net.apply, {"params": conv_params}, images((384, 384)))
    assert out.shape == (1, 6, 6, CLASSES)
    x = images((224, 224))
    expected = np.asarray(classifier.apply({"params": params}, x))
    scores = np.asarray(net.apply({"params": conv_params}, x))
    assert scores.shape == (1, 1, 1, CLASSES)
    np.testing.assert_allclose(scores[:, 0, 0], expected, rtol=1e-5, atol=1e-5)


def test_unpadded_score_cells_equal_the_classifier_on_crops():
    # Without padding, the 404x404 crop at (32i, 32j) is exactly cell (i, j)'s window.
    classifier = models_classifier.VGG16Classifier(CLASSES, WIDTH, padded=False)
    params = make_params(classifier, (404, 404))
    x = images((564, 564))
    scores = models_classifier.ConvolutionalVGG16(CLASSES, WIDTH, padded=False).apply(
        {"params": models_classifier.convolutionalize_params(params)}, x)
    assert scores.shape == (1, 6, 6, CLASSES)
    expected = classifier.apply({"params": params}, crops(x, 404, 6)).reshape(1, 6, 6, CLASSES)
    scale = np.abs(np.asarray(expected)).max()
    assert scale > 1e-2
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5 * scale)


def test_padded_crops_match_only_where_padding_cannot_reach():
    classifier = models_classifier.VGG16Classifier(CLASSES, WIDTH)
    net = models_classifier.ConvolutionalVGG16(CLASSES, WIDTH)
    params = make_params(classifier, (224, 224))
    conv_params = models_classifier.convolutionalize_params(params)
    x = images((384, 384))
    only_conv5_3 = lambda mdl, _: mdl.name == "conv5_3"  # noqa: E731

    def pool5(inputs):
        _, state = net.apply({"params": conv_params}, inputs,
                             capture_intermediates=only_conv5_3)
        conv5_3 = jax.nn.relu(state["intermediates"]["conv5_3"]["__call__"][0])
        return np.asarray(flax.linen.max_pool(conv5_3, (2, 2), strides=(2, 2)))

    full, windows = pool5(x), pool5(crops(x, 224, 6)).reshape(6, 6, 7, 7, -1)
    assert full.shape[1:3] == (12, 12)
    for i in range(6):
        for j in range(6):
            window = full[0, i:i + 7, j:j + 7]
            # centre cell: its 212-pixel receptive field and the padding's reach stay inside
            np.testing.assert_allclose(windows[i, j, 3, 3], window[3, 3], rtol=1e-5, atol=1e-6)
            # the outer 3 cells on each side see the crop's zero padding
            assert np.abs(windows[i, j] - window).max() > 1e-3 * np.abs(window).max()
    # ...which fc6 reads, so no score cell equals the classifier's output on its crop.
    scores = np.asarray(net.apply({"params": conv_params}, x))[0]
    expected = np.asarray(classifier.apply({"params": params}, crops(x, 224, 6)))
    diff = np.abs(scores.reshape(36, CLASSES) - expected).max(axis=1)
    assert np.all(diff > 1e-3 * np.abs(expected).max())


def test_classifier_rejects_other_sizes():
    with pytest.raises(ValueError, match="7x7 pool5"):
        jax.eval_shape(models_classifier.VGG16Classifier(width=WIDTH).init, jax.random.key(0),
                       jnp.zeros((1, 256, 224, 3)))
    with pytest.raises(ValueError, match="pool5 >= 7x7"):  # 192 -> 96 -> 48 -> 24 -> 12 -> 6 rows
        jax.eval_shape(models_classifier.ConvolutionalVGG16(width=WIDTH).init, jax.random.key(0),
                       jnp.zeros((1, 192, 224, 3)))
    with pytest.raises(ValueError, match="fc6 kernel"):
        models_classifier.convolutionalize_params({"fc6": {"kernel": np.zeros((50, 8))}})


def test_fcn_backbone_from_classifier_computes_the_same_fc7():
    classifier = models_classifier.VGG16Classifier(21, WIDTH)
    params = make_params(classifier, (224, 224))
    fcn = models_fcn.FCN32s(geometry="same", width=WIDTH)
    template = zeros(fcn, (32, 32))
    fcn_params = models_classifier.fcn_params_from_classifier(params, template)
    np.testing.assert_array_equal(fcn_params["backbone"]["conv4_2"]["kernel"],
                                  params["conv4_2"]["kernel"])
    np.testing.assert_array_equal(fcn_params["score_fr"]["kernel"], 0)
    assert not np.any(template["backbone"]["fc6"]["kernel"])  # the template is not modified
    # "same" fc6 pads 7x7 pool5 by 3, so its centre cell reads exactly the classifier's window.
    x = images((224, 224))
    _, state = classifier.apply({"params": params}, x,
                                capture_intermediates=lambda mdl, _: mdl.name == "fc7")
    fc7 = jax.nn.relu(state["intermediates"]["fc7"]["__call__"][0])
    feats = vgg.VGG16("same", WIDTH).apply({"params": fcn_params["backbone"]}, x)
    np.testing.assert_allclose(feats["fc7"][:, 3, 3], fc7, rtol=1e-5, atol=1e-5)

    with_fc8 = models_classifier.fcn_params_from_classifier(params, template, use_fc8=True)
    np.testing.assert_array_equal(with_fc8["score_fr"]["kernel"][0, 0], params["fc8"]["kernel"])
    np.testing.assert_array_equal(with_fc8["score_fr"]["bias"], params["fc8"]["bias"])


def test_fcn_params_from_classifier_is_strict():
    fcn = models_fcn.FCN8s(num_classes=21, width=WIDTH)
    template = jax.eval_shape(fcn.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    wide = zeros(models_classifier.VGG16Classifier(21, 2 * WIDTH), (224, 224))
    with pytest.raises(ValueError, match="backbone/conv1_1/"):
        models_classifier.fcn_params_from_classifier(wide, template)
    other_classes = zeros(models_classifier.VGG16Classifier(1000, WIDTH), (224, 224))
    models_classifier.fcn_params_from_classifier(other_classes, template)  # fc8 unused: fine
    with pytest.raises(ValueError, match=r"score_fr/.*\(21,?\)"):
        models_classifier.fcn_params_from_classifier(other_classes, template, use_fc8=True)


def test_largest_object_class_is_the_biggest_region_not_the_biggest_class_area():
    label = np.zeros((12, 12), np.uint8)
    label[0:3, 0:3] = 8    # two cats of 9 pixels (18 in all)...
    label[8:11, 8:11] = 8
    label[0:4, 6:10] = 12  # ...lose to one dog of 16
    label[11, :] = label[:, 11] = 255  # 23 ignore pixels: never an object
    assert flows_classifier.largest_object_class(label) == 12
    label[3:6, 3:6] = 8    # a third cat touching the first only at a corner: 4-connected, still 9 each
    assert flows_classifier.largest_object_class(label) == 12
    label[label == 12] = 0
    assert flows_classifier.largest_object_class(label) == 8
    label[6:9, 0:3] = 3    # a 9-pixel bird ties with the 9-pixel cats: the lower class id wins
    assert flows_classifier.largest_object_class(label) == 3
    assert flows_classifier.largest_object_class(np.full((4, 4), 255, np.uint8)) == 0
    assert flows_classifier.largest_object_class(np.zeros((4, 4), np.uint8)) == 0


def test_classifier_input_keeps_scale_and_centres_or_shifts():
    image = np.full((40, 30, 3), (200, 100, 50), np.uint8)
    centred = flows_classifier.classifier_input(image, 64, "caffe_bgr")
    expected = np.array([50, 100, 200], np.float32) - np.array([104.00698793, 116.66876762, 122.67891434], np.float32)
    inside = np.abs(centred).sum(-1) > 0
    rows, cols = np.nonzero(inside)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 51, 17, 46)  # 40x30 in the middle, not resized
    np.testing.assert_allclose(centred[20, 20], expected, rtol=1e-6)
    shifted = flows_classifier.classifier_input(image, 64, "caffe_bgr", np.random.default_rng(0))
    assert (np.abs(shifted).sum(-1) > 0).sum() == 40 * 30
    large = flows_classifier.classifier_input(np.zeros((128, 64, 3), np.uint8), 64, "caffe_bgr")  # shrunk to 64x32
    assert (np.abs(large).sum(-1) > 0).sum() == 64 * 32


def test_classifier_predictions_pad_the_last_batch_and_keep_the_order():
    cfg = pipeline_demo.get_config().classifier
    cfg.update(batch_size=8)
    cfg.normalization = "caffe_bgr"
    model = models_classifier.VGG16Classifier(num_classes=21, width=WIDTH)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))["params"]
    rng = np.random.default_rng(0)  # He-scaled random weights and biases: varied predictions, nothing compiled
    params = jax.tree.map(lambda p: rng.standard_normal(p.shape, np.float32) * np.sqrt(2 / np.prod(p.shape[:-1]))
                          if len(p.shape) > 1 else 0.1 * rng.standard_normal(p.shape, np.float32), shapes)
    examples = [(rng.integers(0, 256, (int(rng.integers(60, 200)), int(rng.integers(60, 200)), 3), dtype=np.uint8), 0)
                for _ in range(9)]  # a full batch of 8 and a padded one
    mesh = parallel.create_mesh()
    predicted = flows_classifier.classifier_predictions(model, parallel.replicate(params, mesh), examples, cfg, mesh)
    images = np.stack([flows_classifier.classifier_input(image, 224, "caffe_bgr") for image, _ in examples])
    direct = np.asarray(jnp.argmax(jax.jit(model.apply)({"params": params}, images), -1)).tolist()
    assert predicted.tolist() == direct
    assert len(set(direct)) > 1  # the random classifier tells the images apart, so order matters
