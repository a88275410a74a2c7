"""models/crf.py: mean field against a direct NumPy implementation, the reference's invariants, CRF-as-RNN
gradients through FCN and CRF against finite differences, multi-head layers and one-line errors for bad
parameters."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import base as base_config
from fcn_jax.core import losses
from fcn_jax.core.normalization import normalize
from fcn_jax.models import crf, zoo
from fcn_jax.weights import artifacts

HEIGHT, WIDTH, CLASSES = 9, 11, 3
SETTINGS = crf.CRFSettings(iterations=3, gaussian_sxy=2.0, gaussian_weight=3.0, bilateral_sxy=5.0,
                           bilateral_srgb=20.0, bilateral_weight=5.0)


def _scene(seed=0):
    """Two colour regions, logits that favour the right class with noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:HEIGHT, :WIDTH]
    truth = (xs >= WIDTH // 2).astype(int) + (ys >= 6) * (xs < 3) * 2
    colours = np.array([[30, 60, 200], [220, 180, 40], [90, 230, 90]])
    image = np.clip(colours[truth] + rng.normal(0, 10, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
    logits = (np.eye(CLASSES)[truth] * 1.0 + rng.normal(0, 1.0, (HEIGHT, WIDTH, CLASSES))).astype(np.float32)
    return logits, image, truth


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _numpy_mean_field(logits, image, settings, iterations):
    """Krähenbühl & Koltun's mean field written out: dense kernels, symmetric normalisation, Potts."""
    ys, xs = np.mgrid[:HEIGHT, :WIDTH]
    position = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float64)
    colour = image.reshape(-1, 3).astype(np.float64)
    unary = logits.reshape(-1, CLASSES).astype(np.float64)
    kernels = []
    for features, weight in ((position / settings.gaussian_sxy, settings.gaussian_weight),
                             (np.concatenate([position / settings.bilateral_sxy, colour / settings.bilateral_srgb], 1),
                              settings.bilateral_weight)):
        k = np.exp(-0.5 * ((features[:, None] - features[None]) ** 2).sum(-1))
        norm = 1 / np.sqrt(k.sum(1))
        kernels.append(weight * norm[:, None] * k * norm[None, :])
    out = unary
    for _ in range(iterations):
        q = _softmax(out)
        message = sum(k @ q for k in kernels)
        out = unary - message @ (1 - np.eye(CLASSES))
    return out.reshape(HEIGHT, WIDTH, CLASSES)


@pytest.mark.parametrize("iterations", [1, 3])
def test_exact_mean_field_equals_a_direct_numpy_implementation(iterations):
    logits, image, _ = _scene()
    settings = dataclasses.replace(SETTINGS, iterations=iterations)
    ours = crf.crf_logits(jnp.asarray(logits), jnp.asarray(image), settings, exact=True)
    np.testing.assert_allclose(ours, _numpy_mean_field(logits, image, settings, iterations), rtol=1e-4, atol=1e-4)


def test_lattice_mean_field_is_within_the_filter_error_of_exact_and_cleans_the_noise():
    logits, image, truth = _scene()
    lattice = _softmax(np.asarray(jax.jit(crf.crf_logits, static_argnums=2)(logits, image, SETTINGS)))
    exact = _softmax(_numpy_mean_field(logits, image, SETTINGS, SETTINGS.iterations))
    assert np.abs(lattice - exact).max() < 0.1
    assert (lattice.argmax(-1) == exact.argmax(-1)).mean() > 0.97
    assert (lattice.argmax(-1) == truth).mean() > (logits.argmax(-1) == truth).mean() + 0.1


def test_zero_pairwise_weights_give_the_softmax_of_the_unaries():
    logits, image, _ = _scene(1)
    off = dataclasses.replace(SETTINGS, gaussian_weight=0.0, bilateral_weight=0.0)
    np.testing.assert_array_equal(crf.crf_logits(jnp.asarray(logits), jnp.asarray(image), off), logits)
    layer = crf.DenseCRF(SETTINGS)
    params = {"gaussian_weight": jnp.zeros(()), "bilateral_weight": jnp.zeros(()),
              "compatibility": jnp.asarray(crf.potts(CLASSES))}
    images = jnp.asarray(normalize(image, "caffe_bgr"))[None]
    out = jax.jit(layer.apply)({"params": params}, jnp.asarray(logits)[None], images)
    np.testing.assert_allclose(jax.nn.softmax(out[0]), _softmax(logits), atol=1e-6)


def test_rgb_from_input_inverts_both_normalisations():
    _, image, _ = _scene(4)
    for normalization in ("caffe_bgr", "imagenet_rgb"):
        rgb = crf.rgb_from_input(jnp.asarray(normalize(image, normalization)), normalization)
        np.testing.assert_allclose(rgb, image, atol=1e-3)


def test_a_multi_head_fcn_gets_one_crf_per_head_and_keeps_its_param_names():
    heads = (("sem", 3), ("geo", 2))
    config = base_config.get_config()
    config.model.update(variant="fcn32s", geometry="same", width=1 / 32, heads=heads)
    config.model.crf.update(SETTINGS.as_dict(), enabled=True)
    model = zoo.from_settings(config.model, "caffe_bgr")  # what training and inference build
    assert isinstance(model, crf.WithCRF) and model.heads == heads and model.base.heads == heads
    images = jnp.asarray(normalize(_scene(5)[1], "caffe_bgr"))[None]
    template = zoo.param_template(model)
    assert set(template) == set(zoo.param_template(model.base)) | {"crf", "crf_geo"}
    assert template["crf_geo"]["compatibility"].shape == (2, 2)
    params = jax.tree.map(lambda x: jnp.asarray(np.random.default_rng(x.size).normal(0, 0.1, x.shape), x.dtype),
                          template)
    params["crf"] = {"gaussian_weight": 3.0, "bilateral_weight": 5.0, "compatibility": crf.potts(3)}
    params["crf_geo"] = {"gaussian_weight": 1.0, "bilateral_weight": 2.0, "compatibility": crf.potts(2) * 2}
    fcn_params = {k: v for k, v in params.items() if not k.startswith("crf")}

    @jax.jit
    def outputs(params):
        raw = model.base.apply({"params": fcn_params}, images)
        alone = [crf.DenseCRF(SETTINGS).apply({"params": params[head]}, raw[..., start:stop], images)
                 for head, (start, stop) in (("crf", (0, 3)), ("crf_geo", (3, 5)))]
        return model.apply({"params": params}, images), jnp.concatenate(alone, -1), raw

    out, alone, raw = outputs(params)
    np.testing.assert_allclose(out, alone, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(out) - np.asarray(raw)).max() > 1e-3  # the CRF did something


def test_crf_as_rnn_gradients_match_finite_differences_end_to_end_and_the_layer_comes_back_from_a_run_config(
        tmp_path):
    """The model config.model.crf builds, its training loss differentiated through the FCN and the CRF: gradients
    of the CRF's params and of the FCN's against finite differences (one compilation)."""
    config = base_config.get_config()
    config.model.update(variant="fcn32s", geometry="same", width=1 / 32, num_classes=CLASSES, dropout_rate=0.0)
    config.model.crf.update(SETTINGS.as_dict(), enabled=True, iterations=2)
    model = zoo.from_settings(config.model, config.data.normalization)
    params = zoo.param_template(model, jax.random.PRNGKey(0))
    params["score_fr"]["kernel"] = np.random.default_rng(2).normal(  # zero-initialised: flat logits otherwise
        0, 0.3, params["score_fr"]["kernel"].shape).astype(np.float32)
    _, image, truth = _scene(6)
    images, labels = jnp.asarray(normalize(image, "caffe_bgr"))[None], jnp.asarray(truth)[None]

    def loss(params):
        logits = model.apply({"params": params}, images, train=True)
        return losses.pixel_cross_entropy(logits, labels, reduction="mean")[0]

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    _, grads = value_and_grad(params)
    rng = np.random.default_rng(3)
    for layer, name in (("crf", "gaussian_weight"), ("crf", "bilateral_weight"), ("crf", "compatibility"),
                        ("score_fr", "bias")):
        value, eps = params[layer][name], 1e-2
        direction = rng.normal(size=np.shape(value)).astype(np.float32)

        def loss_at(sign):
            moved = {**params, layer: {**params[layer], name: value + sign * eps * direction}}
            return float(value_and_grad(moved)[0])

        numeric = (loss_at(1) - loss_at(-1)) / (2 * eps)
        analytic = float(np.sum(np.asarray(grads[layer][name]) * direction))
        assert abs(analytic) > 1e-4, (layer, name)  # the gradient reaches the param
        assert abs(numeric - analytic) <= 2e-2 * max(abs(numeric), 1e-2), (layer, name, numeric, analytic)
    assert value_and_grad._cache_size() == 1
    artifacts.write_json(str(tmp_path / "config.json"), config.to_dict())
    loaded = zoo.from_settings(artifacts.model_settings(str(tmp_path)))  # inference rebuilds the layer
    assert isinstance(loaded, crf.WithCRF) and loaded.settings == dataclasses.replace(SETTINGS, iterations=2)


@pytest.mark.parametrize("values,message", [
    ({"iterations": 0}, "iterations must be a whole number >= 1"),
    ({"iterations": 2.5}, "iterations must be a whole number >= 1"),
    ({"bilateral_sxy": -3.0}, "bilateral_sxy must be > 0"),
    ({"bilateral_srgb": 0.0}, "bilateral_srgb must be > 0"),
    ({"gaussian_weight": -1.0}, "gaussian_weight must be >= 0"),
    ({"gaussian_sxy": float("nan")}, "gaussian_sxy must be a finite number"),
    ({"srgb": 3.0}, "unknown CRF parameter"),
])
def test_bad_parameters_are_one_line_errors(values, message):
    with pytest.raises(ValueError, match=message) as error:
        crf.CRFSettings.from_mapping(values)
    assert "\n" not in str(error.value)


def test_parse_puts_name_values_on_top_of_a_base():
    base = crf.CRFSettings(iterations=10)
    assert crf.CRFSettings.parse("bilateral_srgb=3, gaussian_weight=1", base) == dataclasses.replace(
        base, bilateral_srgb=3.0, gaussian_weight=1.0)
    for text, message in (("iterations", "not name=value"), ("iterations=ten", "not a number")):
        with pytest.raises(ValueError, match=message):
            crf.CRFSettings.parse(text)


def test_widths_too_small_for_the_image_are_one_error():
    with pytest.raises(ValueError, match="CRF bilateral kernel on a 375x500 image: .*use larger kernel widths"):
        crf.kernel_widths(dataclasses.replace(SETTINGS, bilateral_sxy=0.1, bilateral_srgb=0.1), 375, 500)
