"""FCN training: the job `train.loop.run` trains (data, fresh state, step, validation) and `train_and_evaluate`.

`train.step.train_step` and `infer.steps.eval_step` are pure functions of global arrays; core.parallel decides how they
are laid over devices. Side effects (data, checkpoints, logging) live in the loop and the job's callbacks. The data
(tfds data sources, read without TensorFlow) is loaded only when a job is built.
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

from fcn_jax.core import parallel
from fcn_jax.data import class_balance, dataset_info, input_pipeline, sources
from fcn_jax.infer import modes
from fcn_jax.infer.runner import Runner
from fcn_jax.models import resnet, zoo
from fcn_jax.train import loop, validation
from fcn_jax.train.config_checks import loss_spec, resolve_num_classes, validate_config
from fcn_jax.train.step import (
    ConfigError,
    TrainState,
    create_train_state,
    init_key,
    learning_rate_schedule,
    num_updates,
    train_step,
)
from fcn_jax.weights import checkpoints
from fcn_jax.weights.merge import merge_params

# Config keys a workdir may resume under with another value: how long to train and how often to log, evaluate and
# checkpoint; nothing else, so a resumed run never mixes two models or recipes.
RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                  "train.keep_checkpoints", "train.async_checkpoint", "train.loss_spike_factor", "eval")


def _init_from(state: TrainState, path: str, mesh) -> TrainState:
    loaded = checkpoints.load_params(path)
    host_state = jax.device_get(state)
    params, report = merge_params(jax.tree.map(np.asarray, host_state.params), loaded, strict=False)
    logging.info("init_from %s: %s", path, report)
    return parallel.replicate(host_state.replace(params=params, opt_state=host_state.tx.init(params)), mesh)


def counted_class_weights(config: ml_collections.ConfigDict, train_source,
                          info: dataset_info.Heads) -> tuple[tuple[float, ...], ...] | None:
    """The class weights config.loss.class_weights names a method for, counted on the train split (logged with
    the class names); None for "none" or explicit weights."""
    method = config.loss.class_weights.strip()
    if method not in class_balance.METHODS or method == "none":
        return None
    counts = class_balance.count_source(train_source, tuple(i.num_classes for _, i in info), "counting class pixels",
                                        progress=jax.process_index() == 0)
    weights = class_balance.class_weights(method, counts)
    for (name, head_info), head_weights in zip(info, weights):
        logging.info("class weights (%s, %s%s): %s", method, config.data.train_split, f", head {name}" * bool(name),
                     ", ".join(f"{c} {w:.3g}" for c, w in zip(head_info.classes, head_weights)))
    return weights


def fcn_job(config: ml_collections.ConfigDict, workdir: str, mesh, info: dataset_info.Heads) -> loop.Job:
    """The data, fresh state, step and validation of an FCN training run (the data is prepared here)."""
    if jax.process_index() == 0:  # evaluate/predict name the classes from it
        dataset_info.write(info, workdir)
    train_source, eval_source = sources.load_sources(config)
    pad_size = tuple(config.eval.pad_size)
    oversized = input_pipeline.oversized_image(eval_source, pad_size) if pad_size else None
    if oversized:  # found now, not at the first evaluation thousands of steps in
        raise ConfigError(f"config.eval.pad_size={pad_size} is smaller than {config.data.eval_split} image "
                          f"{oversized}; raise it, or use () to pad to the split's largest image")
    model = zoo.from_settings(config.model, config.data.normalization)
    crop_h, crop_w = config.data.crop_size
    image_shape = (config.train.global_batch_size, crop_h, crop_w, 3)
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    state = jax.jit(functools.partial(create_train_state, config, model, image_shape=image_shape),
                    out_shardings=replicated)(init_key(config.seed))
    resnet_options = config.model.resnet
    shape = (f"output stride {resnet_options.output_stride}, batch norm {resnet_options.batch_norm}"
             if config.model.variant in resnet.DEPTHS
             else f"{config.model.geometry} geometry, width {config.model.width:g}")
    logging.info("%s (%s): %s params on %d device(s), %d process(es)", config.model.variant, shape,
                 f"{zoo.count_params(state.params):,}", mesh.devices.size, jax.process_count())

    def batches(start_step: int):
        return input_pipeline.train_batches(
            train_source, global_batch_size=config.train.global_batch_size, crop_size=(crop_h, crop_w),
            seed=config.seed, start_step=start_step, process_index=jax.process_index(),
            process_count=jax.process_count(), scale_range=tuple(config.data.scale_range) or None,
            flip=config.data.flip, normalization=config.data.normalization, num_steps=config.train.num_steps,
            num_classes=head_classes)

    heads = zoo.head_specs(config.model.num_classes, config.model.heads)
    head_classes = tuple(k for _, k in heads)
    label_shape = image_shape[:3] + ((len(head_classes),) if len(head_classes) > 1 else ())  # a label map a head
    schedule = jax.jit(learning_rate_schedule(config.optim, num_updates(config)))  # one compile, not one per op
    mode = modes.Mode.from_settings(config.eval.window, config.eval.stride, config.eval.flip, config.eval.scales,
                                   config.eval.crf)
    runner = Runner(model.apply, heads, mesh, normalization=config.data.normalization, mode=mode,
                    batch_size=validation.eval_batch_sizes(config, mesh.devices.size)[0])
    return loop.Job(
        state=state, rng=jax.device_put(jax.random.PRNGKey(config.seed), replicated),
        step_fn=functools.partial(train_step, loss_reduction=config.loss_reduction, num_classes=head_classes,
                                  aux_loss_weight=config.aux_loss_weight,
                                  learnable_upsample=config.model.learnable_upsample,
                                  loss_spec=loss_spec(config, counted_class_weights(config, train_source, info))),
        abstract_batch={"image": jax.ShapeDtypeStruct(image_shape, jnp.float32, sharding=sharded),
                        "label": jax.ShapeDtypeStruct(label_shape, jnp.int32, sharding=sharded)},
        batches=batches, batch_size=config.train.global_batch_size, mesh=mesh, log_keys=("loss", "pixel_acc"),
        evaluate=functools.partial(validation.validate, config=config, eval_source=eval_source, runner=runner,
                                   workdir=workdir, info=info),
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
                    lambda: fcn_job(config, workdir, mesh, info), resumable_keys=RESUMABLE_KEYS)
