"""Tests for fcn_jax.core.losses: golden values, ignore-label invariants, dtypes."""
import dataclasses
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
        loss, num_valid = losses.multi_head_loss(jnp.asarray(logits), jnp.asarray(labels), (4, 3),
                                                 reduction=reduction)
        parts = [_numpy_cross_entropy(logits[..., :4], labels[..., 0]), _numpy_cross_entropy(logits[..., 4:],
                                                                                              labels[..., 1])]
        expected = sum(s / (n if reduction == "mean" else 1) for s, n in parts)
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
        assert int(num_valid) == parts[0][1] == 23
    one, n = losses.multi_head_loss(jnp.asarray(logits), jnp.asarray(labels[..., 0]), (7,), reduction="sum")
    np.testing.assert_allclose(float(one), _numpy_cross_entropy(logits, labels[..., 0])[0], rtol=1e-5)
    with pytest.raises(ValueError, match=r"2 heads need labels \(N, H, W, 2\)"):
        losses.split_heads(jnp.asarray(logits), jnp.asarray(labels[..., 0]), (4, 3))


# ---- LossSpec: class weights, focal, OHEM, Dice against direct NumPy computations ----

def _numpy_loss(logits, labels, spec, reduction, ignore_label=255):
    """Float64 reference of pixel_loss, written from the definitions in LossSpec's docstring."""
    x = logits.astype(np.float64)
    probs = np.exp(x - x.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    valid = labels != ignore_label
    safe = np.where(valid, labels, 0)
    p = np.take_along_axis(probs, safe[..., None], -1)[..., 0]
    per_pixel = -np.log(p)
    weight = valid.astype(np.float64)
    if spec.class_weights:
        weight = weight * np.asarray(spec.class_weights[0])[safe]
    if spec.name == "focal":
        per_pixel = per_pixel * (1 - p) ** spec.focal_gamma
    if spec.name == "ohem":
        ranked = np.sort(p[valid])
        keep = p <= spec.ohem_threshold
        if spec.ohem_min_kept and keep[valid].sum() < spec.ohem_min_kept:
            keep = p <= ranked[min(spec.ohem_min_kept, len(ranked)) - 1]
        weight = weight * keep
    total = (weight * per_pixel)[valid].sum()
    if reduction == "mean":
        total /= weight[valid].sum()
    if spec.dice_weight:
        dice = []
        for c in range(x.shape[-1]):
            y = valid & (labels == c)
            if y.any():
                pc = probs[..., c] * valid
                dice.append(1 - 2 * (pc * y).sum() / (pc.sum() + y.sum()))
        total += spec.dice_weight * np.mean(dice) * (1 if reduction == "mean" else valid.sum())
    return total


def _random_case(seed=11, k=4, shape=(2, 5, 6)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (*shape, k)).astype(np.float32)
    labels = rng.integers(0, k, shape).astype(np.int32)
    labels[rng.random(shape) < 0.25] = 255
    return logits, labels


SPECS = {
    "weighted": losses.LossSpec(class_weights=((0.5, 2.0, 1.0, 3.0),)),
    "focal": losses.LossSpec(name="focal", focal_gamma=2.0),
    "focal_weighted": losses.LossSpec(name="focal", focal_gamma=1.5, class_weights=((1.0, 4.0, 0.5, 1.0),)),
    "ohem_threshold": losses.LossSpec(name="ohem", ohem_threshold=0.3, ohem_min_kept=0),
    "ohem_min_kept": losses.LossSpec(name="ohem", ohem_threshold=0.05, ohem_min_kept=20),
    "dice": losses.LossSpec(dice_weight=0.7),
    "dice_weighted": losses.LossSpec(dice_weight=1.0, class_weights=((1.0, 2.0, 3.0, 4.0),)),
}


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_loss_equals_a_direct_numpy_computation_with_ignore_pixels(name, reduction):
    logits, labels = _random_case()
    spec = SPECS[name]
    loss, num_valid = jax.jit(losses.pixel_loss, static_argnames=("spec", "reduction"))(
        logits, labels, spec=spec, reduction=reduction)
    assert int(num_valid) == int((labels != 255).sum())
    np.testing.assert_allclose(float(loss), _numpy_loss(logits, labels, spec, reduction), rtol=1e-5)
    grad = jax.grad(lambda x: losses.pixel_loss(x, labels, spec, reduction=reduction)[0])(jnp.asarray(logits))
    g = np.asarray(grad)
    assert np.all(np.isfinite(g))
    assert np.all(g[labels == 255] == 0.0)


def test_ohem_keeps_exactly_the_pixels_below_the_threshold_or_the_min_kept_hardest():
    logits, labels = _random_case(seed=3)
    probs = np.asarray(jax.nn.softmax(logits))
    valid = labels != 255
    p = np.take_along_axis(probs, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    below = valid & (p <= 0.3)
    kept = losses._hardest(jnp.asarray(p), jnp.asarray(valid), losses.LossSpec(name="ohem", ohem_threshold=0.3,
                                                                               ohem_min_kept=0))
    np.testing.assert_array_equal(np.asarray(kept) > 0, below)
    many = int(valid.sum()) - 3  # more than below: the many hardest, by probability
    kept = np.asarray(losses._hardest(jnp.asarray(p), jnp.asarray(valid),
                                      losses.LossSpec(name="ohem", ohem_threshold=0.3, ohem_min_kept=many))) > 0
    assert kept.sum() == many and below.sum() < many
    assert p[kept].max() <= p[valid & ~kept].min()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reduces_to_plain_cross_entropy(reduction):
    logits, labels = _random_case(seed=5)
    plain, _ = losses.pixel_cross_entropy(logits, labels, reduction=reduction)
    for spec in (losses.LossSpec(class_weights=((1.0,) * 4,)),          # weights all 1
                 losses.LossSpec(name="focal", focal_gamma=0.0),        # gamma 0
                 losses.LossSpec(name="ohem", ohem_threshold=1.0, ohem_min_kept=0),  # threshold 1
                 losses.LossSpec(name="ohem", ohem_threshold=0.01, ohem_min_kept=10**6),  # min kept >= all
                 losses.LossSpec(dice_weight=0.0)):
        loss, _ = losses.pixel_loss(logits, labels, spec, reduction=reduction)
        np.testing.assert_allclose(float(loss), float(plain), rtol=1e-6, err_msg=str(spec))


def test_class_weight_scales_only_its_pixels_and_mean_divides_by_the_weights():
    # Two pixels of class 0 and one of class 1, uniform logits: each costs log 2.
    logits = jnp.zeros((1, 1, 4, 2), jnp.float32)
    labels = jnp.array([[[0, 0, 1, 255]]], jnp.int32)
    spec = losses.LossSpec(class_weights=((1.0, 10.0),))
    total, _ = losses.pixel_loss(logits, labels, spec, reduction="sum")
    mean, _ = losses.pixel_loss(logits, labels, spec, reduction="mean")
    np.testing.assert_allclose(float(total), 12 * math.log(2), rtol=1e-6)
    np.testing.assert_allclose(float(mean), math.log(2), rtol=1e-6)  # (2 + 10) log 2 / (2 + 10)


def test_multi_head_loss_uses_each_heads_class_weights():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(1, 3, 4, 5)).astype(np.float32)  # heads of 3 and 2 classes
    labels = np.stack([rng.integers(0, 3, (1, 3, 4)), rng.integers(0, 2, (1, 3, 4))], -1).astype(np.int32)
    spec = losses.LossSpec(name="focal", class_weights=((1.0, 2.0, 3.0), (5.0, 0.5)))
    loss, _ = losses.multi_head_loss(jnp.asarray(logits), jnp.asarray(labels), (3, 2), spec, reduction="sum")
    expected = sum(_numpy_loss(logits[..., a:b], labels[..., h],
                               dataclasses.replace(spec, class_weights=(spec.class_weights[h],)), "sum")
                   for h, (a, b) in enumerate(((0, 3), (3, 5))))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


@pytest.mark.parametrize("spec,match", [
    (losses.LossSpec(name="lovasz"), "config.loss.name='lovasz': expected one of cross_entropy, focal, ohem"),
    (losses.LossSpec(class_weights=((1.0, 2.0),)), r"class weights for \[2\] classes, the model's heads have \[3\]"),
    (losses.LossSpec(focal_gamma=-1.0), "must be >= 0"),
    (losses.LossSpec(ohem_threshold=0.0), r"must be in \(0, 1\]"),
])
def test_bad_loss_settings_raise_one_line(spec, match):
    with pytest.raises(ValueError, match=match) as error:
        spec.check((3,))
    assert "\n" not in str(error.value)
