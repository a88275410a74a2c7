"""Dilated ResNet FCNs as torchvision builds them (`fcn_resnet50` / `fcn_resnet101`), with their param names.

    images -> ResNet (conv1 7x7/2, bn1, relu, maxpool 3x3/2, layer1..layer4 of Bottleneck blocks; the last stages
    dilated instead of strided for output stride 16 or 8) -> layer4 -> classifier (FCNHead: 3x3 conv to in/4, batch
    norm, relu, dropout, 1x1 conv to the classes) -> bilinear resize to the image size (align_corners=False).
    With `aux`, an aux_classifier FCNHead on layer3, sown into the "aux" collection when that is mutable (training's
    auxiliary loss, torchvision's result["aux"]); inference never computes it.

Batch norm keeps its running statistics as params (`mean`, `var`) that the optimiser never updates
(train.step.param_labels freezes them), so checkpoints, converted weights and every inference path carry them like any
param. batch_norm "frozen": training normalises with them too (fine-tuning at small batch, torchvision's
FrozenBatchNorm2d). "sync": training normalises with the batch's own mean and biased variance; under jit the batch
is the global one sharded over the data mesh, so the statistics are synchronised over every device, and
train_step updates the running ones from what is sown into "batch_stats" (momentum 0.1, unbiased variance, as
torch). Evaluation always uses the running statistics.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax.models import winograd

DEPTHS = {"fcn_resnet50": (3, 4, 6, 3), "fcn_resnet101": (3, 4, 23, 3)}
BATCH_NORMS = ("frozen", "sync")
BN_MOMENTUM, BN_EPS = 0.1, 1e-5
# Output stride -> which of layer2..layer4 replace their stride by dilation (torchvision's
# replace_stride_with_dilation).
_DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


class BatchNorm(nn.Module):
    batch_stats: bool = False  # normalise with (and sow) the batch's statistics instead of the running ones

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        mean = jax.lax.stop_gradient(self.param("mean", nn.initializers.zeros, (channels,)))
        var = jax.lax.stop_gradient(self.param("var", nn.initializers.ones, (channels,)))
        y = x.astype(jnp.float32)
        if self.batch_stats:
            mean, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
            count = y.size // channels
            self.sow("batch_stats", "mean", jax.lax.stop_gradient(mean))
            self.sow("batch_stats", "var", jax.lax.stop_gradient(var * count / max(count - 1, 1)))
        y = (y - mean) * jax.lax.rsqrt(var + BN_EPS) * scale + bias
        return y.astype(x.dtype)


def running_statistics(params: Any, sown: Any, momentum: float = BN_MOMENTUM) -> Any:
    """params with every batch norm's `mean` / `var` moved towards the batch statistics sown into "batch_stats"."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(params)
    for path, (value,) in traverse_util.flatten_dict(sown).items():
        flat[path] = (1 - momentum) * flat[path] + momentum * value.astype(flat[path].dtype)
    return traverse_util.unflatten_dict(flat)


