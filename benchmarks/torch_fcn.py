"""PyTorch reference of fcn_jax's FCN-VGG16 (NCHW), to time fcn_jax against and to check it by.

Written from the reference net, not from fcn_jax.models, so that equal outputs mean something:
  "caffe": conv1_1 pad 100, ceil-mode 2x2 pools, fc6 7x7 VALID, the reference crops
           (score_pool4 5, score_pool3 9, upscore 19, upscore16 27, upscore8 31).
  "same":  conv1_1 pad 1, fc6 pad 3; the upsampled map is cropped by its overhang (k - s) / 2.
Only the channel table (names and widths) is shared with fcn_jax.

`dtype=torch.bfloat16` runs backbone and score layers under autocast (on the input's device) and the fusion
and upsampling in float32, as fcn_jax's `dtype=bfloat16` does (params stay float32 in both).
"""
import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcn_jax.models.vgg import BLOCKS as VGG16_BLOCKS
from fcn_jax.models.vgg import FC_CHANNELS, scaled_channels

# torch memory formats both benchmarks time; ratios use the faster.
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}

SKIPS = {"fcn32s": (), "fcn16s": ("pool4",), "fcn8s": ("pool4", "pool3"),
         "fcn8s_atonce": ("pool4", "pool3")}
SKIP_UPSCORES = {"pool4": "upscore2", "pool3": "upscore_pool4"}
FINAL_UPSCORES = {32: "upscore", 16: "upscore16", 8: "upscore8"}
CAFFE_CROPS = {"score_pool4": 5, "score_pool3": 9, "upscore": 19, "upscore16": 27, "upscore8": 31}
AT_ONCE_SCALES = {"pool4": 0.01, "pool3": 1e-4}


def _crop(x, offset: int, size):
    """x[:, :, offset:offset+h, offset:offset+w] for size (h, w)."""
    return x[:, :, offset:offset + size[0], offset:offset + size[1]]


class TorchFCN(nn.Module):
    """FCN-32s/16s/8s/8s-at-once; forward takes (N, 3, H, W) and returns (N, K, H, W) float32."""

    def __init__(self, variant: str = "fcn8s", num_classes: int = 21, geometry: str = "caffe",
                 width: float = 1.0, dropout_rate: float = 0.5, dtype=torch.float32):
        super().__init__()
        if variant not in SKIPS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {tuple(SKIPS)}")
        if geometry not in ("caffe", "same"):
            raise ValueError(f"unknown geometry {geometry!r}; expected caffe or same")
        self.skips, self.at_once = SKIPS[variant], variant == "fcn8s_atonce"
        self.geometry, self.dtype = geometry, dtype
        self.convs, self.scores, self.upscores = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        channels, block_out = 3, {}
        for block, layers in enumerate(VGG16_BLOCKS, start=1):
            for name, c in layers:
                pad = 100 if name == "conv1_1" and geometry == "caffe" else 1
                self.convs[name] = nn.Conv2d(channels, scaled_channels(c, width), 3, padding=pad)
                channels = scaled_channels(c, width)
            block_out[f"pool{block}"] = channels
        fc = scaled_channels(FC_CHANNELS, width)
        self.convs["fc6"] = nn.Conv2d(channels, fc, 7, padding=0 if geometry == "caffe" else 3)
        self.convs["fc7"] = nn.Conv2d(fc, fc, 1)
        self.dropout = nn.Dropout(dropout_rate)
        self.scores["score_fr"] = nn.Conv2d(fc, num_classes, 1)
        for skip in self.skips:
            self.scores[f"score_{skip}"] = nn.Conv2d(block_out[skip], num_classes, 1)
            self.upscores[SKIP_UPSCORES[skip]] = nn.ConvTranspose2d(
                num_classes, num_classes, 4, 2, bias=False)
        self.stride = 32 >> len(self.skips)
        self.final = FINAL_UPSCORES[self.stride]
        self.upscores[self.final] = nn.ConvTranspose2d(
            num_classes, num_classes, 2 * self.stride, self.stride, bias=False)

    def _autocast(self, device_type: str):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def _upsample(self, name, x):
        with torch.autocast(x.device.type, enabled=False):
            return self.upscores[name](x.float())

    def forward(self, images):
        feats, x = {}, images
        with self._autocast(images.device.type):
            for block, layers in enumerate(VGG16_BLOCKS, start=1):
                for name, _ in layers:
                    x = F.relu(self.convs[name](x))
                x = feats[f"pool{block}"] = F.max_pool2d(x, 2, 2, ceil_mode=True)
            for name in ("fc6", "fc7"):
                x = self.dropout(F.relu(self.convs[name](x)))
            score = self.scores["score_fr"](x).float()
            sides = {skip: self.scores[f"score_{skip}"](
                feats[skip] * AT_ONCE_SCALES[skip] if self.at_once else feats[skip]).float()
                for skip in self.skips}
        for skip in self.skips:
            up, side = self._upsample(SKIP_UPSCORES[skip], score), sides[skip]
            if self.geometry == "caffe":
                side = _crop(side, CAFFE_CROPS[f"score_{skip}"], up.shape[2:])
            else:
                up = _crop(up, 1, side.shape[2:])  # (4 - 2) / 2
            score = up + side
        out = self._upsample(self.final, score)
        offset = CAFFE_CROPS[self.final] if self.geometry == "caffe" else self.stride // 2
        return _crop(out, offset, images.shape[2:])


def load_fcn_jax_params(model: TorchFCN, params) -> TorchFCN:
    """Copy an fcn_jax params tree (arrays, any nesting of dicts) into `model`, strictly.

    Flax conv kernels are HWIO, torch's OIHW; fcn_jax's transposed-conv kernel (k, k, Cin, Cout)
    is torch ConvTranspose2d's (Cin, Cout, k, k). Every torch tensor must be filled exactly once.
    """
    flat = {}
    for scope, layers in (("backbone", model.convs), ("", model.scores), ("", model.upscores)):
        tree = params[scope] if scope else params
        for name, module in layers.items():
            if name not in tree:
                raise KeyError(f"fcn_jax params have no layer {'/'.join(filter(None, (scope, name)))}")
            kernel = np.asarray(tree[name]["kernel"], np.float32)
            if isinstance(module, nn.ConvTranspose2d):
                flat[module.weight] = kernel.transpose(2, 3, 0, 1)
            else:
                flat[module.weight] = kernel.transpose(3, 2, 0, 1)
                flat[module.bias] = np.asarray(tree[name]["bias"], np.float32)
    with torch.no_grad():
        for tensor, value in flat.items():
            if tuple(tensor.shape) != value.shape:
                raise ValueError(f"shape mismatch: torch {tuple(tensor.shape)} vs fcn_jax {value.shape}")
            tensor.copy_(torch.from_numpy(np.array(value)))  # a writable copy
    if len(flat) != len(list(model.parameters())):
        raise ValueError(f"filled {len(flat)} of {len(list(model.parameters()))} torch tensors")
    return model
