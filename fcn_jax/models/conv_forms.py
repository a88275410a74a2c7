"""Matmul forms of stride-1 convolutions that XLA:CPU runs faster than its own convolutions (docs/benchmarks.md).

Each takes lax.conv_general_dilated's arguments (so flax's nn.Conv can use it as `conv_general_dilated`), computes
the same values, and falls back to lax.conv_general_dilated off the CPU backend and for any convolution it does
not cover (strided, dilated, grouped, not NHWC/HWIO, symbolic shapes).
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax


def tap_kernel_grad(x, g, kernel_shape, padding):
    """d loss / d kernel of a stride-1 NHWC/HWIO convolution: for each tap (i, j), the sum over n, h, w of
    x_padded[n, h + i, w + j]^T g[n, h, w], one matmul per tap. XLA:CPU's own kernel gradient of a 3x3 conv on a
    large map runs several times slower (docs/benchmarks_history.md, "Where the time goes")."""
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))  # < 0: crop
    (kh, kw), (ho, wo) = kernel_shape[:2], g.shape[1:3]
    g2 = g.reshape(-1, g.shape[-1])

    def tap(index):  # one tap at a time (lax.map): one shifted copy of x alive, not kh * kw of them
        window = lax.dynamic_slice(xp, (0, index // kw, index % kw, 0), (x.shape[0], ho, wo, x.shape[-1]))
        return lax.dot(window.reshape(-1, x.shape[-1]).T, g2, preferred_element_type=jnp.float32)

    return lax.map(tap, jnp.arange(kh * kw)).reshape(kh, kw, x.shape[-1], g.shape[-1])


def cpu_stride1_nhwc(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                      feature_group_count) -> bool:
    """True for an ungrouped, undilated, stride-1 NHWC/HWIO convolution with explicit padding on the CPU backend:
    the convolutions whose matmul forms (tap_conv, im2col_conv) were measured faster there."""
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    simple = all(v in (None, 1) or tuple(v) == (1, 1) for v in (window_strides, lhs_dilation, rhs_dilation))
    return (simple and jax.default_backend() == "cpu" and feature_group_count == 1
            and isinstance(padding, (tuple, list))
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc)


def _plain_and_applies(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                       feature_group_count, precision, **kwargs):
    """(lax.conv_general_dilated with these arguments, whether a matmul form covers this convolution)."""
    plain = functools.partial(lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                              lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                              dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                              precision=precision, **kwargs)
    return plain, cpu_stride1_nhwc(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count)


def tap_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
             feature_group_count=1, precision=None, **kwargs):
    """lax.conv_general_dilated with the kernel gradient of `tap_kernel_grad` (forward and input gradient are
    XLA's), on the CPU backend, where it was measured faster (docs/benchmarks.md); VGG16's stride-1 convolutions use it.
    Other backends and any other convolution get lax.conv_general_dilated unchanged."""
    plain, applies = _plain_and_applies(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision, **kwargs)
    if not applies:
        return plain(lhs, rhs)

    @jax.custom_vjp
    def conv(x, kernel):
        return plain(x, kernel)

    def forward(x, kernel):
        return plain(x, kernel), (x, kernel)

    def backward(residuals, g):
        x, kernel = residuals
        (dx,) = jax.vjp(lambda x_: plain(x_, kernel), x)[1](g)
        return dx, tap_kernel_grad(x, g, kernel.shape, padding).astype(kernel.dtype)

    conv.defvjp(forward, backward)
    return conv(lhs, rhs)


def im2col_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                feature_group_count=1, precision=None, **kwargs):
    """A stride-1 NHWC/HWIO convolution as one matmul over the kh * kw shifted copies of its input (im2col), on
    the CPU backend; elsewhere, and for any other convolution, lax.conv_general_dilated unchanged.

    For fc6 (7x7, 512 -> 4096 on a small map) XLA:CPU's convolution and its gradients run far below its matmul
    rate while the copies are small (docs/benchmarks.md); autodiff makes both gradients matmuls too."""
    plain, applies = _plain_and_applies(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision, **kwargs)
    if not (applies and all(isinstance(d, int) for d in lhs.shape)):
        return plain(lhs, rhs)  # also for symbolic shapes (jax.export): their slices and reshapes are not static
    (kh, kw, cin, cout), n = rhs.shape, lhs.shape[0]
    xp = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    rows = jnp.concatenate([xp[:, :, j:j + wo] for j in range(kw)], axis=-1)  # (n, ho + kh - 1, wo, kw * cin)
    cols = jnp.concatenate([rows[:, i:i + ho] for i in range(kh)], axis=-1)  # (n, ho, wo, kh * kw * cin)
    out = lax.dot(cols.reshape(n * ho * wo, kh * kw * cin), rhs.reshape(kh * kw * cin, cout), precision=precision)
    return out.reshape(n, ho, wo, cout)
