"""Tests for fcn_jax.models.winograd: F(2x2, 3x3) and F(4x4, 3x3) equal lax.conv_general_dilated, values and
gradients, within the stated tolerance: max |difference| <= 1e-4 x max |direct|, for outputs, input gradients and
kernel gradients."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fcn_jax.models import winograd, zoo

DN = ("NHWC", "HWIO", "NHWC")
TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def f4_on_small_maps(monkeypatch):
    """The tests' maps are small: keep F(4x4) where it is asked for (winograd.F4_MIN_PIXELS would pick F(2x2))."""
    monkeypatch.setattr(winograd, "F4_MIN_PIXELS", 0)


def _relative(a, b):
    """max |a - b| / max |b|; 0 where both are all zeros (frozen statistics' gradients)."""
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), jnp.finfo(jnp.float32).tiny))


def _check(x, w, padding, rate=1, m=4):
    """Winograd against the direct convolution at HIGHEST precision: output, d/dx and d/dw of a non-linear loss."""
    direct = functools.partial(lax.conv_general_dilated, window_strides=(1, 1), padding=padding,
                               rhs_dilation=(rate, rate), dimension_numbers=DN, precision=lax.Precision.HIGHEST)
    fast = functools.partial(winograd.conv, window_strides=(1, 1), padding=padding, rhs_dilation=(rate, rate),
                             dimension_numbers=DN, m=m)
    y, reference = jax.jit(fast)(x, w), direct(x, w)
    assert y.shape == reference.shape and _relative(y, reference) <= TOLERANCE
    grad = lambda conv: jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), (0, 1)))(x, w)  # noqa: E731
    for a, b in zip(grad(fast), grad(direct)):
        assert _relative(a, b) <= TOLERANCE
    return _relative(y, reference)


def _data(shape, cin, cout, seed=0):
    rs = np.random.RandomState(seed)
    x = jnp.asarray(rs.randn(*shape, cin), jnp.float32)
    w = jnp.asarray(rs.randn(3, 3, cin, cout) * np.sqrt(2 / (9 * cin)), jnp.float32)
    return x, w


# VGG16's (C_in, C_out) pairs at width 1/16 and the ResNets' bottleneck widths at width_per_group 8 (the heads'
# 3x3 convs reduce 4x), on odd sizes.
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("cin, cout", [(3, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16), (16, 32), (32, 8)])
def test_equals_the_direct_convolution_on_odd_sizes(m, cin, cout):
    _check(*_data((2, 13, 11), cin, cout), ((1, 1), (1, 1)), m=m)


@pytest.mark.parametrize("m", [2, 4])
def test_padding_100_valid_uneven_and_cropping(m):
    x, w = _data((1, 9, 10), 3, 4)
    _check(x, w, ((100, 100), (100, 100)), m=m)  # conv1_1 of the caffe geometry
    _check(x, w, ((0, 0), (0, 0)), m=m)
    _check(x, w, ((3, 0), (-1, 2)), m=m)


@pytest.mark.parametrize("rate", [2, 4])
def test_dilated_convolutions_by_phases(rate):
    """The ResNets' layer3 / layer4 3x3 convolutions: dilation = padding = 2 or 4."""
    _check(*_data((2, 15, 13), 8, 8), ((rate, rate), (rate, rate)), rate=rate)


def test_full_width_accumulation_stays_within_the_tolerance():
    """512 -> 512, VGG16's conv4 / conv5 and the longest accumulation, on a small map; the error of F(4x4)
    grows with the channel count, F(2x2)'s far less."""
    x, w = _data((1, 9, 7), 512, 512)
    assert _check(x, w, ((1, 1), (1, 1)), m=4) > _check(x, w, ((1, 1), (1, 1)), m=2)


def test_what_it_does_not_cover_is_the_fallback_unchanged():
    x, w = _data((1, 9, 9), 4, 4)
    for args, kwargs in [((x, w, (2, 2), ((1, 1), (1, 1))), {}),                          # strided
                         ((x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), (1, 1), ((1, 1), (1, 1))), {}),
                         ((x, w[:1, :1], (1, 1), ((0, 0), (0, 0))), {}),                    # 1x1
                         ((x, w, (1, 1), ((2, 2), (1, 1))), {"rhs_dilation": (2, 1)})]:   # uneven dilation
        np.testing.assert_array_equal(winograd.conv(*args, dimension_numbers=DN, **kwargs),
                                      lax.conv_general_dilated(*args, dimension_numbers=DN, **kwargs))


