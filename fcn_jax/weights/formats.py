"""Reading the weights users own: Caffe .caffemodel, torchvision VGG16 and ResNet (torchvision_resnet), pytorch-fcn
.pth.

Every reader turns its file into a list of layers `(name, kind, blobs)` in the
source's layout, and `layers_to_params` converts them all in one place into
fcn_jax's parameter tree (models.fcn's names), by this table:

| source layer                        | source layout                 | fcn_jax param (layout)                       |
|-------------------------------------|-------------------------------|----------------------------------------------|
| Convolution / nn.Conv2d             | weight (O, I, kh, kw)         | kernel (kh, kw, I, O) = w.transpose(2,3,1,0) |
| Deconvolution / nn.ConvTranspose2d  | weight (I, O, u, v)           | kernel (u, v, I, O) = w.transpose(2,3,0,1)   |
| InnerProduct / nn.Linear (fc6..fc8) | weight (O, C*k*k), CHW flatten| kernel (k, k, C, O): reshape (O,C,k,k), then |
|                                     |                               | as a conv; C = out channels of previous layer|
| any bias                            | (O,) or legacy (1, 1, 1, O)   | bias (O,)                                    |

Names: VGG layers conv1_1..conv5_3, fc6, fc7 go under 'backbone'; score_fr,
score_pool4, score_pool3, upscore2, upscore_pool4, upscore / upscore16 /
upscore8 stay at the top. torchvision's features.{0,2,5,...,28} are the 13
convs, classifier.0/3/6 are fc6/fc7/fc8. Layers the FCN does not have (fc8,
the 1000-way ImageNet classifier) are kept under their own name so that
`merge_params` reports them as unused.

Input normalisation expected by the weights (recorded in the metadata; core.normalization):
  caffe        -> "caffe_bgr"     BGR, 0..255 minus (104.007, 116.669, 122.679)
  pytorch_fcn  -> "caffe_bgr"     (its models were converted from Caffe)
  torchvision  -> "imagenet_rgb"  RGB, (x/255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
weights.convert fits the params to a model and can fold the other normalisation into conv1_1.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, NamedTuple

import numpy as np

from fcn_jax.weights import caffe_proto, torch_pickle, torchvision_resnet

FORMATS = ("caffe", "torchvision", "pytorch_fcn")
NORMALIZATION_OF_FORMAT = {"caffe": "caffe_bgr", "torchvision": "imagenet_rgb", "pytorch_fcn": "caffe_bgr"}

BACKBONE_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                   "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7")
# torchvision vgg16: indices of the convs in `features`, and of the Linear layers in `classifier`.
_TORCHVISION_NAMES = {
    **{f"features.{i}": name for i, name in zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), BACKBONE_LAYERS)},
    "classifier.0": "fc6",
    "classifier.3": "fc7",
    "classifier.6": "fc8",
}
_CAFFE_KINDS = {"Convolution": "conv", "Deconvolution": "deconv", "InnerProduct": "dense"}


class Layer(NamedTuple):
    """A source layer: name (fcn_jax's where known), kind (conv|deconv|dense|other), blobs in source layout."""

    name: str
    kind: str
    blobs: tuple[np.ndarray, ...]


# ----------------------------------------------------------------------------- layouts


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """OIHW (Caffe Convolution, nn.Conv2d) -> HWIO."""
    return weight.transpose(2, 3, 1, 0)


def upsample_kernel(weight: np.ndarray) -> np.ndarray:
    """(I, O, u, v) (Caffe Deconvolution, nn.ConvTranspose2d) -> (u, v, I, O): models.layers.transposed_conv's."""
    return weight.transpose(2, 3, 0, 1)


def dense_to_conv(weight: np.ndarray, in_channels: int, name: str = "dense") -> np.ndarray:
    """(O, C*k*k) InnerProduct/Linear on a CHW-flattened (C, k, k) map -> the equivalent (k, k, C, O) conv kernel."""
    weight = weight.reshape(-1, weight.shape[-1])  # legacy Caffe blobs are (1, 1, O, K)
    out, flat = weight.shape
    k = int(round((flat / in_channels) ** 0.5)) if flat % in_channels == 0 else 0
    if k * k * in_channels != flat:
        raise ValueError(f"{name}: {flat} inputs are not {in_channels} channels times a square k x k window")
    return conv_kernel(weight.reshape(out, in_channels, k, k))


def layers_to_params(layers: list[Layer]) -> dict:
    """Source layers (in network order) -> nested param dict in fcn_jax's names and layouts."""
    params: dict[str, Any] = {}
    prev_out = None  # channels leaving the previous weighted layer: what a dense layer's input was
    for layer in layers:
        blobs = layer.blobs
        if layer.kind != "other" and len(blobs) > 2:
            raise ValueError(f"{layer.name}: expected a weight and a bias, found {len(blobs)} blobs")
        if layer.kind == "conv":
            entry, prev_out = {"kernel": conv_kernel(blobs[0])}, blobs[0].shape[0]
        elif layer.kind == "deconv":
            entry, prev_out = {"kernel": upsample_kernel(blobs[0])}, blobs[0].shape[1]
        elif layer.kind == "dense":
            if prev_out is None:
                raise ValueError(f"{layer.name}: a fully connected layer needs a conv layer before it")
            entry = {"kernel": dense_to_conv(blobs[0], prev_out, layer.name)}
            prev_out = entry["kernel"].shape[-1]
        else:  # kept as is so that merge_params names it as unexpected
            params[layer.name] = {f"blob{i}": b for i, b in enumerate(blobs)}
            continue
        if len(blobs) == 2:
            entry["bias"] = blobs[1].reshape(-1)
        if layer.name in BACKBONE_LAYERS:
            params.setdefault("backbone", {})[layer.name] = entry
        else:
            params[layer.name] = entry
    return params


# ----------------------------------------------------------------------------- readers


def caffe_layers(path: str) -> list[Layer]:
    """Layers of a .caffemodel (new `layer` or legacy V1 `layers`), Caffe layout."""
    return [Layer(layer.name, _CAFFE_KINDS.get(layer.type, "other"), layer.blobs)
            for layer in caffe_proto.read_caffemodel(path)]


def _state_dict(path: str) -> dict[str, np.ndarray]:
    """A .pth's state_dict: unwraps training checkpoints ({'model_state_dict': ...}) and DataParallel's 'module.'."""
    try:
        obj = torch_pickle.load_torch_file(path)
    except torch_pickle.UnsafePickleError as error:
        raise torch_pickle.UnsafePickleError(
            f"{error} (a training checkpoint? save its weights alone: torch.save(torch.load(f, weights_only=False)"
            "['model'], 'weights.pth'))") from None
    if isinstance(obj, Mapping):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path} does not hold a state_dict (a dict of tensors), but a {type(obj).__name__}")
    return {re.sub(r"^module\.", "", str(k)): v for k, v in obj.items() if isinstance(v, np.ndarray)}


