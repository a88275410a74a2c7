"""FCN-VGG16 segmentation models (Long, Shelhamer, Darrell 2015) in Flax, NHWC.

One code path, `FCN`, builds every variant: a VGG16 backbone, a 1x1 `score_fr` on fc7, and one
upsample-and-fuse step per skip (pool4, then pool3), then a final upsampling to the input size.
FCN-32s/16s/8s/8s-at-once only set its defaults. Parameter names are the reference's
(conv1_1..conv5_3, fc6, fc7, score_fr, score_pool4, score_pool3, upscore2, upscore_pool4,
upscore / upscore16 / upscore8) so imported weights and readers can check us.

Two geometries:
  "caffe": the reference net. conv1_1 pads by 100 so that the 7x7 VALID fc6 fits any input, pools
           round up (ceil mode). The crops are the reference's (score_pool4 5, score_pool3 9,
           upscore 19, upscore16 27, upscore8 31).
  "same":  SAME padding everywhere (fc6 too), no pad 100: a smaller, cheaper net.
In both, the crop offsets come from the same coordinate-map algebra Caffe uses (`crop_offsets`);
in "caffe" it yields the reference numbers above. In "same" it anchors every crop at (k - s) / 2
rather than at the centre: SAME pooling pads only at the bottom/right, so a centre crop would put
the output up to s/2 - 1 pixels off the input it came from whenever H or W is not a multiple of s.

Upsampling is a transposed convolution in sub-pixel form (see `transposed_conv`): on XLA:CPU it
was the fastest exact form measured by benchmarks/upsample.py.
"""
from fractions import Fraction
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from fcn_jax import conv_forms, resnet, vgg_layers

VGG_VARIANTS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce")
VARIANTS = VGG_VARIANTS + tuple(resnet.DEPTHS)  # the backbone is part of the variant: VGG16 or a dilated ResNet
GEOMETRIES = ("caffe", "same")

# VGG16 convolutions by block: (name, channels at width 1). Each block ends in a 2x2/2 max pool.
VGG16_BLOCKS = (
    (("conv1_1", 64), ("conv1_2", 64)),
    (("conv2_1", 128), ("conv2_2", 128)),
    (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256)),
    (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512)),
    (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512)),
)
FC_CHANNELS = 4096

# Spatial padding of the layers whose padding differs between geometries; other 3x3 convs pad 1.
_PADDING = {
    "caffe": {"conv1_1": 100, "fc6": 0},
    "same": {"conv1_1": 1, "fc6": 3},
}
# Skip fusion order and the layer that upsamples the running score before each fusion.
_SKIP_UPSCORES = {"pool4": "upscore2", "pool3": "upscore_pool4"}
_VALID_SKIPS = ((), ("pool4",), ("pool4", "pool3"))
# Final upsampling layer by output stride of the fused score.
_FINAL_UPSCORES = {32: "upscore", 16: "upscore16", 8: "upscore8"}
# FCN-8s at-once: fixed scales applied to pool4 / pool3 before scoring (reference Scale layers).
_AT_ONCE_SCALES = {"pool4": 0.01, "pool3": 1e-4}


def scaled_channels(channels: int, width: float) -> int:
    """Channel count under a width multiplier; never below 1."""
    return max(1, round(channels * width))


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


def _conv_coords(coords, kernel: int, stride: int, pad: int):
    """Coordinate map through a conv/pool: cell y of a map is centred on input pixel a*y + c."""
    a, c = coords
    return a * stride, c + a * (Fraction(kernel - 1, 2) - pad)


def _upsample_coords(coords, kernel: int, stride: int):
    a, c = coords
    return a / stride, c - a * Fraction(kernel - 1, 2 * stride)


def _backbone_coords(geometry: str) -> dict:
    """Coordinate maps of pool3, pool4 and fc7 for a geometry, walking VGG16's layers."""
    pads = _PADDING[geometry]
    coords, out = (Fraction(1), Fraction(0)), {}
    for block, layers in enumerate(VGG16_BLOCKS, start=1):
        for name, _ in layers:
            coords = _conv_coords(coords, 3, 1, pads.get(name, 1))
        coords = _conv_coords(coords, 2, 2, 0)
        out[f"pool{block}"] = coords
    out["fc7"] = _conv_coords(coords, 7, 1, pads["fc6"])
    return out


