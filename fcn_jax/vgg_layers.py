"""VGG16's ReLU and 2x2 max pool with hand-written gradients: the same values and gradients as jax.nn.relu and
flax's nn.max_pool, computed elementwise and keeping less for backprop (BENCHMARKS.md: a fifth of the training step
on a GPU was the pools' select-and-scatter gradient)."""
import jax
import jax.numpy as jnp


@jax.custom_vjp
def relu(x):
    """max(x, 0) with jax.nn.relu's values and gradients (0 at x <= 0 and at NaN), taken from the output: backprop
    keeps the output, which the next convolution or pool keeps anyway, instead of a mask of x > 0 of its own (after
    fc6 and fc7, whose dropout keeps only its mask, the output is kept where the mask was). Reverse mode only, as
    every custom_vjp: jax.jvp through it raises."""
    return jnp.maximum(x, 0)


def _relu_forward(x):
    y = relu(x)
    return y, y


def _relu_backward(y, g):
    return (jnp.where(y > 0, g, 0),)


relu.defvjp(_relu_forward, _relu_backward)


def _pool_windows(x):
    """(N, H, W, C) -> (N, ceil(H/2), 2, ceil(W/2), 2, C): the 2x2/2 windows, odd sizes padded by -inf at the
    bottom/right (Caffe's ceil mode)."""
    n, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    return x.reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2, c)


@jax.custom_vjp
def max_pool_ceil(x):
    """2x2/2 max pool rounding the output size up (Caffe ceil mode), as a reshape and a max.

    Its gradient goes to the first maximum of each window in row-major order, as Caffe's, torch's and XLA's
    select-and-scatter do, but as one elementwise pass: the select-and-scatter form (nn.max_pool's gradient) ran
    the forward pool twice and scattered with atomics, about a fifth of the training step on a GPU (BENCHMARKS.md).
    Equal to nn.max_pool's gradient for any input without NaN (a window holding NaN gets none here; train_step
    skips such a step anyway). Reverse mode only, as every custom_vjp.
    """
    return _pool_windows(x).max(axis=(2, 4))


def _max_pool_forward(x):
    y = max_pool_ceil(x)
    return y, (x, y)  # both kept anyway: x by the relu before, y by the conv after


def _max_pool_backward(residuals, g):
    x, y = residuals
    windows = _pool_windows(x)
    n, h, w, c = x.shape
    hits = windows == y[:, :, None, :, None]  # (N, h, 2, w, 2, C)
    taken, parts = jnp.zeros_like(hits[:, :, 0, :, 0]), []
    for a in (0, 1):
        for b in (0, 1):
            first = hits[:, :, a, :, b] & ~taken
            taken = taken | first
            parts.append(jnp.where(first, g, 0).astype(x.dtype))
    dx = jnp.stack(parts, axis=3).reshape(n, (h + 1) // 2, (w + 1) // 2, 2, 2, c)
    dx = dx.transpose(0, 1, 3, 2, 4, 5).reshape(n, h + h % 2, w + w % 2, c)
    return (dx[:, :h, :w],)


max_pool_ceil.defvjp(_max_pool_forward, _max_pool_backward)
