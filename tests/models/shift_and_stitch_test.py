"""Tests for fcn_jax.models.shift_and_stitch: equal to stride-1 evaluation wherever theory says so."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fcn_jax.models.shift_and_stitch import shift_and_stitch

_DN = ("NHWC", "HWIO", "NHWC")


def conv(x, kernel, stride=1, dilation=1):
    return lax.conv_general_dilated(x, kernel, (stride, stride), "VALID",
                                    rhs_dilation=(dilation, dilation), dimension_numbers=_DN)


def max_pool(x, stride=2, dilation=1):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, stride, stride, 1),
                             "VALID", window_dilation=(1, dilation, dilation, 1))


def kernels(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=s) / np.sqrt(np.prod(s[:-1])), jnp.float32)
            for s in shapes]


def images(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


W1, W2, W3 = kernels((3, 3, 2, 4), (3, 3, 4, 4), (3, 3, 4, 3))


def pooled_net(x):
    """conv, pool 2/2, conv, pool 2/2, conv: output stride 4."""
    x = max_pool(jax.nn.relu(conv(x, W1)))
    x = max_pool(jax.nn.relu(conv(x, W2)))
    return conv(x, W3)


def rarefied_net(x):
    """The same filters at stride 1: pools of stride 1, later windows dilated by the stride."""
    x = max_pool(jax.nn.relu(conv(x, W1)), stride=1)
    x = max_pool(jax.nn.relu(conv(x, W2, dilation=2)), stride=1, dilation=2)
    return conv(x, W3, dilation=4)


@pytest.mark.parametrize("size", [(37, 40), (41, 44)])
def test_equals_filter_rarefaction(size):
    x = images((2, *size, 2))
    stitched = np.asarray(shift_and_stitch(pooled_net, x, 4))
    dense = np.asarray(rarefied_net(x))  # (H - 17, W - 17): every window inside the image
    coarse = pooled_net(x).shape
    assert stitched.shape == (2, 4 * coarse[1], 4 * coarse[2], 3)
    assert dense.shape == (2, size[0] - 17, size[1] - 17, 3)
    # stitched has up to f - 1 extra trailing rows/cols, whose windows cross the edge
    extra = np.subtract(stitched.shape[1:3], dense.shape[1:3])
    assert np.all((0 <= extra) & (extra < 4))
    np.testing.assert_allclose(stitched[:, :dense.shape[1], :dense.shape[2]], dense,
                               rtol=1e-5, atol=1e-5)
    assert np.abs(dense).max() > 0.1


V1, V2, V3 = kernels((3, 3, 2, 3), (3, 3, 3, 3), (3, 3, 3, 2), seed=5)
FIELD = 16  # receptive field of strided_net, output to input: 3 -> 2*2+3 = 7 -> 6*2+2 = 14 -> 16


def strided_net(x):
    """conv, pool 2/2, strided conv 3/2, conv: output stride 4, receptive field 16."""
    x = max_pool(jnp.tanh(conv(x, V1)))
    return conv(jnp.tanh(conv(x, V2, stride=2)), V3)


def test_each_cell_is_the_net_on_its_own_window():
    h, w = 34, 31
    x = images((1, h, w, 2), seed=3)
    stitched = np.asarray(shift_and_stitch(strided_net, x, 4))
    valid = (h - FIELD + 1, w - FIELD + 1)  # windows inside the image
    assert strided_net(x[:, :FIELD, :FIELD]).shape == (1, 1, 1, 2)
    windows = jnp.concatenate([x[:, p:p + FIELD, q:q + FIELD]
                               for p in range(valid[0]) for q in range(valid[1])])
    brute = np.asarray(strided_net(windows)).reshape(*valid, 2)
    np.testing.assert_allclose(stitched[0, :valid[0], :valid[1]], brute, rtol=1e-5, atol=1e-6)


def test_trailing_cells_see_zero_padding():
    # The last stitched row with dy = 3 reads rows past the bottom edge, which are zeros.
    h, w = 34, 31
    x = images((1, h, w, 2), seed=3)
    stitched = np.asarray(shift_and_stitch(strided_net, x, 4))
    p = stitched.shape[1] - 1
    assert p % 4 == 3 and p + FIELD > h  # dy = 3 and the window crosses the bottom edge
    window = jnp.pad(x, ((0, 0), (0, 3), (0, 0), (0, 0)))[:, p:p + FIELD, :FIELD]
    np.testing.assert_allclose(stitched[0, p, 0], np.asarray(strided_net(window))[0, 0, 0],
                               rtol=1e-5, atol=1e-6)


def test_stride_one_is_the_net_itself_and_bad_input_is_rejected():
    x = images((1, 12, 12, 2))
    np.testing.assert_allclose(shift_and_stitch(pooled_net, x, 1), pooled_net(x), rtol=1e-6)
    with pytest.raises(ValueError, match="stride"):
        shift_and_stitch(pooled_net, x, 0)
    with pytest.raises(ValueError, match="stride"):
        shift_and_stitch(pooled_net, x, 2.5)
    with pytest.raises(ValueError, match=r"images \(N, H, W, C\)"):
        shift_and_stitch(pooled_net, x[0], 2)
    with pytest.raises(ValueError, match="apply_fn"):
        shift_and_stitch(lambda y: y.sum(axis=(1, 2)), x, 2)