def crop_offsets(geometry: str, skips: tuple[str, ...]) -> dict[str, int]:
    """Crop offset (same in H and W) of every cropped layer, keyed by that layer's name.

    Caffe's coord_map rule: two maps with the same stride a are aligned when their cells are
    centred on the same input pixel, so map B starts (c_A - c_B) / a cells before map A. The
    larger map is cropped: in "caffe" the score_pool* maps, in "same" the upscore* maps.
    """
    _check_config(geometry, skips)
    coords = _backbone_coords(geometry)
    frame, offsets = coords["fc7"], {}
    for skip in skips:
        up_name = _SKIP_UPSCORES[skip]
        up, side = _upsample_coords(frame, 4, 2), coords[skip]
        offset = (up[1] - side[1]) / side[0]
        if offset >= 0:
            offsets[f"score_{skip}"], frame = int(offset), up
        else:
            offsets[up_name], frame = int(-offset), side
    stride = int(frame[0])
    final = _upsample_coords(frame, 2 * stride, stride)
    offsets[_FINAL_UPSCORES[stride]] = int(-final[1])
    return offsets


def _check_config(geometry: str, skips: tuple[str, ...]):
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; expected one of {GEOMETRIES}")
    if tuple(skips) not in _VALID_SKIPS:
        raise ValueError(f"unsupported skips {skips!r}; expected one of {_VALID_SKIPS}")


def _crop(x, offset: int, size):
    """x[:, offset:offset+h, offset:offset+w] for size (h, w)."""
    return x[:, offset:offset + size[0], offset:offset + size[1]]


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


class VGG16(nn.Module):
    """VGG16 convolutions plus fc6 (7x7 conv) and fc7 (1x1 conv); returns pool3, pool4, fc7.

    tap_kernel_grads: the 3x3 convolutions take their kernel gradient as one matmul per tap (conv_forms.tap_conv);
    fc6_im2col: fc6 runs as one im2col matmul (conv_forms.im2col_conv). Both compute the same values, faster on XLA:CPU, and
    change nothing on other backends."""
    geometry: str = "caffe"
    width: float = 1.0
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    tap_kernel_grads: bool = True
    fc6_im2col: bool = True

    @nn.compact
    def __call__(self, images, train: bool = False):
        _check_config(self.geometry, ())
        pads = _PADDING[self.geometry]

        def conv(name, channels, k, p):
            impl = conv_forms.tap_conv if self.tap_kernel_grads and k > 1 else None
            if name == "fc6" and self.fc6_im2col:
                impl = conv_forms.im2col_conv
            return nn.Conv(scaled_channels(channels, self.width), (k, k),
                           padding=((p, p), (p, p)), dtype=self.dtype,
                           param_dtype=jnp.float32, name=name, conv_general_dilated=impl)

        x, feats = images.astype(self.dtype), {}
        for block, layers in enumerate(VGG16_BLOCKS, start=1):
            for name, channels in layers:
                x = vgg_layers.relu(conv(name, channels, 3, pads.get(name, 1))(x))
            x = feats[f"pool{block}"] = vgg_layers.max_pool_ceil(x)
        for name, k, p in (("fc6", 7, pads["fc6"]), ("fc7", 1, 0)):
            x = vgg_layers.relu(conv(name, FC_CHANNELS, k, p)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return dict(pool3=feats["pool3"], pool4=feats["pool4"], fc7=x)


class FCN(nn.Module):
    """Fully convolutional VGG16 with skip fusion; returns (N, H, W, num_classes) float32 logits.

    Backbone and score layers compute in `dtype`; skip fusion and upsampling run in float32,
    which is cheap (num_classes channels) and keeps the at-once scaling and logits precise.

    `heads` ((name, classes), ...) gives several score heads on one backbone, as the reference's SIFT Flow
    net (score_fr_sem / score_fr_geo ...): each head has its own score, upsampling and fusion layers, named
    with its suffix, and the logits of all heads are concatenated along the last axis in that order
    (`head_slices`). () = one head of num_classes, with the reference's unsuffixed names.
    """
    num_classes: int = 21
    skips: tuple[str, ...] = ("pool4", "pool3")
    at_once: bool = False
    geometry: str = "caffe"
    width: float = 1.0
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    heads: tuple[tuple[str, int], ...] = ()
    tap_kernel_grads: bool = True  # VGG16's CPU matmul forms: the same values, faster
    fc6_im2col: bool = True

    def _score(self, name, x, num_classes):
        conv = nn.Conv(num_classes, (1, 1), kernel_init=nn.initializers.zeros,
                       dtype=self.dtype, param_dtype=jnp.float32, name=name)
        return conv(x).astype(jnp.float32)

    def _head(self, feats, suffix: str, num_classes: int, offsets: dict, size):
        score = self._score(f"score_fr{suffix}", feats["fc7"], num_classes)
        for skip in self.skips:
            up_name = _SKIP_UPSCORES[skip]
            up = Upsample(num_classes, 4, 2, name=up_name + suffix)(score)
            x = feats[skip] * _AT_ONCE_SCALES[skip] if self.at_once else feats[skip]
            side = self._score(f"score_{skip}{suffix}", x, num_classes)
            if up_name in offsets:
                up = _crop(up, offsets[up_name], side.shape[1:3])
            else:
                side = _crop(side, offsets[f"score_{skip}"], up.shape[1:3])
            score = up + side
        stride = 32 >> len(self.skips)
        name = _FINAL_UPSCORES[stride]
        out = Upsample(num_classes, 2 * stride, stride, name=name + suffix)(score)
        return _crop(out, offsets[name], size)

    @nn.compact
    def __call__(self, images, train: bool = False):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"FCN expects images of shape (N, H, W, 3), got {images.shape}")
        offsets = crop_offsets(self.geometry, self.skips)
        feats = VGG16(self.geometry, self.width, self.dropout_rate, self.dtype, self.tap_kernel_grads,
                      self.fc6_im2col, name="backbone")(images, train)
        heads = [(f"_{name}", classes) for name, classes in self.heads] or [("", self.num_classes)]
        outs = [self._head(feats, suffix, classes, offsets, images.shape[1:3]) for suffix, classes in heads]
        return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)