def test_small_maps_take_f2_and_large_ones_f4(monkeypatch):
    """F(4x4)'s filter transform is 36 x C_in x C_out: below F4_MIN_PIXELS output pixels (batch x height x width)
    the convolution asked as F(4x4) runs as F(2x2), whose matmuls are 16, not 36."""
    monkeypatch.setattr(winograd, "F4_MIN_PIXELS", 2500)
    for shape, points in (((1, 60, 60), 36), ((1, 40, 40), 16), ((2, 40, 40), 36)):
        x, w = _data(shape, 4, 4)
        hlo = jax.jit(lambda x, w: winograd.conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)).lower(
            x, w).as_text()
        assert re.search(r"dot_general.*\(tensor<(\d+)x", hlo).group(1) == str(points), shape


def test_form_picks_winograd_by_input_channels():
    assert winograd.form(0, 512, 1) is None
    assert winograd.form(4, 64, 128) is None
    assert winograd.form(4, 128, 128).keywords["m"] == 4
    with pytest.raises(ValueError, match="winograd_tile 3"):
        winograd.form(3, 512, 1)
    with pytest.raises(ValueError, match="winograd_tile 5"):
        zoo.create_model("fcn8s", winograd_tile=5)


def _model_difference(variant, x, gradients=True, **settings):
    """Max relative differences of a model with every 3x3 conv by Winograd vs none: (outputs, every parameter's
    gradient) with `gradients`, else (outputs,)."""
    direct, fast = (zoo.create_model(variant, winograd_tile=tile, winograd_min_channels=1, **settings)
                    for tile in (0, 4))
    rs = np.random.RandomState(0)  # He-scaled random values of the zoo's shapes (no compiled init)
    value = lambda path, p: jnp.asarray(  # noqa: E731
        1 + rs.rand(*p.shape) if zoo.is_statistic_param(tuple(k.key for k in path))  # batch-norm statistics
        else rs.randn(*p.shape) * np.sqrt(2 / max(1, np.prod(p.shape[:-1]))), jnp.float32)
    params = {"params": jax.tree_util.tree_map_with_path(value, zoo.param_template(direct))}
    if not gradients:
        return (_relative(*(jax.jit(m.apply)(params, x) for m in (fast, direct))),)

    cotangent = jnp.asarray(rs.randn(*x.shape[:3], direct.num_classes), jnp.float32)

    @functools.partial(jax.jit, static_argnums=0)
    def outputs_and_gradients(model, params, x):  # one VJP: the logits' gradient is the same for both
        y, vjp = jax.vjp(lambda p: model.apply(p, x), params)
        return y, vjp(cotangent)[0]

    (y_fast, g_fast), (y_direct, g_direct) = (outputs_and_gradients(m, params, x) for m in (fast, direct))
    return (_relative(y_fast, y_direct),
            max(_relative(a, b) for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_direct))))


def test_fcn8s_and_fcn_resnet_with_winograd_equal_the_direct_ones():
    """Whole networks: outputs and every parameter's gradient. In the caffe geometry the pad-100 border makes
    maps of exactly equal values whose max-pool ties any reordering of the arithmetic breaks (the gradient then
    flows to another of the equal pixels), so there the outputs are compared."""
    x = jnp.asarray(np.random.RandomState(0).randn(2, 37, 45, 3) * 50, jnp.float32)
    assert max(_model_difference("fcn8s", x, geometry="same", width=1 / 16)) <= TOLERANCE
    assert max(_model_difference("fcn8s", x, gradients=False, geometry="caffe", width=1 / 16)) <= TOLERANCE
    resnet = dict(layers=(1, 1, 1, 1), width_per_group=8, expansion=1)
    assert max(_model_difference("fcn_resnet50", x, resnet=resnet)) <= TOLERANCE
