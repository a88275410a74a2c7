"""Config checks: every value that cannot work fails before anything is compiled, with one line naming the key.

`resolve_num_classes` fills config.model.num_classes (and .heads) from the dataset's description when it is 0.
A config is any object with the attributes used (ml_collections.ConfigDict in practice).
"""
from __future__ import annotations

import logging
import os

import jax

from fcn_jax.core import losses
from fcn_jax.core.constants import IGNORE_LABEL
from fcn_jax.data import class_balance, dataset_info, sources, subsets
from fcn_jax.infer import modes
from fcn_jax.models import resnet, vgg, zoo
from fcn_jax.train.step import ConfigError


def validate_source(config) -> None:
    """config.data.source and its folder, checked before the dataset is described."""
    try:
        source = sources.get(config.data.source)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if source.synthetic:  # written on first use
        return
    if not config.data.manual_dir:
        raise ConfigError("config.data.manual_dir is empty: point it at the dataset's folder (for voc the one "
                          "holding VOCdevkit/ and benchmark_RELEASE/; see docs/data.md)")
    if not os.path.isdir(os.path.expanduser(config.data.manual_dir)):
        raise ConfigError(f"config.data.manual_dir={config.data.manual_dir!r} does not exist")


def validate_model(config) -> None:
    if config.model.variant not in zoo.VARIANTS:
        raise ConfigError(f"config.model.variant={config.model.variant!r}: expected one of {', '.join(zoo.VARIANTS)}")
    if config.model.dtype not in zoo.DTYPES:
        raise ConfigError(f"config.model.dtype={config.model.dtype!r}: expected one of {', '.join(zoo.DTYPES)}")
    if config.model.geometry not in vgg.GEOMETRIES:
        raise ConfigError(f"config.model.geometry={config.model.geometry!r}: expected caffe or same")
    if config.aux_loss_weight < 0:
        raise ConfigError(f"config.aux_loss_weight={config.aux_loss_weight} must not be negative")
    if config.aux_loss_weight and not (config.model.variant in resnet.DEPTHS and config.model.resnet.aux):
        raise ConfigError(f"config.aux_loss_weight={config.aux_loss_weight} needs an aux head: a ResNet variant "
                          f"({', '.join(resnet.DEPTHS)}) with config.model.resnet.aux=True")
    try:
        zoo.from_settings(config.model)  # the variant's own checks (ResNet options, width)
    except ValueError as error:
        raise ConfigError(f"config.model: {error}") from None


def loss_spec(config, weights: tuple[tuple[float, ...], ...] | None = None) -> losses.LossSpec:
    """config.loss as a LossSpec, checked (one-line ConfigError); `weights`: the class weights counted on the train
    split when config.loss.class_weights names a method (None: explicit weights only)."""
    head_classes = tuple(k for _, k in zoo.head_specs(config.model.num_classes, config.model.heads))
    options = config.loss
    try:
        parsed = class_balance.parse(options.class_weights, head_classes)
        spec = losses.LossSpec(
            name=options.name, class_weights=parsed if isinstance(parsed, tuple) else (weights or ()),
            dice_weight=options.dice_weight, focal_gamma=options.focal_gamma, ohem_threshold=options.ohem_threshold,
            ohem_min_kept=options.ohem_min_kept)
        spec.check(head_classes)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return spec


def validate_config(config) -> None:
    """Bad values fail here, before anything is compiled, with one clear line."""
    validate_model(config)
    if config.loss_reduction not in ("sum", "mean"):
        raise ConfigError(f"config.loss_reduction={config.loss_reduction!r}: expected sum or mean")
    loss_spec(config, weights=())  # the loss's settings, its class weights' form
    try:
        subsets.check(config.data.train_fraction, config.data.folds, config.data.fold)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    validate_source(config)
    splits = sources.get(config.data.source).splits  # other layouts' splits are known once their files are listed
    if splits:
        for key in ("train_split", "eval_split"):
            if config.data[key] not in splits:
                raise ConfigError(f"config.data.{key}={config.data[key]!r}: expected one of {', '.join(splits)}")
    for key in ("num_steps", "log_every", "eval_every", "checkpoint_every", "global_batch_size"):
        if config.train[key] <= 0:
            raise ConfigError(f"config.train.{key}={config.train[key]} must be positive")
    if config.optim.grad_accum_steps < 1:
        raise ConfigError(f"config.optim.grad_accum_steps={config.optim.grad_accum_steps} must be >= 1")
    if not 1 <= config.model.num_classes <= IGNORE_LABEL:
        raise ConfigError(f"config.model.num_classes={config.model.num_classes} must be in 1..{IGNORE_LABEL} "
                          f"(labels are uint8 and {IGNORE_LABEL} means ignore)")
    for key, value in (("optim.learning_rate", config.optim.learning_rate), ("optim.weight_decay",
                       config.optim.weight_decay), ("optim.bias_lr_mult", config.optim.bias_lr_mult),
                       ("optim.warmup_steps", config.optim.warmup_steps), ("optim.grad_clip_norm",
                       config.optim.grad_clip_norm), ("train.loss_spike_factor", config.train.loss_spike_factor),
                       ("eval.num_samples", config.eval.num_samples)):
        if value < 0:  # a negative learning rate trains uphill without a word
            raise ConfigError(f"config.{key}={value} must not be negative")
    if not 0 <= config.optim.momentum < 1:
        raise ConfigError(f"config.optim.momentum={config.optim.momentum} must be in [0, 1)")
    try:
        mode = modes.Mode.from_settings(config.eval.window, config.eval.stride, config.eval.flip, config.eval.scales,
                                        config.eval.crf)
    except ValueError as error:
        raise ConfigError(f"config.eval: {error}") from None
    if not mode.plain and jax.process_count() > 1:
        raise ConfigError("config.eval window / flip / scales / crf run on a single process; validate with them after "
                          "training (python -m fcn_jax.evaluate), or leave them unset")
    for key, size, allow_empty in (("data.crop_size", config.data.crop_size, False),
                                   ("eval.pad_size", config.eval.pad_size, True)):
        if not (allow_empty and len(size) == 0) and (len(size) != 2 or min(size) < 1):
            raise ConfigError(f"config.{key}={tuple(size)} must be (height, width), both positive"
                              + (", or () for the split's own" if allow_empty else ""))


# ----------------------------------------------------------------------------- data


def resolve_num_classes(config) -> dataset_info.Heads:
    """The dataset's description of each head; sets config.model.num_classes (and .heads for several) from it
    when num_classes is 0. Another count is kept (e.g. a superset for later data), the description cut or
    extended to it, with a warning."""
    validate_source(config)
    try:
        heads = sources.describe_dataset(config)
    except (ValueError, OSError) as error:
        raise ConfigError(f"config.data: {error}") from None
    first = heads[0][1]
    if config.model.num_classes == 0:
        config.model.num_classes = first.num_classes
    elif config.model.num_classes != first.num_classes and 1 <= config.model.num_classes <= IGNORE_LABEL:
        logging.warning("config.model.num_classes=%d, but the %s dataset has %d classes (0 takes the dataset's)",
                        config.model.num_classes, first.name, first.num_classes)
        heads = ((heads[0][0], first.with_num_classes(config.model.num_classes)),) + heads[1:]
    if len(heads) > 1:
        config.model.heads = tuple((head, info.num_classes) for head, info in heads)
    return heads


