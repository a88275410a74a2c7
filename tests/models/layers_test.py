"""Tests for fcn_jax.models.layers: the ReLU and max pool equal jax.nn.relu and nn.max_pool in values and gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from fcn_jax.models import layers


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(2, 7, 5, 3), (1, 8, 6, 4), (1, 1, 1, 2), (2, 9, 4, 3)])
def test_max_pool_ceil_equals_flax_max_pool_in_values_and_gradients(shape, dtype):
    """Odd sizes (ceil mode), ties (zeros after a ReLU, rounded values), all-negative maps and -inf (so the ceil
    mode's padding must be -inf): the gradient goes to the first maximum of each window, as nn.max_pool's does."""
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape)
    x = np.where(rng.random(shape) < 0.5, np.round(x), x)  # ties
    x = np.stack([np.maximum(x[0], 0), x[-1] - 3.0])[:shape[0]]  # after a ReLU (zeros), and all negative
    x.flat[-1] = -np.inf
    x = jnp.asarray(x, dtype)
    padding = ((0, shape[1] % 2), (0, shape[2] % 2))
    y_ref, vjp_ref = jax.vjp(lambda v: nn.max_pool(v, (2, 2), (2, 2), padding), x)
    y, vjp = jax.vjp(layers.max_pool_ceil, x)
    g = jnp.asarray(rng.normal(size=y_ref.shape), dtype)
    assert y.shape == y_ref.shape == (shape[0], -(-shape[1] // 2), -(-shape[2] // 2), shape[3])
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
    (dx_ref,), (dx,) = vjp_ref(g), jax.jit(vjp)(g)
    assert np.count_nonzero(np.asarray(dx_ref, np.float32)) > 0
    np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32))


def test_relu_equals_jax_relu_in_values_and_gradients_and_keeps_only_its_output(capsys):
    x = jnp.asarray([-2.0, -0.0, 0.0, 1e-30, 3.0, jnp.nan, -jnp.inf, jnp.inf])
    g = jnp.arange(1.0, 9.0)
    for dtype in (jnp.float32, jnp.bfloat16):
        y, vjp = jax.vjp(layers.relu, x.astype(dtype))
        y_ref, vjp_ref = jax.vjp(jax.nn.relu, x.astype(dtype))
        np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
        np.testing.assert_array_equal(np.asarray(vjp(g.astype(dtype))[0], np.float32),
                                      np.asarray(vjp_ref(g.astype(dtype))[0], np.float32))
    capsys.readouterr()
    print_saved_residuals(lambda v: layers.relu(v * 2).sum(), x)
    saved = [line.split()[0] for line in capsys.readouterr().out.splitlines() if "from a literal" not in line]
    assert saved == ["f32[8]"]  # the output alone: no bool mask, no zeros (jax.nn.relu keeps both)