class Bottleneck(nn.Module):
    planes: int
    stride: int
    dilation: int
    downsample: bool
    width_per_group: int
    expansion: int
    batch_stats: bool
    dtype: Any
    winograd: tuple[int, int] = (0, 0)  # (tile, min_channels) of the 3x3 convs (models.winograd.form)

    @nn.compact
    def __call__(self, x):
        width = int(self.planes * self.width_per_group / 64)

        def conv(name, features, k, stride=1, dilation=1):
            pad = dilation * (k // 2)
            impl = winograd.form(self.winograd[0], width, self.winograd[1]) if k == 3 else None
            return nn.Conv(features, (k, k), strides=stride, padding=((pad, pad), (pad, pad)),
                           kernel_dilation=dilation, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                           name=name, conv_general_dilated=impl)

        bn = lambda name: BatchNorm(self.batch_stats, name=name)  # noqa: E731
        out = nn.relu(bn("bn1")(conv("conv1", width, 1)(x)))
        out = nn.relu(bn("bn2")(conv("conv2", width, 3, self.stride, self.dilation)(out)))
        out = bn("bn3")(conv("conv3", self.planes * self.expansion, 1)(out))
        if self.downsample:
            x = bn("downsample_bn")(conv("downsample_conv", self.planes * self.expansion, 1, self.stride)(x))
        return nn.relu(out + x)


class ResNet(nn.Module):
    """torchvision's ResNet (v1.5: stride on the 3x3 conv) up to layer4; returns {"layer3", "layer4"}."""
    layers: tuple[int, ...]
    output_stride: int = 8
    width_per_group: int = 64
    expansion: int = 4
    batch_stats: bool = False
    dtype: Any = jnp.float32
    winograd: tuple[int, int] = (0, 0)  # (tile, min_channels) of the 3x3 convs (models.winograd.form)

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(64, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                    param_dtype=jnp.float32, name="conv1")(x.astype(self.dtype))
        x = nn.relu(BatchNorm(self.batch_stats, name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        inplanes, dilation, feats = 64, 1, {}
        for index, (planes, blocks, dilate) in enumerate(
                zip((64, 128, 256, 512), self.layers, (False, *_DILATE[self.output_stride])), start=1):
            stride, previous_dilation = (1 if index == 1 else 2), dilation
            if dilate:
                dilation, stride = dilation * stride, 1
            for block in range(blocks):
                x = Bottleneck(planes, stride if block == 0 else 1, previous_dilation if block == 0 else dilation,
                               block == 0 and (stride != 1 or inplanes != planes * self.expansion),
                               self.width_per_group, self.expansion, self.batch_stats, self.dtype,
                               self.winograd, name=f"layer{index}_{block}")(x)
                inplanes = planes * self.expansion
            feats[f"layer{index}"] = x
        return {"layer3": feats["layer3"], "layer4": feats["layer4"]}


class FCNHead(nn.Module):
    num_classes: int
    dropout_rate: float
    batch_stats: bool
    dtype: Any
    winograd: tuple[int, int] = (0, 0)  # (tile, min_channels) of the 3x3 conv (models.winograd.form)

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(x.shape[-1] // 4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                    param_dtype=jnp.float32, name="conv",
                    conv_general_dilated=winograd.form(self.winograd[0], x.shape[-1], self.winograd[1]))(x)
        x = nn.relu(BatchNorm(self.batch_stats, name="bn")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name="score")(x)


class ResNetFCN(nn.Module):
    """fcn_resnet50 / fcn_resnet101: (N, H, W, 3) -> (N, H, W, num_classes) float32 logits (see the module doc)."""
    num_classes: int = 21
    layers: tuple[int, ...] = DEPTHS["fcn_resnet50"]
    output_stride: int = 8
    width_per_group: int = 64
    expansion: int = 4
    aux: bool = True
    batch_norm: str = "frozen"
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32
    heads: tuple[tuple[str, int], ...] = ()  # one head only (zoo.head_specs)
    winograd_tile: int = 4  # 3x3 convs with >= winograd_min_channels inputs by F(tile x tile, 3x3); 0: none
    winograd_min_channels: int = 128

    @nn.compact
    def __call__(self, images, train: bool = False):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"FCN expects images of shape (N, H, W, 3), got {images.shape}")
        batch_stats = train and self.batch_norm == "sync"
        winograd_form = (self.winograd_tile, self.winograd_min_channels)
        feats = ResNet(tuple(self.layers), self.output_stride, self.width_per_group, self.expansion, batch_stats,
                       self.dtype, winograd_form, name="backbone")(images)
        size = images.shape[:3]

        def head(name, x):
            logits = FCNHead(self.num_classes, self.dropout_rate, batch_stats, self.dtype, winograd_form,
                             name=name)(x, train)
            return jax.image.resize(logits.astype(jnp.float32), (*size, self.num_classes), "bilinear")

        if self.aux and (self.is_initializing() or self.is_mutable_collection("aux")):
            self.sow("aux", "logits", head("aux_classifier", feats["layer3"]))
        return head("classifier", feats["layer4"])


def check_settings(variant: str, output_stride: int, batch_norm: str, heads, layers=(1, 1, 1, 1),
                   width_per_group: int = 64, expansion: int = 4) -> None:
    if variant not in DEPTHS:
        raise ValueError(f"unknown ResNet variant {variant!r}; expected one of {tuple(DEPTHS)}")
    if len(layers) != 4 or min(layers) < 1:
        raise ValueError(f"layers {tuple(layers)}: blocks of the four stages layer1..layer4, each >= 1 (() = the "
                         "depth's)")
    if width_per_group < 1 or expansion < 1:
        raise ValueError(f"width_per_group {width_per_group} and expansion {expansion} must be >= 1")
    if output_stride not in _DILATE:
        raise ValueError(f"output_stride {output_stride}: expected one of {sorted(_DILATE)}")
    if batch_norm not in BATCH_NORMS:
        raise ValueError(f"batch_norm {batch_norm!r}: expected one of {BATCH_NORMS}")
    if heads:
        raise ValueError(f"{variant} has one score head; several heads ({heads}) need a VGG16 FCN")
