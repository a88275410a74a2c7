"""FCN-VGG16 segmentation models (Long, Shelhamer, Darrell 2015) in Flax, NHWC.

One code path, `FCN`, builds every variant: a VGG16 backbone (models.vgg), a 1x1 `score_fr` on fc7, and one
upsample-and-fuse step per skip (pool4, then pool3), then a final upsampling to the input size.
FCN-32s/16s/8s/8s-at-once only set its defaults. Parameter names are the reference's
(conv1_1..conv5_3, fc6, fc7, score_fr, score_pool4, score_pool3, upscore2, upscore_pool4,
upscore / upscore16 / upscore8) so imported weights and readers can check us.

Two geometries (models.vgg.PADDING): "caffe", the reference net, whose crops are the reference's
(score_pool4 5, score_pool3 9, upscore 19, upscore16 27, upscore8 31), and "same".
In both, the crop offsets come from the same coordinate-map algebra Caffe uses (`crop_offsets`);
in "caffe" it yields the reference numbers above. In "same" it anchors every crop at (k - s) / 2
rather than at the centre: SAME pooling pads only at the bottom/right, so a centre crop would put
the output up to s/2 - 1 pixels off the input it came from whenever H or W is not a multiple of s.

Upsampling is models.layers.Upsample, a bilinear-initialised transposed convolution.
"""
from fractions import Fraction
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fcn_jax.models import vgg
from fcn_jax.models.layers import Upsample

VARIANTS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce")
# Skip fusion order and the layer that upsamples the running score before each fusion.
_SKIP_UPSCORES = {"pool4": "upscore2", "pool3": "upscore_pool4"}
_VALID_SKIPS = ((), ("pool4",), ("pool4", "pool3"))
# Final upsampling layer by output stride of the fused score.
_FINAL_UPSCORES = {32: "upscore", 16: "upscore16", 8: "upscore8"}
# FCN-8s at-once: fixed scales applied to pool4 / pool3 before scoring (reference Scale layers).
_AT_ONCE_SCALES = {"pool4": 0.01, "pool3": 1e-4}


def _conv_coords(coords, kernel: int, stride: int, pad: int):
    """Coordinate map through a conv/pool: cell y of a map is centred on input pixel a*y + c."""
    a, c = coords
    return a * stride, c + a * (Fraction(kernel - 1, 2) - pad)


def _upsample_coords(coords, kernel: int, stride: int):
    a, c = coords
    return a / stride, c - a * Fraction(kernel - 1, 2 * stride)


def _backbone_coords(geometry: str) -> dict:
    """Coordinate maps of pool3, pool4 and fc7 for a geometry, walking VGG16's layers."""
    pads = vgg.PADDING[geometry]
    coords, out = (Fraction(1), Fraction(0)), {}
    for block, layers in enumerate(vgg.BLOCKS, start=1):
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
    vgg.check_geometry(geometry)
    if tuple(skips) not in _VALID_SKIPS:
        raise ValueError(f"unsupported skips {skips!r}; expected one of {_VALID_SKIPS}")


def _crop(x, offset: int, size):
    """x[:, offset:offset+h, offset:offset+w] for size (h, w)."""
    return x[:, offset:offset + size[0], offset:offset + size[1]]


class FCN(nn.Module):
    """Fully convolutional VGG16 with skip fusion; returns (N, H, W, num_classes) float32 logits.

    Backbone and score layers compute in `dtype`; skip fusion and upsampling run in float32,
    which is cheap (num_classes channels) and keeps the at-once scaling and logits precise.

    `heads` ((name, classes), ...) gives several score heads on one backbone, as the reference's SIFT Flow
    net (score_fr_sem / score_fr_geo ...): each head has its own score, upsampling and fusion layers, named
    with its suffix, and the logits of all heads are concatenated along the last axis in that order
    (zoo.head_specs; losses.split_logits cuts them apart). () = one head of num_classes, with the reference's
    unsuffixed names.
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
    winograd_tile: int = 4  # 3x3 convs with >= winograd_min_channels inputs by F(tile x tile, 3x3); 0: none
    winograd_min_channels: int = 128

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
        feats = vgg.VGG16(self.geometry, self.width, self.dropout_rate, self.dtype, self.tap_kernel_grads,
                          self.fc6_im2col, self.winograd_tile, self.winograd_min_channels,
                          name="backbone")(images, train)
        heads = [(f"_{name}", classes) for name, classes in self.heads] or [("", self.num_classes)]
        outs = [self._head(feats, suffix, classes, offsets, images.shape[1:3]) for suffix, classes in heads]
        return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)


class FCN32s(FCN):
    skips: tuple[str, ...] = ()


class FCN16s(FCN):
    skips: tuple[str, ...] = ("pool4",)


class FCN8s(FCN):
    skips: tuple[str, ...] = ("pool4", "pool3")


class FCN8sAtOnce(FCN):
    skips: tuple[str, ...] = ("pool4", "pool3")
    at_once: bool = True


MODELS = dict(zip(VARIANTS, (FCN32s, FCN16s, FCN8s, FCN8sAtOnce)))
