"""The fully connected CRF over an FCN's logits (Krähenbühl & Koltun 2011), and its mean field as a layer (CRF-RNN,
Zheng et al. 2015).

    settings = CRFSettings(iterations=5, gaussian_sxy=3, gaussian_weight=3, bilateral_sxy=80, bilateral_srgb=13,
                           bilateral_weight=10)     # pydensecrf's names and usual values
    refined = crf_logits(logits, image, settings)   # (H, W, L) logits, (H, W, 3) RGB 0..255 -> (H, W, L)
Mean field with two kernels over all pairs of pixels, each normalised symmetrically as the reference's
NORMALIZE_SYMMETRIC: a Gaussian on position (x, y) / gaussian_sxy, which smooths, and a bilateral one on
(x / bilateral_sxy, y / bilateral_sxy, r / srgb, g / srgb, b / srgb), which snaps labels to colour edges. Labels
interact through a compatibility matrix, Potts (1 - identity) by default, learnable in `DenseCRF`. The output is
the last iteration's logits, logits - pairwise, whose softmax is the CRF's marginals (the reference's Q).

Kernels are filtered on the permutohedral lattice (models.permutohedral); `exact=True` uses the dense N x N kernel
instead, for tests and tiny images.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.core.normalization import affine
from fcn_jax.models import permutohedral

_WIDTHS = ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb")
_WEIGHTS = ("gaussian_weight", "bilateral_weight")


@dataclasses.dataclass(frozen=True)
class CRFSettings:
    """The dense CRF's parameters by the reference's names (pydensecrf: sxy, srgb, compat; iterations)."""
    iterations: int = 5
    gaussian_sxy: float = 3.0       # position width of the smoothness kernel, pixels
    gaussian_weight: float = 3.0    # its weight (pydensecrf's compat)
    bilateral_sxy: float = 80.0     # position width of the appearance kernel, pixels
    bilateral_srgb: float = 13.0    # its colour width, 0..255 levels
    bilateral_weight: float = 10.0  # its weight

    def __post_init__(self):
        if isinstance(self.iterations, bool) or not float(self.iterations).is_integer() or self.iterations < 1:
            raise ValueError(f"CRF iterations must be a whole number >= 1, got {self.iterations}")
        object.__setattr__(self, "iterations", int(self.iterations))
        for name in _WIDTHS + _WEIGHTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"CRF {name} must be a finite number, got {value!r}")
            if value < 0 or (value == 0 and name in _WIDTHS):
                raise ValueError(f"CRF {name} must be {'> 0' if name in _WIDTHS else '>= 0'}, got {value}")
            object.__setattr__(self, name, float(value))

    @classmethod
    def from_mapping(cls, values) -> CRFSettings:
        """From a dict (a config section, crf.json): unknown names are a ValueError naming them."""
        values = {k: v for k, v in values.items() if k != "enabled"}
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown CRF parameter(s) {', '.join(unknown)}; expected "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**values)

    @classmethod
    def parse(cls, text: str, base: CRFSettings | None = None) -> CRFSettings:
        """'iterations=10,bilateral_srgb=3' on top of `base` (the defaults)."""
        values = dataclasses.asdict(base or cls())
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"CRF parameter {item!r} is not name=value")
            try:
                values[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"CRF parameter {name.strip()}: {value!r} is not a number") from None
        return cls.from_mapping(values)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def pixel_grid(height: int, width: int) -> np.ndarray:
    """(H W, 2) float32 (x, y) of every pixel, row by row."""
    ys, xs = np.mgrid[:height, :width]
    return np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float32)


def _features(positions: jax.Array, rgb: jax.Array, widths) -> jax.Array:
    """(N, 2 or 5) kernel features in the reference's order: (x, y) / sxy[, (r, g, b) / srgb]."""
    sxy, srgb = widths
    if srgb is None:
        return positions / sxy
    return jnp.concatenate([positions / sxy, rgb.astype(jnp.float32) / srgb], -1)


class DenseKernel(NamedTuple):
    matrix: jax.Array  # (N, N) exp(-|f_i - f_j|^2 / 2)


