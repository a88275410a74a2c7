"""torchvision ResNet state_dicts -> resnet.ResNetFCN params: fcn_resnet50 / fcn_resnet101, and the plain resnet50 /
resnet101 ImageNet backbones (to train from ImageNet; their `fc` is reported unused).

| torchvision key (fcn_*: under `backbone.`)                 | fcn_jax param                                  |
|------------------------------------------------------------|------------------------------------------------|
| conv1.weight, layer<i>.<j>.conv<k>.weight (O, I, kh, kw)    | backbone/conv1, backbone/layer<i>_<j>/conv<k>: |
|                                                            | kernel (kh, kw, I, O) = w.transpose(2, 3, 1, 0) |
| bn1, layer<i>.<j>.bn<k>: weight, bias, running_mean / _var  | .../bn<k>: scale, bias, mean, var              |
| layer<i>.<j>.downsample.0 / .1                             | .../downsample_conv / downsample_bn            |
| classifier.0 / .1 / .4, aux_classifier.0 / .1 / .4          | classifier/conv, bn, score (and aux_classifier)|
| fc.weight (O, I), fc.bias                                  | fc/kernel (I, O), fc/bias                      |
num_batches_tracked counters carry nothing a forward uses and are dropped.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np
from flax import traverse_util

_HEAD_LAYERS = {"0": "conv", "1": "bn", "4": "score"}
_LEAVES = {"bias": "bias", "running_mean": "mean", "running_var": "var"}


def is_resnet(state: Mapping[str, np.ndarray]) -> bool:
    return any(re.fullmatch(r"(backbone\.)?layer1\.0\.conv1\.weight", key) for key in state)


def _module_path(module: str) -> tuple[str, ...]:
    head = re.fullmatch(r"(aux_classifier|classifier)\.(\d+)", module)
    if head:
        return head.group(1), _HEAD_LAYERS.get(head.group(2), head.group(2))
    module = module.removeprefix("backbone.")
    if module == "fc":
        return ("fc",)
    block = re.fullmatch(r"(layer\d+)\.(\d+)\.(.+)", module)
    if block:
        layer = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(block.group(3), block.group(3))
        return "backbone", f"{block.group(1)}_{block.group(2)}", layer
    return "backbone", module


def _leaf(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    if name != "weight":
        return _LEAVES.get(name, name), value
    if value.ndim == 4:
        return "kernel", value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return "kernel", value.T
    return "scale", value  # a batch norm's weight


def to_params(state: Mapping[str, np.ndarray]) -> dict:
    """The state_dict as a nested fcn_jax param dict (see the table); weights.merge.merge_params fits it to a model."""
    flat = {}
    for key, value in state.items():
        module, _, name = key.rpartition(".")
        if name == "num_batches_tracked":
            continue
        leaf, array = _leaf(name, np.asarray(value))
        flat[(*_module_path(module), leaf)] = np.ascontiguousarray(array)
    return traverse_util.unflatten_dict(flat)
