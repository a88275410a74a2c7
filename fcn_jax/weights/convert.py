"""Converting a weights file into fcn_jax params for one model: read (weights.formats), re-express for another
input normalisation if asked, fit to the variant's param tree (weights.merge), and describe what was loaded.

Converted weights are an orbax checkpoint {'params': params} plus a JSON sidecar (weights.checkpoints.save_params /
load_converted), usable as a training `config.init_from` and by evaluate/predict.
"""
from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

from fcn_jax.core.normalization import affine as normalization_affine
from fcn_jax.models import zoo
from fcn_jax.weights import formats
from fcn_jax.weights.merge import ParamMismatchError, merge_params


def change_normalization(params: dict, source: str, target: str) -> dict:
    """Re-expresses backbone/conv1_1 so that it takes `target`-normalised input instead of `source`.

    With x_s = A_s p + c_s: W' = W A_s A_t^-1 on the input-channel axis, b' = b + sum(W c_s) - sum(W' c_t).
    """
    if source == target:
        return params
    if "conv1_1" not in params.get("backbone", {}):
        raise ValueError(f"only VGG16's conv1_1 (it has a bias) can take another input normalisation ({target}) "
                         f"folded into it; use these weights with their own, config.data.normalization={source!r}")
    a_s, c_s = normalization_affine(source)
    a_t, c_t = normalization_affine(target)
    conv = params["backbone"]["conv1_1"]
    w = np.asarray(conv["kernel"], np.float64)  # (kh, kw, 3, O)
    w_new = np.einsum("hwjo,ji->hwio", w, a_s @ np.linalg.inv(a_t))
    b_new = conv["bias"] + np.einsum("hwjo,j->o", w, c_s) - np.einsum("hwio,i->o", w_new, c_t)
    dtype = conv["kernel"].dtype
    new_conv = {"kernel": w_new.astype(dtype), "bias": b_new.astype(dtype)}
    return {**params, "backbone": {**params["backbone"], "conv1_1": new_conv}}


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
    loaded, meta = formats.load_weights(fmt, path)
    if normalization and normalization != meta["normalization"]:
        loaded = change_normalization(loaded, meta["normalization"], normalization)
        meta["normalization"] = normalization
    model = zoo.create_model(variant, num_classes=num_classes, width=width, geometry="caffe", resnet=resnet)
    template = zoo.param_template(model, jax.random.PRNGKey(0) if allow_missing else None, image_size=1)
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