class Kernel(NamedTuple):
    """One kernel of one image: its filter (a lattice or a dense matrix) and the symmetric normalisation."""
    filter: Any        # permutohedral.Lattice | DenseKernel
    norm: jax.Array    # (N, 1): 1 / sqrt(k(f_i, .) summed)

    def __call__(self, values: jax.Array) -> jax.Array:
        """(N, C) -> norm k (norm values), the reference's symmetric normalisation."""
        return self.norm * _filter(self.filter, self.norm * values)


def _filter(kernel, values):
    if isinstance(kernel, DenseKernel):
        return kernel.matrix @ values
    return permutohedral.filter_values(kernel, values)


def _kernel(filter_: Any, num_points: int) -> Kernel:
    ones = jnp.ones((num_points, 1), jnp.float32)
    # computed once: without the barrier XLA fuses (recomputes) parts of it into every filtering
    return jax.lax.optimization_barrier(Kernel(filter_, 1.0 / jnp.sqrt(_filter(filter_, ones) + 1e-20)))


def kernel_widths(settings: CRFSettings, height: int, width: int, all_kernels: bool = False
                  ) -> tuple[dict[str, tuple], tuple[tuple[str, int], ...]]:
    """(sxy, srgb or None) of each kernel with a non-zero weight (every kernel with `all_kernels`, as a learnable
    layer needs), and the int32 words of its lattice codes on this image size (static: permutohedral.code_words);
    a ValueError when a width is too small for them."""
    widths, words = {}, []
    if settings.gaussian_weight or all_kernels:
        widths["gaussian"] = (settings.gaussian_sxy, None)
    if settings.bilateral_weight or all_kernels:
        widths["bilateral"] = (settings.bilateral_sxy, settings.bilateral_srgb)
    for name, (sxy, srgb) in widths.items():
        spans = (width / sxy, height / sxy) + ((255.0 / srgb,) * 3 if srgb else ())
        try:
            words.append((name, permutohedral.code_words(spans)))
        except ValueError as error:
            raise ValueError(f"CRF {name} kernel on a {height}x{width} image: {error}") from None
    return widths, tuple(words)


def kernel_keys(positions: jax.Array, rgb: jax.Array, valid: jax.Array | None, widths: dict[str, tuple],
                words: tuple[tuple[str, int], ...]) -> dict[str, permutohedral.Keys]:
    """The lattice keys of each kernel over (N, 2) pixel positions and their (N, 3) RGB 0..255 colours; `valid`
    marks the real pixels of a padded list (permutohedral.keys); widths and words: kernel_widths'. The widths are
    traced, so one compilation serves every setting; the keys' `count`, read on the host, sizes kernels_from_keys'
    capacities."""
    words = dict(words)
    return {name: permutohedral.keys(_features(positions, rgb, w), valid, words[name]) for name, w in widths.items()}


def kernels_from_keys(keys: dict[str, permutohedral.Keys], capacities: tuple[tuple[str, int], ...] = ()
                      ) -> dict[str, Kernel]:
    capacities = dict(capacities)
    return {name: _kernel(permutohedral.build(found, capacities.get(name)), found.codes.shape[1])
            for name, found in keys.items()}


def image_kernels(rgb: jax.Array, settings: CRFSettings, *, exact: bool = False,
                  capacities: tuple[tuple[str, int], ...] = (), all_kernels: bool = False) -> dict[str, Kernel]:
    """The kernels of one (H, W, 3) RGB 0..255 image (see kernel_widths); `capacities` ((name, lattice points),
    ...; static): the room to give each lattice, default every point the image could touch."""
    height, width = rgb.shape[:2]
    widths, words = kernel_widths(settings, height, width, all_kernels)
    positions, colours = jnp.asarray(pixel_grid(height, width)), rgb.reshape(-1, 3)
    if not exact:
        return kernels_from_keys(kernel_keys(positions, colours, None, widths, words), capacities)
    kernels = {}
    for name, w in widths.items():
        features = _features(positions, colours, w)
        matrix = jnp.exp(-0.5 * jnp.sum((features[:, None] - features[None]) ** 2, -1))
        kernels[name] = _kernel(DenseKernel(matrix), height * width)
    return kernels


def capacity(count: int) -> int:
    """Lattice room for `count` points: the next power of two (at least 256), so few capacities compile."""
    return max(256, 1 << (int(count) - 1).bit_length())


def potts(num_classes: int) -> np.ndarray:
    """The Potts compatibility: a cost of 1 between different labels, 0 for the same one."""
    return 1.0 - np.eye(num_classes, dtype=np.float32)


