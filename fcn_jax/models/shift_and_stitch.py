"""Shift-and-stitch (FCN paper sec. 3.2): dense output from a net of output stride f.

The net runs on f^2 copies of the input, shifted up by dy and left by dx for dy, dx in [0, f),
and the outputs are interleaved: dense[f*i + dy, f*j + dx] = net(shifted by (dy, dx))[i, j].
Cell (i, j) of a VALID net of stride f reads the window starting at input pixel (f*i, f*j), so
dense cell (p, q) reads the window starting at (p, q): the net evaluated at stride 1. That is the
same map as "filter rarefaction": give the stride-f layer stride 1 and dilate every later filter
(and pool window) by f.

Boundaries: shifting up by dy drops the top dy rows. The bottom is padded with dy zero rows so
that every pass has the input's shape, which lets one trace of `apply_fn` serve all f^2 passes
(lax.map, one pass in memory at a time). A dense cell is exact, i.e. equal to the net on its
window of real pixels, when that window lies inside the image. Cells whose window crosses the
bottom or right edge read those zero rows and columns, and a net run at stride 1 would not
produce them at all. For VALID nets these are the trailing cells beyond the stride-1 output
size. The map has (f*h, f*w) cells, where (h, w) is the net's output size on the unshifted input.
"""
import jax.numpy as jnp
from jax import lax


def shift_and_stitch(apply_fn, images, stride: int):
    """Dense (N, stride*h, stride*w, K) map from apply_fn: (N, H, W, C) -> (N, h, w, K).

    apply_fn must be a traceable function of output stride `stride` (e.g. a bound model.apply).
    """
    if images.ndim != 4:
        raise ValueError(f"shift_and_stitch expects images (N, H, W, C), got shape {images.shape}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"shift_and_stitch needs an integer stride >= 1, got {stride!r}")
    f, (n, h, w, c) = int(stride), images.shape
    padded = jnp.pad(images, ((0, 0), (0, f - 1), (0, f - 1), (0, 0)))

    def shifted_pass(shift):  # shift = dy * f + dx
        window = lax.dynamic_slice(padded, (0, shift // f, shift % f, 0), (n, h, w, c))
        out = apply_fn(window)
        if out.ndim != 4:
            raise ValueError(f"shift_and_stitch needs apply_fn to return (N, h, w, K), "
                             f"got shape {out.shape}")
        return out

    outs = lax.map(shifted_pass, jnp.arange(f * f))  # (f*f, N, h, w, K)
    _, _, ho, wo, k = outs.shape
    outs = outs.reshape(f, f, n, ho, wo, k).transpose(2, 3, 0, 4, 1, 5)  # (N, h, dy, w, dx, K)
    return outs.reshape(n, ho * f, wo * f, k)
