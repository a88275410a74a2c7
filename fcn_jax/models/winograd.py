"""Winograd minimal filtering F(m x m, 3 x 3) (Lavin & Gray 2016) for 3x3 stride-1 convolutions on the CPU.

An m x m output tile is Y = A^T [(G g G^T) . (B^T d B)] A over its (m + 2) x (m + 2) input tile d: over all
tiles the elementwise product becomes (m + 2)^2 independent matmuls [tiles, C_in] x [C_in, C_out], so F(2x2, 3x3)
multiplies 2.25x less than the direct convolution and F(4x4, 3x3) 4x less. The transforms are adds over whole
maps (memory traffic), so it pays where inputs have many channels (docs/benchmarks.md measures where). fp32 only;
the rounding of the transforms is bounded in tests/models/winograd_test.py.

`conv` takes lax.conv_general_dilated's arguments (flax nn.Conv's `conv_general_dilated`). Its input gradient is
the same Winograd form on the output gradient with the flipped kernel (a 3x3 stride-1 convolution too), its kernel
gradient one matmul per tap (conv_forms.tap_kernel_grad). A dilated convolution (the ResNets' layer3 / layer4)
is the undilated one on each of its rate x rate phases.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fcn_jax.models import conv_forms

# (B^T, G, A^T) by output tile size m; the interpolation points are Lavin & Gray's: 0, +-1, +-2 and infinity for
# m = 4; 0, +-1 and infinity for m = 2.
TRANSFORMS = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]])),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])),
}
TILES = (0,) + tuple(TRANSFORMS)  # 0: no Winograd
# Below this many output pixels (batch x height x width) F(4x4) becomes F(2x2): its 36 x C_in x C_out filter
# transform, 2.25x F(2x2)'s, is shared by too few tiles (per-layer times in docs/benchmarks.md).
F4_MIN_PIXELS = 2500
# The most bytes of transformed tiles (input or products) one band of a large map holds (winograd_conv).
BAND_BYTES = 16 * 2**20


def _combine(matrix, parts):
    """[sum_i matrix[a, i] * parts[i] for each row a] as adds, skipping zero coefficients."""
    rows = []
    for coefficients in matrix:
        terms = [part if c == 1 else -part if c == -1 else part * jnp.asarray(c, part.dtype)
                 for c, part in zip(coefficients, parts) if c != 0]
        rows.append(functools.reduce(jnp.add, terms))
    return rows


def _strided(x, axis, start, count, step):
    """x[start : start + count * step : step] along `axis`."""
    starts, limits, strides = [0] * x.ndim, list(x.shape), [1] * x.ndim
    starts[axis], limits[axis], strides[axis] = start, start + (count - 1) * step + 1, step
    return lax.slice(x, starts, limits, strides)


def filter_transform(kernel, m: int):
    """G g G^T of a (3, 3, C_in, C_out) kernel: ((m + 2)^2, C_in, C_out)."""
    g = TRANSFORMS[m][1]
    rows = jnp.stack(_combine(g, list(kernel)))                     # (m + 2, 3, C_in, C_out)
    u = jnp.stack(_combine(g, [rows[:, j] for j in range(3)]), 1)    # (m + 2, m + 2, C_in, C_out)
    return u.reshape(-1, *kernel.shape[2:])


def input_transform(x, m: int, tiles_h: int, tiles_w: int):
    """B^T d B of every tile of x (N, m * tiles_h + 2, m * tiles_w + 2, C): ((m + 2)^2, N * tiles, C). Columns
    first, then rows of the stacked columns (measured faster than 36 separate combinations)."""
    bt, n = TRANSFORMS[m][0], m + 2
    cols = jnp.stack(_combine(bt, [_strided(x, 2, j, tiles_w, m) for j in range(n)]))  # (n, N, H, tiles_w, C)
    v = jnp.stack(_combine(bt, [_strided(cols, 2, i, tiles_h, m) for i in range(n)]))  # (n, n, N, th, tw, C)
    return v.reshape(n * n, -1, x.shape[-1])


def output_transform(prod, m: int, batch: int, tiles_h: int, tiles_w: int):
    """A^T M A of the ((m + 2)^2, N * tiles, C) products, as the (N, m * tiles_h, m * tiles_w, C) map."""
    at, n = TRANSFORMS[m][2], m + 2
    prod = prod.reshape(n, n, batch, tiles_h, tiles_w, -1)
    rows = jnp.stack(_combine(at, list(prod)))                       # (m, n, N, th, tw, C)
    y = jnp.stack(_combine(at, [rows[:, b] for b in range(n)]), 1)   # (m, m, N, th, tw, C)
    return y.transpose(2, 3, 0, 4, 1, 5).reshape(batch, m * tiles_h, m * tiles_w, -1)


def winograd_conv(x, kernel, padding, m: int = 4):
    """The 3x3 stride-1 NHWC/HWIO convolution of x with `padding` ((lo, hi), (lo, hi)) by F(m x m, 3 x 3); a
    negative padding crops. Static shapes. Large maps go in bands of tile rows (a loop) so that the transformed
    tiles of a band stay within BAND_BYTES: peak memory near the direct convolution's, not (m + 2)^2 / m^2 times
    the input and output maps."""
    (top, bottom), (left, right) = padding
    batch, height, width, channels = x.shape
    out_h, out_w = height + top + bottom - 2, width + left + right - 2
    tiles_h, tiles_w = -(-out_h // m), -(-out_w // m)
    row_bytes = (m + 2) ** 2 * batch * tiles_w * max(channels, kernel.shape[-1]) * x.dtype.itemsize
    bands = -(-tiles_h // max(1, BAND_BYTES // row_bytes))
    band = -(-tiles_h // bands)  # tile rows a band: equal bands, at most bands - 1 rows of padding
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, m * bands * band + 2 - height - top, 0),
                                            (left, m * tiles_w + 2 - width - left, 0), (0, 0, 0)))
    u = filter_transform(kernel, m)                                                     # (n^2, C_in, C_out)

    def tile_rows(x, rows):  # x: (N, m * rows + 2, m * tiles_w + 2, C_in) -> (N, m * rows, m * tiles_w, C_out)
        v = input_transform(x, m, rows, tiles_w)                                        # (n^2, tiles, C_in)
        prod = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))                     # (n^2, tiles, C_out)
        return output_transform(prod, m, batch, rows, tiles_w)

    if bands == 1:
        return tile_rows(x, band)[:, :out_h, :out_w]

    def one_band(i, y):
        x_band = lax.dynamic_slice_in_dim(x, i * band * m, band * m + 2, axis=1)
        return lax.dynamic_update_slice_in_dim(y, tile_rows(x_band, band), i * band * m, axis=1)

    y = jnp.zeros((batch, m * bands * band, m * tiles_w, kernel.shape[-1]), x.dtype)
    return lax.fori_loop(0, bands, one_band, y)[:, :out_h, :out_w]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, padding, m):
    return winograd_conv(x, kernel, padding, m)


def _conv_forward(x, kernel, padding, m):
    return winograd_conv(x, kernel, padding, m), (x, kernel)


def _conv_backward(padding, m, residuals, g):
    x, kernel = residuals
    flipped = kernel[::-1, ::-1].swapaxes(2, 3)  # dx: g convolved with the flipped, transposed kernel
    dx = winograd_conv(g, flipped, tuple((2 - lo, 2 - hi) for lo, hi in padding), m)
    return dx, conv_forms.tap_kernel_grad(x, g, kernel.shape, padding).astype(kernel.dtype)


_conv.defvjp(_conv_forward, _conv_backward)


def _dilated(x, kernel, padding, rate: int, m: int):
    """A rate-`rate` dilated 3x3 convolution as the undilated one on each of the rate x rate phases of the padded
    input, batched: output[rate * q + r] = conv(x_padded[r::rate])[q] along each axis."""
    (top, bottom), (left, right) = padding
    batch, height, width, channels = x.shape
    out_h, out_w = height + top + bottom - 2 * rate, width + left + right - 2 * rate
    ph, pw = -(-(height + top + bottom) // rate), -(-(width + left + right) // rate)  # phase sizes
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, rate * ph - height - top, 0),
                                            (left, rate * pw - width - left, 0), (0, 0, 0)))
    phases = x.reshape(batch, ph, rate, pw, rate, channels).transpose(2, 4, 0, 1, 3, 5)
    y = _conv(phases.reshape(rate * rate * batch, ph, pw, channels), kernel, ((0, 0), (0, 0)), m)
    y = y.reshape(rate, rate, batch, ph - 2, pw - 2, -1).transpose(2, 3, 0, 4, 1, 5)
    return y.reshape(batch, rate * (ph - 2), rate * (pw - 2), -1)[:, :out_h, :out_w]


def _rate(rhs_dilation):
    """The common dilation of both spatial axes, or None where they differ."""
    rates = tuple(rhs_dilation or (1, 1))
    return rates[0] if rates[0] == rates[1] else None


def covers(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
           feature_group_count) -> bool:
    """True for what `conv` computes by Winograd: fp32, 3x3, stride 1, no input dilation, the same kernel
    dilation on both axes, ungrouped, NHWC/HWIO, explicit padding, static shapes, on the CPU backend."""
    rate = _rate(rhs_dilation)
    return (rate is not None and tuple(rhs.shape[:2]) == (3, 3)
            and lhs.dtype == rhs.dtype == jnp.float32 and all(isinstance(d, int) for d in lhs.shape)
            and conv_forms.cpu_stride1_nhwc(lhs, rhs, window_strides, padding, lhs_dilation, None,
                                            dimension_numbers, feature_group_count))


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
         feature_group_count=1, precision=None, *, m: int = 4, fallback=lax.conv_general_dilated, **kwargs):
    """lax.conv_general_dilated by F(m x m, 3 x 3) where `covers` holds (F(2x2) for m = 4 on fewer than
    F4_MIN_PIXELS output pixels); `fallback` (same arguments) elsewhere."""
    if not covers(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                  feature_group_count):
        return fallback(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                        feature_group_count, precision=precision, **kwargs)
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
    rate = _rate(rhs_dilation)
    (top, bottom), (left, right) = padding
    pixels = lhs.shape[0] * (lhs.shape[1] + top + bottom - 2 * rate) * (lhs.shape[2] + left + right - 2 * rate)
    m = 2 if m == 4 and pixels < F4_MIN_PIXELS else m
    return _conv(lhs, rhs, padding, m) if rate == 1 else _dilated(lhs, rhs, padding, rate, m)


def form(tile: int, in_channels: int, min_channels: int, fallback=None):
    """The `conv_general_dilated` of a 3x3 convolution with `in_channels` inputs: Winograd F(tile x tile, 3x3)
    when tile > 0 and in_channels >= min_channels, else `fallback` (None: XLA's)."""
    if tile not in TILES:
        raise ValueError(f"winograd_tile {tile}: expected one of {TILES} (0: no Winograd)")
    if tile == 0 or in_channels < min_channels:
        return fallback
    return functools.partial(conv, m=tile, fallback=fallback or lax.conv_general_dilated)
