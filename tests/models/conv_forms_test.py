"""Tests for fcn_jax.models.conv_forms: the matmul forms equal lax.conv_general_dilated, values and gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export, lax

from fcn_jax.models import conv_forms

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("kernel, padding", [(7, ((0, 0), (0, 0))), (3, ((3, 1), (0, 2))), (1, ((0, 0), (0, 0)))])
def test_im2col_conv_equals_lax_conv_and_its_gradients(kernel, padding):
    rs = np.random.RandomState(1)
    x = jnp.asarray(rs.randn(2, 11, 9, 5), jnp.float32)
    w = jnp.asarray(rs.randn(kernel, kernel, 5, 6), jnp.float32)
    conv = functools.partial(lax.conv_general_dilated, window_strides=(1, 1), padding=padding,
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    im2col = functools.partial(conv_forms.im2col_conv, window_strides=(1, 1), padding=padding,
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(im2col(x, w), conv(x, w), rtol=1e-5, atol=1e-4)
    g = jnp.asarray(rs.randn(*conv(x, w).shape), jnp.float32)
    for a, b in zip(jax.vjp(im2col, x, w)[1](g), jax.vjp(conv, x, w)[1](g)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    strided = conv_forms.im2col_conv(x, w, (2, 2), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(strided, lax.conv_general_dilated(x, w, (2, 2), padding,
                                                                    dimension_numbers=("NHWC", "HWIO", "NHWC")))


def test_im2col_conv_falls_back_for_symbolic_shapes():
    """jax.export with a symbolic batch and size traces lax's convolution (static slices need static sizes)."""
    w = jnp.ones((3, 3, 2, 4), jnp.float32)
    spec = jax.ShapeDtypeStruct(export.symbolic_shape("b, h, w, 2"), jnp.float32)
    exported = export.export(jax.jit(lambda x: conv_forms.im2col_conv(x, w, (1, 1), ((1, 1), (1, 1)),
                                                                      dimension_numbers=DN)))(spec)
    x = jnp.asarray(np.random.RandomState(0).randn(2, 5, 7, 2), jnp.float32)
    np.testing.assert_allclose(exported.call(x), lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                                          dimension_numbers=DN), rtol=1e-6)