def mean_field(logits: jax.Array, kernels: dict[str, Kernel], weights: dict[str, Any], compatibility: jax.Array,
               iterations: int) -> jax.Array:
    """(N, L) logits after `iterations` mean-field updates: Q = softmax(logits - sum_k w_k k(Q) compatibility)."""
    logits = logits.astype(jnp.float32)
    if not kernels:
        return logits

    def update(_, out):
        q = jax.nn.softmax(out, -1)
        message = sum(weights[name] * kernel(q) for name, kernel in kernels.items())
        return logits - message @ compatibility

    return jax.lax.fori_loop(0, iterations, update, logits)  # a scan: one update compiled, differentiable


def crf_logits(logits: jax.Array, rgb: jax.Array, settings: CRFSettings, *, exact: bool = False,
               capacities: tuple[tuple[str, int], ...] = (), compatibility: jax.Array | None = None) -> jax.Array:
    """(H, W, L) logits of one image refined by the dense CRF over its (H, W, 3) RGB 0..255 pixels."""
    height, width, classes = logits.shape
    kernels = image_kernels(rgb, settings, exact=exact, capacities=capacities)
    weights = {"gaussian": settings.gaussian_weight, "bilateral": settings.bilateral_weight}
    compatibility = potts(classes) if compatibility is None else compatibility
    out = mean_field(logits.reshape(height * width, classes), kernels, weights, compatibility, settings.iterations)
    return out.reshape(height, width, classes)


def rgb_from_input(images: jax.Array, normalization: str) -> jax.Array:
    """The RGB 0..255 pixels behind normalised network input (core.normalization inverted)."""
    matrix, offset = affine(normalization)
    inverse = np.linalg.inv(matrix)
    return (images.astype(jnp.float32) - jnp.asarray(offset, jnp.float32)) @ jnp.asarray(inverse.T, jnp.float32)


class DenseCRF(nn.Module):
    """CRF-as-RNN: `settings.iterations` mean-field updates as a differentiable layer over one head's logits, its
    kernel weights and compatibility matrix learnable (initialised from `settings` and Potts); the widths stay
    fixed. Gradients flow through the lattice's splat / blur / slice, which are linear in the values."""
    settings: CRFSettings
    normalization: str = "caffe_bgr"

    @nn.compact
    def __call__(self, logits: jax.Array, images: jax.Array) -> jax.Array:
        """(B, H, W, L) logits and the (B, H, W, 3) normalised images they came from -> refined logits."""
        classes = logits.shape[-1]
        weights = {name: self.param(name, nn.initializers.constant(getattr(self.settings, name)), ())
                   for name in _WEIGHTS}
        compatibility = self.param("compatibility", lambda key: jnp.asarray(potts(classes)))
        rgb = jax.lax.stop_gradient(rgb_from_input(images, self.normalization))

        def one(image_logits, image_rgb):
            height, width = image_rgb.shape[:2]
            kernels = image_kernels(image_rgb, self.settings, all_kernels=True)  # the full capacity: no host
            named = {name: weights[f"{name}_weight"] for name in kernels}
            out = mean_field(image_logits.reshape(height * width, classes), kernels, named, compatibility,
                             self.settings.iterations)
            return out.reshape(image_logits.shape)

        return jax.vmap(jax.checkpoint(one))(logits, rgb)


class WithCRF(nn.Module):
    """An FCN followed by a DenseCRF on each head (params `crf`, `crf_<head>` beside the FCN's own, which keep their
    names): CRF-as-RNN trained end to end (config.model.crf)."""
    base: nn.Module
    settings: CRFSettings
    normalization: str = "caffe_bgr"
    num_classes: int = 21
    heads: tuple[tuple[str, int], ...] = ()

    def setup(self):
        nn.share_scope(self, self.base)

    @nn.compact
    def __call__(self, images, train: bool = False):
        logits = self.base(images, train)
        heads = self.heads or (("", self.num_classes),)
        outs, start = [], 0
        for index, (name, classes) in enumerate(heads):
            layer = DenseCRF(self.settings, self.normalization, name=f"crf_{name}" if index else "crf")
            outs.append(layer(logits[..., start:start + classes], images))
            start += classes
        return outs[0] if len(outs) == 1 else jnp.concatenate(outs, -1)
