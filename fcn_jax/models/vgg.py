"""VGG16 (Simonyan & Zisserman) as the FCNs and the classifier use it: 13 3x3 convolutions in five blocks, each
block ending in a 2x2/2 max pool, then fc6 (a 7x7 convolution) and fc7 (1x1), 4096 channels at width 1.

`convs` creates conv1_1..conv5_3 in the calling module's scope, so the backbone (`VGG16`) and the classifier
(models.classifier) share one definition of the layers and their names. Pools round up (Caffe's ceil mode), the
same as flooring on the even sizes a 224x224 classifier sees.

Two geometries (`PADDING`):
  "caffe": the reference net: conv1_1 pads by 100 so that the 7x7 VALID fc6 fits any input;
  "same":  SAME padding everywhere (fc6 too), no pad 100: a smaller, cheaper net.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fcn_jax.models import conv_forms, layers, winograd

# VGG16 convolutions by block: (name, channels at width 1). Each block ends in a 2x2/2 max pool.
BLOCKS = (
    (("conv1_1", 64), ("conv1_2", 64)),
    (("conv2_1", 128), ("conv2_2", 128)),
    (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256)),
    (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512)),
    (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512)),
)
CONV_NAMES = tuple(name for block in BLOCKS for name, _ in block)
FC_CHANNELS = 4096
GEOMETRIES = ("caffe", "same")
# Spatial padding of the layers whose padding differs between geometries; other 3x3 convs pad 1.
PADDING = {
    "caffe": {"conv1_1": 100, "fc6": 0},
    "same": {"conv1_1": 1, "fc6": 3},
}


def scaled_channels(channels: int, width: float) -> int:
    """Channel count under a width multiplier; never below 1."""
    return max(1, round(channels * width))


def check_geometry(geometry: str) -> None:
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; expected one of {GEOMETRIES}")


def conv(name: str, channels: int, kernel: int, padding: int, *, width: float, dtype: Any = jnp.float32,
         impl=None) -> nn.Conv:
    """One of VGG16's convolutions at `width`, params float32; `impl`: a conv_forms matmul form (None: XLA's)."""
    return nn.Conv(scaled_channels(channels, width), (kernel, kernel), padding=((padding, padding),) * 2, dtype=dtype,
                   param_dtype=jnp.float32, name=name, conv_general_dilated=impl)


def convs(x, *, width: float, padding: dict, dtype: Any = jnp.float32, tap_kernel_grads: bool = False,
          winograd_tile: int = 0, winograd_min_channels: int = 128) -> dict:
    """conv1_1..conv5_3, each followed by ReLU, and the five max pools: {"pool1": ..., "pool5": ...}.

    padding: {layer: spatial padding} for the layers that do not pad 1 (0 for every layer: VALID convs).
    tap_kernel_grads: the kernel gradients as one matmul per tap (conv_forms.tap_conv): the same values, faster on
    XLA:CPU. winograd_tile 2 or 4: the layers with >= winograd_min_channels inputs by Winograd F(tile x tile, 3x3)
    (models.winograd; fp32 on the CPU), equal within its stated tolerance; 0: none."""
    feats = {}
    for block, block_layers in enumerate(BLOCKS, start=1):
        for name, channels in block_layers:
            impl = winograd.form(winograd_tile, x.shape[-1], winograd_min_channels,
                                 fallback=conv_forms.tap_conv if tap_kernel_grads else None)
            x = layers.relu(conv(name, channels, 3, padding.get(name, 1), width=width, dtype=dtype, impl=impl)(x))
        x = feats[f"pool{block}"] = layers.max_pool_ceil(x)
    return feats


class VGG16(nn.Module):
    """The FCN backbone: VGG16's convolutions plus fc6 (7x7 conv) and fc7 (1x1 conv); returns pool3, pool4, fc7.

    tap_kernel_grads: the 3x3 convolutions take their kernel gradient as one matmul per tap (conv_forms.tap_conv);
    fc6_im2col: fc6 runs as one im2col matmul (conv_forms.im2col_conv). Both compute the same values, faster on
    XLA:CPU, and change nothing on other backends. winograd_tile, winograd_min_channels: see `convs`."""
    geometry: str = "caffe"
    width: float = 1.0
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    tap_kernel_grads: bool = True
    fc6_im2col: bool = True
    winograd_tile: int = 4
    winograd_min_channels: int = 128

    @nn.compact
    def __call__(self, images, train: bool = False):
        check_geometry(self.geometry)
        pads = PADDING[self.geometry]
        feats = convs(images.astype(self.dtype), width=self.width, padding=pads, dtype=self.dtype,
                      tap_kernel_grads=self.tap_kernel_grads, winograd_tile=self.winograd_tile,
                      winograd_min_channels=self.winograd_min_channels)
        x = feats["pool5"]
        for name, k, p in (("fc6", 7, pads["fc6"]), ("fc7", 1, 0)):
            impl = conv_forms.tap_conv if self.tap_kernel_grads and k > 1 else None
            if name == "fc6" and self.fc6_im2col:
                impl = conv_forms.im2col_conv
            x = layers.relu(conv(name, FC_CHANNELS, k, p, width=self.width, dtype=self.dtype, impl=impl)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return dict(pool3=feats["pool3"], pool4=feats["pool4"], fc7=x)
