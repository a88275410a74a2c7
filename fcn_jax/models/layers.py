"""The FCN's own layers: VGG16's ReLU and ceil-mode max pool, and the learnable bilinear upsampling.

`relu` and `max_pool_ceil` have hand-written gradients: the same values and gradients as jax.nn.relu and flax's
nn.max_pool, computed elementwise and keeping less for backprop (a fifth of the training step on a GPU was the
pools' select-and-scatter gradient: docs/benchmarks.md). `Upsample` is the reference's deconvolution: a transposed
convolution without bias, initialised to bilinear interpolation, computed in sub-pixel form (`transposed_conv`), the
fastest exact form measured on XLA:CPU (benchmarks/upsample.py).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


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
    the forward pool twice and scattered with atomics, about a fifth of the training step on a GPU (docs/benchmarks.md).
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


# ----------------------------------------------------------------------------- upsampling


def bilinear_kernel(kernel_size: int, num_classes: int) -> np.ndarray:
    """(k, k, K, K) float32 upsampling kernel: bilinear on the class diagonal, 0 off it.

    The reference's `upsample_filt`: class c maps only to class c, so the initial upsampling is
    plain bilinear interpolation of each class score.
    """
    if kernel_size < 1 or num_classes < 1:
        raise ValueError(f"bilinear_kernel needs kernel_size >= 1 and num_classes >= 1, "
                         f"got {kernel_size}, {num_classes}")
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - np.abs(np.arange(kernel_size) - center) / factor
    kernel = np.zeros((kernel_size, kernel_size, num_classes, num_classes), np.float32)
    classes = np.arange(num_classes)
    kernel[:, :, classes, classes] = np.outer(taps, taps)[:, :, None]
    return kernel


def transposed_conv(x, kernel, stride: int):
    """Caffe/PyTorch transposed conv, no padding.

    x (N,h,w,Cin), kernel (k,k,Cin,Cout) -> (N,(h-1)*s+k,(w-1)*s+k,Cout):
    out[n, s*i+u, s*j+v, co] += x[n, i, j, ci] * kernel[u, v, ci, co].

    Sub-pixel form, exact for any kernel: write u = s*t + r with phase r in [0, s). Output row
    s*q + r then sums x[q - t] * kernel[s*t + r] over t < m = ceil(k/s), i.e. for each phase an
    ordinary m x m correlation with the flipped taps. One dense conv computes all s*s phases as
    Cout*s*s channels, and depth-to-space interleaves them. This avoids both the s-fold dilated
    input of the textbook form and grouped convs, which are slow on XLA:CPU.
    """
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] \
            or kernel.shape[2] != x.shape[-1]:
        raise ValueError(f"transposed_conv needs x (N,h,w,Cin) and kernel (k,k,Cin,Cout), "
                         f"got x {x.shape} and kernel {kernel.shape}")
    if stride < 1:
        raise ValueError(f"transposed_conv needs stride >= 1, got {stride}")
    n, h, w, cin = x.shape
    k, cout, s = kernel.shape[0], kernel.shape[3], stride
    m = -(-k // s)
    padded = jnp.pad(kernel, ((0, m * s - k), (0, m * s - k), (0, 0), (0, 0)))
    # (t_u, r_u, t_v, r_v, ci, co), taps t flipped for correlation -> (t_u, t_v, ci, r_u*r_v*co)
    phases = padded.reshape(m, s, m, s, cin, cout)[::-1, :, ::-1]
    phases = phases.transpose(0, 2, 4, 1, 3, 5).reshape(m, m, cin, s * s * cout)
    y = lax.conv_general_dilated(x, phases.astype(x.dtype), (1, 1), [(m - 1, m - 1)] * 2,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    hq, wq = h + m - 1, w + m - 1
    y = y.reshape(n, hq, wq, s, s, cout).transpose(0, 1, 3, 2, 4, 5)  # depth to space
    y = y.reshape(n, hq * s, wq * s, cout)
    return y[:, :(h - 1) * s + k, :(w - 1) * s + k]


class Upsample(nn.Module):
    """Learnable upsampling: transposed conv, no bias, bilinear-initialised (k, k, K, K) kernel.

    The full K x K class mixing is a parameter (as in the reference, so counts and imported
    weights match) even though the initial kernel is diagonal.
    """
    num_classes: int
    kernel_size: int
    stride: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", lambda _, k, c: jnp.asarray(bilinear_kernel(k, c)),
                            self.kernel_size, self.num_classes)
        return transposed_conv(x, kernel.astype(x.dtype), self.stride)
