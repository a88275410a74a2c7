"""Tests for fcn_jax.core.losses: golden values, ignore-label invariants, dtypes."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax.core import losses


def _numpy_cross_entropy(logits, labels, ignore_label=255):
    """Independent float64 reference: summed NLL over valid pixels, and their count."""
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    log_probs = x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    valid = labels != ignore_label
    nll = -np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return nll[valid].sum(), int(valid.sum())


def test_uniform_logits_give_log_k_per_pixel():
    k = 21
    logits = jnp.full((2, 3, 4, k), 0.7, jnp.float32)
    labels = jnp.array(np.random.default_rng(0).integers(0, k, (2, 3, 4)), jnp.int32)
    labels = labels.at[0, 0, :].set(255)  # 4 ignored pixels -> 20 valid
    total, n = losses.pixel_cross_entropy(logits, labels, reduction="sum")
    mean, n_mean = losses.pixel_cross_entropy(logits, labels, reduction="mean")
    assert int(n) == int(n_mean) == 20
    assert n.dtype == jnp.int32
    np.testing.assert_allclose(float(total), 20 * math.log(21), rtol=1e-6)
    np.testing.assert_allclose(float(mean), math.log(21), rtol=1e-6)


def test_hand_computed_two_class_logits():
    # logits (0, log 3) -> p = (1/4, 3/4): label 0 costs log 4, label 1 costs log(4/3).
    logits = jnp.tile(jnp.array([0.0, math.log(3.0)], jnp.float32), (1, 1, 3, 1))
    labels = jnp.array([[[0, 1, 255]]], jnp.int32)
    total, n = losses.pixel_cross_entropy(logits, labels, reduction="sum")
    mean, _ = losses.pixel_cross_entropy(logits, labels)  # "mean" is the default
    assert int(n) == 2
    np.testing.assert_allclose(float(total), math.log(4) + math.log(4 / 3), rtol=1e-6)
    np.testing.assert_allclose(float(mean), (math.log(4) + math.log(4 / 3)) / 2, rtol=1e-6)


def test_matches_numpy_reference_and_sum_is_mean_times_count():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (3, 5, 7, 6)).astype(np.float32)
    labels = rng.integers(0, 6, (3, 5, 7)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = 255
    want_sum, want_n = _numpy_cross_entropy(logits, labels)
    fn = jax.jit(losses.pixel_cross_entropy, static_argnames=("reduction", "ignore_label"))
    total, n = fn(logits, labels, reduction="sum")
    mean, _ = fn(logits, labels, reduction="mean")
    assert int(n) == want_n
    np.testing.assert_allclose(float(total), want_sum, rtol=1e-5)
    np.testing.assert_allclose(float(mean), want_sum / want_n, rtol=1e-5)
    np.testing.assert_allclose(float(total), float(mean) * int(n), rtol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_ignored_pixels_change_neither_loss_nor_gradient(reduction):
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(2, 4, 4, 5)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 5, (2, 4, 4)), jnp.int32)
    ignored = jnp.asarray(rng.random((2, 4, 4)) < 0.4)
    labels = jnp.where(ignored, 255, labels)
    loss_fn = functools.partial(losses.pixel_cross_entropy, reduction=reduction)

    def loss_only(x):
        return loss_fn(x, labels)[0]

    # Arbitrary (even huge) logits on ignored pixels leave loss and gradient unchanged.
    perturbed = jnp.where(ignored[..., None], 1e4 * jnp.asarray(rng.normal(size=logits.shape)), logits)
    loss, grad = jax.value_and_grad(loss_only)(logits)
    loss_p, grad_p = jax.value_and_grad(loss_only)(perturbed)
    assert float(loss) == float(loss_p)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(grad_p))
    # Gradient is exactly zero at ignored pixels and non-zero elsewhere.
    g = np.asarray(grad)
    ign = np.asarray(ignored)
    assert np.all(g[ign] == 0.0)
    assert np.all(np.abs(g[~ign]).sum(axis=-1) > 0)
    # Even inf/NaN logits on ignored pixels (e.g. bf16 overflow in padding) do not leak.
    for bad in (jnp.inf, -jnp.inf, jnp.nan):
        poisoned = jnp.where(ignored[..., None], bad, logits)
        loss_b, grad_b = jax.value_and_grad(loss_only)(poisoned)
        assert float(loss_b) == float(loss)
        np.testing.assert_array_equal(np.asarray(grad_b), g)
    # Softmax gradient at a valid pixel: (p - onehot) / normaliser.
    p = np.asarray(jax.nn.softmax(logits))
    onehot = np.eye(5)[np.where(ign, 0, np.asarray(labels))]
    scale = 1.0 if reduction == "sum" else 1.0 / (~ign).sum()
    np.testing.assert_allclose(g[~ign], ((p - onehot) * scale)[~ign], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_all_ignored_gives_zero_loss_and_gradient_not_nan(reduction):
    logits = jnp.ones((1, 2, 2, 3), jnp.float32)
    labels = jnp.full((1, 2, 2), 255, jnp.int32)
    loss, n = losses.pixel_cross_entropy(logits, labels, reduction=reduction)
    grad = jax.grad(lambda x: losses.pixel_cross_entropy(x, labels, reduction=reduction)[0])(logits)
    assert float(loss) == 0.0 and int(n) == 0
    assert np.all(np.asarray(grad) == 0.0)


def test_custom_ignore_label():
    logits = jnp.zeros((1, 1, 3, 4), jnp.float32)
    labels = jnp.array([[[0, 3, 1]]], jnp.int32)
    total, n = losses.pixel_cross_entropy(logits, labels, reduction="sum", ignore_label=3)
    assert int(n) == 2
    np.testing.assert_allclose(float(total), 2 * math.log(4), rtol=1e-6)


def test_bf16_logits_give_float32_loss_close_to_fp32():
    rng = np.random.default_rng(3)
    logits32 = jnp.asarray(rng.normal(0, 4, (2, 8, 8, 21)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 21, (2, 8, 8)), jnp.int32)
    logits16 = logits32.astype(jnp.bfloat16)
    loss16, _ = losses.pixel_cross_entropy(logits16, labels)
    loss32, _ = losses.pixel_cross_entropy(logits32, labels)
    # Same rounded inputs in fp32: identical computation, so (near) exact.
    loss16_in32, _ = losses.pixel_cross_entropy(logits16.astype(jnp.float32), labels)
    assert loss16.dtype == jnp.float32
    np.testing.assert_allclose(float(loss16), float(loss16_in32), rtol=1e-6)
    # Against unrounded fp32 logits: only the bf16 input rounding (~2**-8 relative) differs.
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=2e-2)
    grad16 = jax.grad(lambda x: losses.pixel_cross_entropy(x, labels)[0])(logits16)
    assert grad16.dtype == jnp.bfloat16


def test_out_of_range_label_gives_nan_loss():
    logits = jnp.zeros((1, 1, 2, 3), jnp.float32)
    labels = jnp.array([[[1, 7]]], jnp.int32)  # 7 >= K=3 and is not the ignore label
    loss, _ = losses.pixel_cross_entropy(logits, labels)
    assert math.isnan(float(loss))


def test_uint8_labels_accepted():
    logits = jnp.zeros((1, 2, 2, 21), jnp.float32)
    labels = jnp.array([[[0, 20], [255, 255]]], jnp.uint8)
    total, n = losses.pixel_cross_entropy(logits, labels, reduction="sum")
    assert int(n) == 2
    np.testing.assert_allclose(float(total), 2 * math.log(21), rtol=1e-6)


@pytest.mark.parametrize("logits_shape,labels_shape,labels_dtype,kwargs,match", [
    ((1, 2, 2, 3), (1, 2, 2), jnp.int32, {"reduction": "avg"}, "reduction"),
    ((1, 2, 2, 3), (1, 2, 3), jnp.int32, {}, "shape"),
    ((1, 2, 2, 3), (1, 2, 2), jnp.float32, {}, "labels must be integers"),
])
def test_bad_input_raises(logits_shape, labels_shape, labels_dtype, kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.pixel_cross_entropy(jnp.zeros(logits_shape), jnp.zeros(labels_shape, labels_dtype), **kwargs)


def test_integer_logits_rejected():
    with pytest.raises(ValueError, match="logits must be floating"):
        losses.pixel_cross_entropy(jnp.zeros((1, 2, 2, 3), jnp.int32), jnp.zeros((1, 2, 2), jnp.int32))


def test_multi_head_loss_is_the_sum_of_each_heads_loss_on_its_channels_and_labels():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2, 3, 4, 7)).astype(np.float32)  # head a: 4 classes, head b: 3
    labels = np.stack([rng.integers(0, 4, (2, 3, 4)), rng.integers(0, 3, (2, 3, 4))], -1)
    labels[0, 0, 0] = (255, 1)
    labels[1, 2, 3] = (2, 255)
    for reduction in ("sum", "mean"):
        loss, num_valid = losses.multi_head_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), (4, 3),
                                                          reduction=reduction)
        parts = [_numpy_cross_entropy(logits[..., :4], labels[..., 0]), _numpy_cross_entropy(logits[..., 4:],
                                                                                              labels[..., 1])]
        expected = sum(s / (n if reduction == "mean" else 1) for s, n in parts)
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
        assert int(num_valid) == parts[0][1] == 23
    one, n = losses.multi_head_cross_entropy(jnp.asarray(logits), jnp.asarray(labels[..., 0]), (7,), reduction="sum")
    np.testing.assert_allclose(float(one), _numpy_cross_entropy(logits, labels[..., 0])[0], rtol=1e-5)
    with pytest.raises(ValueError, match=r"2 heads need labels \(N, H, W, 2\)"):
        losses.split_heads(jnp.asarray(logits), jnp.asarray(labels[..., 0]), (4, 3))
