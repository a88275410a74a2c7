"""Writes tests/fixtures/torchvision_resnet_*.{json,npz} with real torchvision (torch 2.14.1, torchvision 0.29.1):

    python -m venv /tmp/tvvenv && /tmp/tvvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy
    /tmp/tvvenv/bin/python scripts/make_resnet_fixtures.py

  torchvision_resnet_keys.json  {model: {key: shape}} of the state_dicts of fcn_resnet50 / fcn_resnet101 (with their
                                aux_classifier) and resnet50 / resnet101, as torchvision builds them (full size)
  torchvision_resnet_tiny.npz   a tiny FCN made of torchvision's own classes (ResNet with Bottleneck blocks of
                                expansion 1, width_per_group 4, layers (1, 1, 2, 2), dilated as fcn_resnet50 is;
                                IntermediateLayerGetter, FCNHead, FCN), its weights and batch-norm statistics set to
                                `pattern` of their index in the state_dict: its keys and shapes, and its eval-mode
                                "out" and "aux" on `fixture_input` (N, C, H, W) = (2, 3, 37, 45)
The weights of the tiny net are a formula, so the test rebuilds them without torch and the fixture stays small.
"""
from __future__ import annotations

import json
import os

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
TINY = {"layers": (1, 1, 2, 2), "width_per_group": 4, "expansion": 1, "num_classes": 3}
INPUT_SHAPE = (2, 3, 37, 45)  # odd sizes: the stride-2 convs and the final resize round


def fixture_input(shape=INPUT_SHAPE) -> np.ndarray:
    n, c, h, w = np.indices(shape)
    return (((n * 5 + c * 29 + h * 7 + w * 13) % 17) / 8.0 - 1.0).astype(np.float32)


def pattern(index: int, key: str, shape) -> np.ndarray:
    """Deterministic values for state_dict entry `index`: He-scaled kernels, batch norm near identity with
    non-trivial statistics (running_var > 0), small biases."""
    size = int(np.prod(shape)) if shape else 1
    u = ((np.arange(size, dtype=np.int64) * 7919 + index * 104729) % 2003) / 2003.0 - 0.5  # uniform in [-0.5, 0.5)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    if leaf == "running_var":
        values = 0.5 + (u + 0.5)
    elif leaf == "running_mean" or leaf == "bias":
        values = 0.2 * u
    elif len(shape) == 1:  # a batch norm's weight
        values = 1.0 + 0.4 * u
    else:
        values = u * np.sqrt(12.0 / int(np.prod(shape[1:])))  # variance 1 / fan_in: activations stay O(1)
    return values.reshape(shape).astype(np.float32)


def tiny_model():
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.resnet import Bottleneck, ResNet
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    class Block(Bottleneck):
        expansion = TINY["expansion"]

    backbone = ResNet(Block, list(TINY["layers"]), width_per_group=TINY["width_per_group"],
                      replace_stride_with_dilation=[False, True, True])
    backbone = IntermediateLayerGetter(backbone, return_layers={"layer4": "out", "layer3": "aux"})
    channels = 512 * TINY["expansion"]
    return FCN(backbone, FCNHead(channels, TINY["num_classes"]), FCNHead(channels // 2, TINY["num_classes"]))


def main():
    import torch
    import torchvision

    models = {"fcn_resnet50": torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None,
                                                                          aux_loss=True),
              "fcn_resnet101": torchvision.models.segmentation.fcn_resnet101(weights=None, weights_backbone=None,
                                                                            aux_loss=True),
              "resnet50": torchvision.models.resnet50(), "resnet101": torchvision.models.resnet101()}
    keys = {name: {k: list(v.shape) for k, v in model.state_dict().items()} for name, model in models.items()}
    keys["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    with open(os.path.join(FIXTURES, "torchvision_resnet_keys.json"), "w") as f:
        json.dump(keys, f, indent=0)

    model = tiny_model()
    state = {k: torch.from_numpy(pattern(i, k, tuple(v.shape))) for i, (k, v) in enumerate(model.state_dict().items())}
    model.load_state_dict(state)
    model.eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(fixture_input()))
    np.savez(os.path.join(FIXTURES, "torchvision_resnet_tiny.npz"), keys=np.array(list(state)),
             shapes=json.dumps([list(v.shape) for v in state.values()]), out=out["out"].numpy(),
             aux=out["aux"].numpy(), torch=torch.__version__, torchvision=torchvision.__version__)
    print({k: len(v) for k, v in keys.items()}, out["out"].shape, float(out["out"].abs().max()))


if __name__ == "__main__":
    main()
