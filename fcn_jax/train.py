"""FCN training: config checks and the job `loop.run` trains.

`step.train_step` and `inference.eval_step` are pure functions of global arrays; `parallel` decides how they are
laid over devices. Side effects (data, checkpoints, logging) live in `loop.run` and the job's callbacks. The data
(tf.data, tfds) is imported only when a job is built. The optimiser and the step live in fcn_jax.step (no
ml_collections there) and are importable from here too.
"""
from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fcn_jax import checkpoints, dataset_info, inference, loop, models, modes, parallel, resnet, sources, validation
from fcn_jax.constants import EVAL_SPLITS, IGNORE_LABEL, TRAIN_SPLITS
from fcn_jax.step import (ConfigError, TrainState, all_finite, create_optimizer, create_train_state,  # noqa: F401
                          init_key, learning_rate_schedule, num_updates, param_labels, train_step)


# ----------------------------------------------------------------------------- model


def create_model(model_config: ml_collections.ConfigDict) -> models.FCN:
    try:
        return inference.create_model(model_config.variant, num_classes=model_config.num_classes,
                                      geometry=model_config.geometry, width=model_config.width,
                                      dropout_rate=model_config.dropout_rate, dtype=model_config.dtype,
                                      heads=model_config.heads, resnet=model_config.resnet.to_dict())
    except ValueError as error:
        raise ConfigError(f"config.model: {error}") from None


# ----------------------------------------------------------------------------- validation of configs


def validate_source(config: ml_collections.ConfigDict) -> None:
    """config.data.source and its folder, checked before the dataset is described."""
    if config.data.source not in sources.SOURCES:
        raise ConfigError(f"config.data.source={config.data.source!r}: expected one of {', '.join(sources.SOURCES)}")
    if config.data.source not in ("synthetic", "synthetic_folder") and not config.data.manual_dir:
        raise ConfigError("config.data.manual_dir is empty: point it at the dataset's folder (for voc the one "
                          "holding VOCdevkit/ and benchmark_RELEASE/; see README, 'Train on your own data')")
    if config.data.source not in ("synthetic", "synthetic_folder") and \
            not os.path.isdir(os.path.expanduser(config.data.manual_dir)):
        raise ConfigError(f"config.data.manual_dir={config.data.manual_dir!r} does not exist")


def validate_model(config: ml_collections.ConfigDict) -> None:
    if config.model.variant not in models.VARIANTS:
        raise ConfigError(f"config.model.variant={config.model.variant!r}: expected one of {', '.join(models.VARIANTS)}")
    if config.model.dtype not in inference.DTYPES:
        raise ConfigError(f"config.model.dtype={config.model.dtype!r}: expected one of {', '.join(inference.DTYPES)}")
    if config.model.geometry not in ("caffe", "same"):
        raise ConfigError(f"config.model.geometry={config.model.geometry!r}: expected caffe or same")
    if config.aux_loss_weight < 0:
        raise ConfigError(f"config.aux_loss_weight={config.aux_loss_weight} must not be negative")
    if config.aux_loss_weight and not (config.model.variant in resnet.DEPTHS and config.model.resnet.aux):
        raise ConfigError(f"config.aux_loss_weight={config.aux_loss_weight} needs an aux head: a ResNet variant "
                          f"({', '.join(resnet.DEPTHS)}) with config.model.resnet.aux=True")
    create_model(config.model)  # the variant's own checks (ResNet options, width)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Bad values fail here, before anything is compiled, with one clear line."""
    validate_model(config)
    if config.loss_reduction not in ("sum", "mean"):
        raise ConfigError(f"config.loss_reduction={config.loss_reduction!r}: expected sum or mean")
    validate_source(config)
    if config.data.source in ("voc", "synthetic"):  # the other layouts' splits are known once their files are listed
        splits = TRAIN_SPLITS + EVAL_SPLITS
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
        mode = modes.Mode.from_settings(config.eval.window, config.eval.stride, config.eval.flip, config.eval.scales)
    except ValueError as error:
        raise ConfigError(f"config.eval: {error}") from None
    if not mode.plain and jax.process_count() > 1:
        raise ConfigError("config.eval window / flip / scales run on a single process; validate with them after "
                          "training (python -m fcn_jax.evaluate), or leave them unset")
    for key, size, allow_empty in (("data.crop_size", config.data.crop_size, False),
                                   ("eval.pad_size", config.eval.pad_size, True)):
        if not (allow_empty and len(size) == 0) and (len(size) != 2 or min(size) < 1):
            raise ConfigError(f"config.{key}={tuple(size)} must be (height, width), both positive"
                              + (", or () for the split's own" if allow_empty else ""))


# ----------------------------------------------------------------------------- data


def resolve_num_classes(config: ml_collections.ConfigDict) -> dataset_info.Heads:
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


# ----------------------------------------------------------------------------- the FCN training job


def _init_from(state: TrainState, path: str, mesh) -> TrainState:
    from fcn_jax import pretrained

    loaded = checkpoints.load_params(path)
    host_state = jax.device_get(state)
    params, report = pretrained.merge_params(jax.tree.map(np.asarray, host_state.params), loaded, strict=False)
    logging.info("init_from %s: %s", path, report)
    return parallel.replicate(host_state.replace(params=params, opt_state=host_state.tx.init(params)), mesh)


