"""Importing the weights users own: Caffe .caffemodel, torchvision VGG16 and ResNet (torchvision_resnet), pytorch-fcn .pth.

Every reader turns its file into a list of layers `(name, kind, blobs)` in the
source's layout, and `layers_to_params` converts them all in one place into
fcn_jax's parameter tree (see models.py), by this table:

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

Input normalisation expected by the weights (recorded in the metadata, names
as in input_pipeline.NORMALIZATIONS):
  caffe        -> "caffe_bgr"     BGR, 0..255 minus (104.007, 116.669, 122.679)
  pytorch_fcn  -> "caffe_bgr"     (its models were converted from Caffe)
  torchvision  -> "imagenet_rgb"  RGB, (x/255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
`change_normalization` re-expresses conv1_1 for the other one: the channel
order, scale and mean are folded into its kernel and bias. That is exact
wherever conv1_1 sees only image pixels; its zero padding means "mean pixel"
in both, and the two means differ by < 1 grey level, so outputs near the
border move by a tiny amount.

Converted weights are an orbax checkpoint {'params': params} plus a JSON
sidecar (`checkpoints.save_params` / `checkpoints.load_converted`), usable as a
training `config.init_from` and by evaluate/predict.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np
from flax import traverse_util

from fcn_jax import caffe_proto, inference, torch_pickle, torchvision_resnet
from fcn_jax.constants import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD, check_normalization

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
    """(I, O, u, v) (Caffe Deconvolution, nn.ConvTranspose2d) -> (u, v, I, O), models.transposed_conv's layout."""
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


# ----------------------------------------------------------------------------- normalisation


