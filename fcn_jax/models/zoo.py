"""The model zoo: every variant's name, the one `create_model`, param templates and the naming rules of params.

    fcn32s fcn16s fcn8s fcn8s_atonce   VGG16 FCNs (models.fcn), geometry "caffe" or "same", any width
    fcn_resnet50 fcn_resnet101         torchvision's dilated ResNet FCNs (models.resnet), sized by `resnet` options
Training (config.model), inference (the settings stored with weights) and weight conversion all build models here.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.models import crf as crf_layer
from fcn_jax.models import fcn, winograd
from fcn_jax.models import resnet as resnet_fcn

VARIANTS = fcn.VARIANTS + tuple(resnet_fcn.DEPTHS)  # the backbone is part of the variant: VGG16 or a dilated ResNet
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The settings that define a network (config.model's names); stored with weights, read back by inference.
MODEL_SETTINGS = ("variant", "num_classes", "geometry", "width", "dropout_rate", "dtype", "heads", "resnet", "crf",
                  "winograd_tile", "winograd_min_channels")


def create_model(variant: str, *, num_classes: int = 21, geometry: str = "caffe", width: float = 1.0,
                 dropout_rate: float | None = None, dtype: str = "float32", heads=(), resnet: Mapping | None = None,
                 crf: Mapping | None = None, normalization: str = "caffe_bgr", winograd_tile: int = 4,
                 winograd_min_channels: int = 128, **fields) -> nn.Module:
    """The FCN of a variant; a bad value raises a ValueError naming it.

    dropout_rate None: the variant's own (0.5 VGG16, 0.1 ResNet). resnet: the ResNet variants' options (output_stride,
    aux, batch_norm, layers: () = the depth's, width_per_group, expansion), which take no VGG geometry or width.
    crf: config.model.crf; when `enabled`, the FCN is followed by a trainable dense CRF (models.crf.WithCRF) that
    reads colours from the input undoing `normalization`.
    winograd_tile 2 | 4: the 3x3 convolutions with >= winograd_min_channels inputs by Winograd F(tile x tile, 3x3)
    (models.winograd: fp32 on the CPU backend, equal to the direct convolution within its stated tolerance); 0: none.
    fields: other module fields (the VGG16 FCNs' tap_kernel_grads, fc6_im2col)."""
    if winograd_tile not in winograd.TILES or int(winograd_min_channels) < 1:
        raise ValueError(f"winograd_tile {winograd_tile!r} / winograd_min_channels {winograd_min_channels!r}: expected "
                         f"a tile in {winograd.TILES} (0: no Winograd) and a channel count >= 1")
    model = _create_fcn(variant, num_classes=num_classes, geometry=geometry, width=width, dropout_rate=dropout_rate,
                        dtype=dtype, heads=heads, resnet=resnet, winograd_tile=int(winograd_tile),
                        winograd_min_channels=int(winograd_min_channels), **fields)
    if crf and crf.get("enabled"):
        return crf_layer.WithCRF(base=model, settings=crf_layer.CRFSettings.from_mapping(crf),
                                 normalization=normalization, num_classes=model.num_classes, heads=model.heads)
    return model


def _create_fcn(variant, *, num_classes, geometry, width, dropout_rate, dtype, heads, resnet, **fields):
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    kwargs = dict(num_classes=num_classes, dtype=DTYPES[dtype], heads=head_specs(0, heads) if heads else (), **fields)
    if dropout_rate is not None:
        kwargs["dropout_rate"] = dropout_rate
    if variant in resnet_fcn.DEPTHS:
        if width != 1.0:
            raise ValueError(f"width scales VGG16 FCNs; size {variant} by its resnet options (layers, "
                             "width_per_group, expansion) instead")
        options = dict(resnet or {})
        layers = tuple(int(n) for n in options.pop("layers", ()) or resnet_fcn.DEPTHS[variant])
        resnet_fcn.check_settings(variant, options.get("output_stride", 8), options.get("batch_norm", "frozen"),
                                  kwargs["heads"], layers, options.get("width_per_group", 64),
                                  options.get("expansion", 4))
        return resnet_fcn.ResNetFCN(layers=layers, **options, **kwargs)
    if variant not in fcn.MODELS:
        raise ValueError(f"unknown model variant {variant!r}; expected one of {VARIANTS}")
    return fcn.MODELS[variant](geometry=geometry, width=width, **kwargs)


def direct_convolutions(model: nn.Module) -> nn.Module:
    """The model with no Winograd convolutions (same params, same outputs within winograd's tolerance): what an
    exported artifact holds, since the runtime that loads it picks its own convolution algorithms."""
    if isinstance(model, crf_layer.WithCRF):
        return model.clone(base=direct_convolutions(model.base))
    return model.clone(winograd_tile=0)


def from_settings(settings: Mapping, normalization: str | None = None) -> nn.Module:
    """create_model from a dict of MODEL_SETTINGS (config.model, or the settings stored with weights, which hold the
    normalization too); other keys are ignored."""
    normalization = normalization or settings.get("normalization", "caffe_bgr")
    return create_model(**{k: settings[k] for k in MODEL_SETTINGS if k in settings}, normalization=normalization)


def param_template(model: nn.Module, rng: jax.Array | None = None, image_size: int = 32) -> Any:
    """The param tree of `model`: ShapeDtypeStructs without `rng`, else values initialised from it (host numpy)."""
    init = lambda key: model.init(key, jnp.zeros((1, image_size, image_size, 3), jnp.float32))["params"]  # noqa: E731
    if rng is None:
        return jax.eval_shape(init, jax.random.PRNGKey(0))
    return jax.device_get(jax.jit(init)(rng))


def count_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def head_specs(num_classes: int, heads=()) -> tuple[tuple[str, int], ...]:
    """((name, classes), ...) of a model's score heads: `heads`, or one unnamed head of num_classes."""
    return tuple((str(name), int(k)) for name, k in heads) or (("", int(num_classes)),)


def is_statistic_param(path: tuple[str, ...]) -> bool:
    """True for batch-norm running statistics, which no optimiser updates (models.resnet.BatchNorm)."""
    return bool(path) and str(path[-1]) in ("mean", "var")


def is_upsample_param(path: tuple[str, ...]) -> bool:
    """True for params of upscore* layers, which the reference freezes (lr 0) at bilinear."""
    return any(str(key).startswith("upscore") for key in path)