def fcn_job(config: ml_collections.ConfigDict, workdir: str, mesh, info: dataset_info.Heads) -> loop.Job:
    """The data, fresh state, step and validation of an FCN training run (the data is prepared here)."""
    from fcn_jax import input_pipeline

    if jax.process_index() == 0:  # evaluate/predict name the classes from it
        dataset_info.write(info, workdir)
    train_source, eval_source = sources.load_sources(config)
    pad_size = tuple(config.eval.pad_size)
    oversized = input_pipeline.oversized_image(eval_source, pad_size) if pad_size else None
    if oversized:  # found now, not at the first evaluation thousands of steps in
        raise ConfigError(f"config.eval.pad_size={pad_size} is smaller than {config.data.eval_split} image "
                          f"{oversized}; raise it, or use () to pad to the split's largest image")
    model = create_model(config.model)
    crop_h, crop_w = config.data.crop_size
    image_shape = (config.train.global_batch_size, crop_h, crop_w, 3)
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    state = jax.jit(functools.partial(create_train_state, config, model, image_shape=image_shape),
                    out_shardings=replicated)(init_key(config.seed))
    shape = (f"output stride {config.model.resnet.output_stride}, batch norm {config.model.resnet.batch_norm}"
             if config.model.variant in resnet.DEPTHS else f"{config.model.geometry} geometry, width {config.model.width:g}")
    logging.info("%s (%s): %s params on %d device(s), %d process(es)", config.model.variant, shape,
                 f"{inference.count_params(state.params):,}", mesh.devices.size, jax.process_count())

    def batches(start_step: int):
        dataset = input_pipeline.train_dataset(
            train_source, global_batch_size=config.train.global_batch_size, crop_size=(crop_h, crop_w),
            seed=config.seed, start_step=start_step, process_index=jax.process_index(),
            process_count=jax.process_count(), scale_range=tuple(config.data.scale_range) or None,
            flip=config.data.flip, normalization=config.data.normalization, num_steps=config.train.num_steps,
            num_classes=head_classes)
        return input_pipeline.numpy_batches(dataset)

    heads = models.head_specs(config.model.num_classes, config.model.heads)
    head_classes = tuple(k for _, k in heads)
    label_shape = image_shape[:3] + ((len(head_classes),) if len(head_classes) > 1 else ())  # a label map a head
    schedule = jax.jit(learning_rate_schedule(config.optim, num_updates(config)))  # one compile, not one per op
    eval_steps = inference.eval_steps(model.apply, heads, mesh)
    logit_steps = modes.LogitSteps(model, None, mesh, validation.eval_batch_sizes(config, mesh.devices.size)[0])
    return loop.Job(
        state=state, rng=jax.device_put(jax.random.PRNGKey(config.seed), replicated),
        step_fn=functools.partial(train_step, loss_reduction=config.loss_reduction, num_classes=head_classes,
                                  aux_loss_weight=config.aux_loss_weight,
                                  learnable_upsample=config.model.learnable_upsample),
        abstract_batch={"image": jax.ShapeDtypeStruct(image_shape, jnp.float32, sharding=sharded),
                        "label": jax.ShapeDtypeStruct(label_shape, jnp.int32, sharding=sharded)},
        batches=batches, batch_size=config.train.global_batch_size, mesh=mesh, log_keys=("loss", "pixel_acc"),
        evaluate=functools.partial(validation.validate, config=config, eval_source=eval_source, steps=eval_steps,
                                   workdir=workdir, info=info, logit_steps=logit_steps),
        eval_split=config.data.eval_split,
        init=functools.partial(_init_from, path=config.init_from, mesh=mesh) if config.init_from else None,
        learning_rate=lambda step: float(schedule((step - 1) // config.optim.grad_accum_steps)),
        best_metric=checkpoints.BEST_METRIC)


def cadence(train_config: ml_collections.ConfigDict) -> loop.Cadence:
    return loop.Cadence(num_steps=train_config.num_steps, log_every=train_config.log_every,
                        checkpoint_every=train_config.checkpoint_every, eval_every=train_config.eval_every,
                        keep_checkpoints=train_config.keep_checkpoints,
                        async_checkpoint=train_config.async_checkpoint,
                        loss_spike_factor=train_config.loss_spike_factor)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train `config` in `workdir` (resuming from its latest checkpoint), evaluate, return the final scores.

    The result holds the last evaluation's metrics, the median training images/s and the param count; a
    workdir that already finished under this config returns its stored result.json at once.
    """
    info = resolve_num_classes(config)
    validate_config(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file, not a folder")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--workdir {workdir}: cannot create it ({error.strerror or error})") from None
    mesh = parallel.create_mesh()
    try:
        parallel.check_batch_size(config.train.global_batch_size, mesh)
    except ValueError as error:
        raise ConfigError(f"config.train.global_batch_size: {error}") from None
    return loop.run(json.loads(config.to_json()), workdir, cadence(config.train),
                    lambda: fcn_job(config, workdir, mesh, info))