def detect_pth_format(state: Mapping[str, np.ndarray], path: str) -> str:
    """'torchvision' (vgg16, or a ResNet: torchvision_resnet) or 'pytorch_fcn' from the state_dict's keys."""
    if torchvision_resnet.is_resnet(state):
        return "torchvision"
    if any(k.endswith("running_mean") for k in state):
        raise ValueError(f"{path} is a batch-norm VGG (e.g. torchvision vgg16_bn); FCN uses plain VGG16")
    if "features.0.weight" in state:
        return "torchvision"
    if "conv1_1.weight" in state:
        return "pytorch_fcn"
    raise ValueError(
        f"{path} is neither a torchvision vgg16 / ResNet nor a pytorch-fcn state_dict (first keys: {list(state)[:4]})"
    )


def pth_layers(state: Mapping[str, np.ndarray], fmt: str) -> list[Layer]:
    """Layers of a torchvision / pytorch-fcn state_dict in file order, PyTorch layout."""
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        grouped.setdefault(module, {})[leaf] = value
    layers = []
    for module, leaves in grouped.items():
        name = _TORCHVISION_NAMES.get(module, module) if fmt == "torchvision" else module
        if set(leaves) - {"weight", "bias"} or "weight" not in leaves:
            kind = "other"
        elif leaves["weight"].ndim == 2:
            kind = "dense"
        else:
            kind = "deconv" if name.startswith("upscore") else "conv"
        if kind == "other":
            blobs = tuple(leaves.values())
        else:
            blobs = tuple(leaves[k] for k in ("weight", "bias") if k in leaves)
        layers.append(Layer(name, kind, blobs))
    return layers


def load_caffemodel(path: str) -> tuple[dict, dict]:
    """A .caffemodel -> (params in fcn_jax layout, metadata). Covers VGG16 ILSVRC and the FCN models."""
    params = layers_to_params(caffe_layers(path))
    return params, _metadata("caffe", path)


def load_pth(path: str, fmt: str | None = None) -> tuple[dict, dict]:
    """A torchvision vgg16 or pytorch-fcn .pth -> (params in fcn_jax layout, metadata); fmt None = detect."""
    state = _state_dict(path)
    found = detect_pth_format(state, path)
    if fmt is not None and fmt != found:
        raise ValueError(f"--format {fmt}, but {path} holds a {found} state_dict")
    if torchvision_resnet.is_resnet(state):
        return torchvision_resnet.to_params(state), _metadata(found, path)
    return layers_to_params(pth_layers(state, found)), _metadata(found, path)


def load_weights(fmt: str, path: str) -> tuple[dict, dict]:
    """Dispatch on the format name (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown weights format {fmt!r}; expected one of {FORMATS}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    return load_caffemodel(path) if fmt == "caffe" else load_pth(path, fmt)


def _metadata(fmt: str, path: str) -> dict:
    return {"format": fmt, "source": os.path.abspath(path), "normalization": NORMALIZATION_OF_FORMAT[fmt]}