def head_specs(num_classes: int, heads=()) -> tuple[tuple[str, int], ...]:
    """((name, classes), ...) of a model's score heads: `heads`, or one unnamed head of num_classes."""
    return tuple((str(name), int(k)) for name, k in heads) or (("", int(num_classes)),)


class FCN32s(FCN):
    skips: tuple[str, ...] = ()


class FCN16s(FCN):
    skips: tuple[str, ...] = ("pool4",)


class FCN8s(FCN):
    skips: tuple[str, ...] = ("pool4", "pool3")


class FCN8sAtOnce(FCN):
    skips: tuple[str, ...] = ("pool4", "pool3")
    at_once: bool = True


_MODELS = dict(zip(VGG_VARIANTS, (FCN32s, FCN16s, FCN8s, FCN8sAtOnce)))


def create_model(variant: str, *, resnet_options: dict | None = None, **kwargs) -> nn.Module:
    """The FCN for a variant name; kwargs override its fields (num_classes, geometry, width...).

    A ResNet variant (resnet.ResNetFCN) takes `resnet_options` (output_stride, aux, batch_norm, layers: () = the
    depth's, width_per_group, expansion) and no VGG geometry or width."""
    if variant in resnet.DEPTHS:
        options = dict(resnet_options or {})
        layers = tuple(int(n) for n in options.pop("layers", ()) or resnet.DEPTHS[variant])
        kwargs.pop("geometry", None)
        if kwargs.pop("width", 1.0) != 1.0:
            raise ValueError(f"width scales VGG16 FCNs; size {variant} by its resnet options (layers, "
                             "width_per_group, expansion) instead")
        resnet.check_settings(variant, options.get("output_stride", 8), options.get("batch_norm", "frozen"),
                              kwargs.get("heads", ()), layers, options.get("width_per_group", 64),
                              options.get("expansion", 4))
        return resnet.ResNetFCN(layers=layers, **options, **kwargs)
    if variant not in _MODELS:
        raise ValueError(f"unknown model variant {variant!r}; expected one of {VARIANTS}")
    return _MODELS[variant](**kwargs)


def is_statistic_param(path: tuple[str, ...]) -> bool:
    """True for batch-norm running statistics, which no optimiser updates (resnet.BatchNorm)."""
    return bool(path) and str(path[-1]) in ("mean", "var")


def is_upsample_param(path: tuple[str, ...]) -> bool:
    """True for params of upscore* layers, which the reference freezes (lr 0) at bilinear."""
    return any(str(key).startswith("upscore") for key in path)