def _normalization_affine(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(A, c) with network input x = A @ rgb + c for an RGB pixel in 0..255."""
    if check_normalization(name) == "caffe_bgr":
        return np.eye(3)[::-1], -np.asarray(CAFFE_BGR_MEAN)
    std = np.asarray(IMAGENET_STD)
    return np.diag(1 / (255 * std)), -np.asarray(IMAGENET_MEAN) / std


def change_normalization(params: dict, source: str, target: str) -> dict:
    """Re-expresses backbone/conv1_1 so that it takes `target`-normalised input instead of `source`.

    With x_s = A_s p + c_s: W' = W A_s A_t^-1 on the input-channel axis, b' = b + sum(W c_s) - sum(W' c_t).
    """
    if source == target:
        return params
    if "conv1_1" not in params.get("backbone", {}):
        raise ValueError(f"only VGG16's conv1_1 (it has a bias) can take another input normalisation ({target}) "
                         f"folded into it; use these weights with their own, config.data.normalization={source!r}")
    a_s, c_s = _normalization_affine(source)
    a_t, c_t = _normalization_affine(target)
    conv = params["backbone"]["conv1_1"]
    w = np.asarray(conv["kernel"], np.float64)  # (kh, kw, 3, O)
    w_new = np.einsum("hwjo,ji->hwio", w, a_s @ np.linalg.inv(a_t))
    b_new = conv["bias"] + np.einsum("hwjo,j->o", w, c_s) - np.einsum("hwio,i->o", w_new, c_t)
    dtype = conv["kernel"].dtype
    new_conv = {"kernel": w_new.astype(dtype), "bias": b_new.astype(dtype)}
    return {**params, "backbone": {**params["backbone"], "conv1_1": new_conv}}


# ----------------------------------------------------------------------------- merging


class ParamMismatchError(ValueError):
    """Weights that do not fit a param tree; `problems` lists them ('missing: ...', 'unexpected: ...', ...)."""

    def __init__(self, problems: list[str]):
        super().__init__("weights do not fit the model: " + "; ".join(problems))
        self.problems = problems


def _path_name(path: tuple) -> str:
    return "/".join(map(str, path))


def _layer_names(paths: list[tuple], tree_paths) -> list[str]:
    """Sorted names for messages: a layer when all its leaves are in `paths`, else 'layer/leaf'."""
    chosen, names = set(paths), set()
    for path in paths:
        parent = path[:-1]
        whole = parent and all(p in chosen for p in tree_paths if p[:-1] == parent)
        names.add(_path_name(parent if whole else path))
    return sorted(names)


def merge_params(template: Mapping, loaded: Mapping, strict: bool = True) -> tuple[dict, dict]:
    """Fills `template`'s leaves from `loaded`, matching by path; returns (params, report).

    template: any nested param dict (arrays, or ShapeDtypeStructs from jax.eval_shape when every
    leaf will be loaded). Loaded leaves are cast to the template leaf's dtype. Shape mismatches
    are always an error; with strict=True so are template leaves missing from `loaded` and
    `loaded` leaves the template lacks. With strict=False missing leaves keep the template's
    value ('new') and extra ones are dropped ('unused'). All problems come in one
    ParamMismatchError (a ValueError).
    report: {'loaded', 'new', 'unused'}: lists of layer names ('backbone/conv1_1', 'fc8', ...).
    """
    want = traverse_util.flatten_dict(template)
    have = traverse_util.flatten_dict(loaded)
    missing = [p for p in want if p not in have]
    unused = [p for p in have if p not in want]
    mismatched = sorted(
        f"{_path_name(p)} {tuple(np.shape(have[p]))} in weights vs {tuple(want[p].shape)} in model"
        for p in want
        if p in have and tuple(np.shape(have[p])) != tuple(want[p].shape)
    )
    problems = []
    if strict and missing:
        problems.append("missing: " + ", ".join(_layer_names(missing, want)))
    if strict and unused:
        problems.append("unexpected: " + ", ".join(_layer_names(unused, have)))
    if mismatched:
        problems.append("shape mismatch: " + ", ".join(mismatched))
    if problems:
        raise ParamMismatchError(problems)
    merged = {p: np.asarray(have[p], dtype=want[p].dtype) if p in have else want[p] for p in want}
    report = {
        "loaded": _layer_names([p for p in want if p in have], want),
        "new": _layer_names(missing, want),
        "unused": _layer_names(unused, have),
    }
    return traverse_util.unflatten_dict(merged), report


# ----------------------------------------------------------------------------- convert / save / load


def model_template(variant: str, num_classes: int, width: float = 1.0, initialise: bool = False, seed: int = 0,
                   resnet: Mapping | None = None):
    """The param tree of `variant` (caffe geometry): shapes only, or freshly initialised values."""
    model = inference.create_model(variant, num_classes=num_classes, width=width, geometry="caffe", resnet=resnet)
    return inference.init_params(model, jax.random.PRNGKey(seed) if initialise else None, image_size=1)


def convert(
    fmt: str,
    path: str,
    variant: str,
    num_classes: int = 21,
    width: float = 1.0,
    allow_missing: bool = False,
    normalization: str | None = None,
    resnet: Mapping | None = None,
) -> tuple[dict, dict]:
    """Reads a weights file and fits it to `variant`; returns (params, metadata for the sidecar).

    allow_missing: partial import (e.g. ImageNet VGG16 -> FCN): layers the file lacks keep a fresh
    init (score layers zero, upscore bilinear), layers the model lacks are dropped; both reported.
    normalization: re-express the weights for this input normalisation (default: the file's own).
    resnet: the ResNet variants' options (config.model.resnet: layers, width_per_group, expansion, aux ...).
    """
    loaded, meta = load_weights(fmt, path)
    if normalization and normalization != meta["normalization"]:
        loaded = change_normalization(loaded, meta["normalization"], normalization)
        meta["normalization"] = normalization
    template = model_template(variant, num_classes, width, initialise=allow_missing, resnet=resnet)
    try:
        params, report = merge_params(template, loaded, strict=not allow_missing)
    except ParamMismatchError as e:
        problems = "; ".join(e.problems)
        raise ValueError(f"{path} does not fit {variant} with num_classes={num_classes}: {problems}") from None
    meta = {**meta, "variant": variant, "num_classes": num_classes, "width": width, "geometry": "caffe", **report}
    if resnet:
        meta["resnet"] = {k: list(v) if isinstance(v, tuple) else v for k, v in resnet.items()}
    return params, meta


def format_report(meta: Mapping) -> str:
    """A few lines for the console about what a conversion loaded."""
    lines = [
        f"{meta['format']} weights {meta['source']} -> {meta['variant']} ({meta['num_classes']} classes, "
        f"width {meta['width']:g}); expects input normalization {meta['normalization']}",
        f"  loaded ({len(meta['loaded'])}): {', '.join(meta['loaded'])}",
    ]
    if meta["new"]:
        lines.append(f"  fresh init, not in the file ({len(meta['new'])}): {', '.join(meta['new'])}")
    if meta["unused"]:
        lines.append(f"  unused, not in the model ({len(meta['unused'])}): {', '.join(meta['unused'])}")
    return "\n".join(lines)
