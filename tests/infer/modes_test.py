"""infer/modes.py: sliding windows and test-time augmentation, against direct per-window / per-pass computations."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evaluate_test import NUM_CLASSES, caffe_bgr, random_params, save_converted_weights
from PIL import Image

from fcn_jax import predict
from fcn_jax.core import metrics
from fcn_jax.infer import evaluation, modes, steps
from fcn_jax.infer import network as infer_network


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    params = random_params("fcn8s", seed=5)
    weights = save_converted_weights(tmp_path_factory.mktemp("w") / "converted", params)
    loaded = infer_network.load_network(weights, {"geometry": "same"})
    return loaded, params, weights, jax.jit(loaded.model.apply)


def _logits(forward, params, x):
    return np.asarray(forward({"params": params}, jnp.asarray(x)[None]))[0]


def _image(seed, h, w):
    return caffe_bgr(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_window_starts_cover_the_image_and_end_flush():
    assert modes.window_starts(10, 4, 3) == [0, 3, 6]
    assert modes.window_starts(10, 4, 4) == [0, 4, 6]
    assert modes.window_starts(8, 4, 4) == [0, 4]
    assert modes.window_starts(3, 4, 2) == [0]


def _logit_run(net, rows):
    """A Network's logits of a list of same-shape images (modes.LogitSteps with its params); .steps: the compiled
    steps."""
    logit_steps = modes.LogitSteps(net.model.apply, net.mesh, rows)
    run = functools.partial(logit_steps, net.params)
    run.steps = logit_steps.steps
    return run


def test_a_window_covering_the_image_is_whole_image_inference(network):
    net, params, _, forward = network
    x = _image(0, 37, 45)
    run = _logit_run(net, 1)
    np.testing.assert_array_equal(modes.sliding_logits(run, x, (37, 45), None), run([x])[0])
    np.testing.assert_allclose(run([x])[0], _logits(forward, params, x), rtol=1e-5, atol=1e-5)
    padded = np.pad(x, ((0, 64 - 37), (0, 64 - 45), (0, 0)))  # a larger window: the image padded with the mean
    np.testing.assert_allclose(modes.sliding_logits(run, x, (64, 64), None), _logits(forward, params, padded)[:37, :45],
                               rtol=1e-5, atol=1e-5)


def test_overlapping_windows_average_each_pixels_windows_on_odd_sizes(network):
    net, params, _, forward = network
    x = _image(1, 41, 53)
    run = _logit_run(net, 8)
    got = modes.sliding_logits(run, x, (32, 32), (20, 24))
    total, count = np.zeros(got.shape), np.zeros(got.shape[:2] + (1,))
    for top in (0, 9):  # 41 - 32 = 9; stride 20 would pass it, so the last window ends flush
        for left in (0, 21):  # 53 - 32 = 21
            total[top:top + 32, left:left + 32] += _logits(forward, params, x[top:top + 32, left:left + 32])
            count[top:top + 32, left:left + 32] += 1
    assert count.min() >= 1 and count.max() == 4
    np.testing.assert_allclose(got, total / count, rtol=1e-5, atol=1e-5)
    assert run.steps.compilations == 1  # one window shape, whatever the image


def test_flip_and_scales_average_their_passes(network):
    net, params, _, forward = network
    run = _logit_run(net, 1)
    x = _image(2, 32, 40)
    np.testing.assert_array_equal(modes.image_logits(run, x, modes.Mode(scales=(1.0,))), run([x])[0])
    symmetric = np.concatenate([x[:, :20], x[:, :20][:, ::-1]], axis=1)  # its own mirror image
    flipped = modes.image_logits(run, symmetric, modes.Mode(flip=True))
    plain = _logits(forward, params, symmetric)
    np.testing.assert_allclose(flipped, (plain + plain[:, ::-1]) / 2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flipped, flipped[:, ::-1], rtol=1e-5, atol=1e-5)  # symmetric in, symmetric out
    two = modes.image_logits(run, x, modes.Mode(scales=(1.0, 1.5)))
    big = np.asarray(jax.image.resize(jnp.asarray(x), (48, 60, 3), "bilinear"))
    back = np.asarray(jax.image.resize(jnp.asarray(_logits(forward, params, big)), (32, 40, NUM_CLASSES), "bilinear"))
    np.testing.assert_allclose(two, (_logits(forward, params, x) + back) / 2, rtol=1e-4, atol=1e-4)


def test_head_masks_of_several_heads_are_each_heads_argmax():
    logits = np.random.default_rng(4).normal(size=(5, 6, 7)).astype(np.float32)
    got = steps.head_masks(logits, (("sem", 4), ("geo", 3)))
    assert got.shape == (5, 6, 2) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], logits[..., :4].argmax(-1))
    np.testing.assert_array_equal(got[..., 1], logits[..., 4:].argmax(-1))
    np.testing.assert_array_equal(steps.head_masks(logits, (("", 7),)), logits.argmax(-1))


@pytest.mark.parametrize("fields, message", [
    ({"window": (0, 4)}, "window .* both positive"),
    ({"stride": (4, 4)}, "stride .* needs a window"),
    ({"window": (8, 8), "stride": (9, 8)}, "at most the window"),
    ({"scales": (1.0, 0.0)}, "scales .* positive"),
    ({"scales": (float("inf"),)}, "scales .* finite"),
    ({"scales": (float("nan"),)}, "scales .* finite"),
])
def test_bad_modes_are_one_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        modes.Mode(**fields)


def test_evaluate_and_predict_in_a_mode_equal_the_direct_computation(network, tmp_path):
    net, params, weights, forward = network
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((30, 41), (33, 27))]
    labels = [rng.integers(0, NUM_CLASSES, image.shape[:2]).astype(np.uint8) for image in images]
    source = [{"image": i, "label": label, "id": f"x{n}"} for n, (i, label) in enumerate(zip(images, labels))]
    mode = modes.Mode(window=(24, 24), stride=(16, 16), flip=True)
    result = evaluation.evaluate(net, source, mode=mode)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for image, label in zip(images, labels):
        logits = modes.image_logits(_logit_run(net, 1), caffe_bgr(image), mode)
        confusion += np.asarray(metrics.confusion_matrix(logits.argmax(-1), label, NUM_CLASSES))
    np.testing.assert_array_equal(result["confusion"], confusion)
    assert result["compilations"] == 1  # the window shape only

    for n, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"x{n}.png")
    args = ["--weights", weights, "--geometry", "same", "--input", str(tmp_path / "x0.png"), "--output",
            str(tmp_path / "out"), "--window", "24", "24", "--stride", "16", "16", "--flip"]
    assert predict.main(args) == 0
    expected = modes.image_logits(_logit_run(net, 1), caffe_bgr(images[0]), mode).argmax(-1)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "x0.png")), expected)
    assert predict.main(args[:-7] + ["--stride", "8", "8"]) == 1  # a stride without a window: one line
