"""Training and evaluation: small pure functions, compiled once, run data-parallel.

`train_step` and `eval_step` are pure functions of global arrays; `parallel`
decides how they are laid over devices. Side effects (data, checkpoints,
logging) live only in `train_and_evaluate`.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from fcn_jax import checkpoints, input_pipeline, losses, metrics, models, parallel, visualize

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ConfigError(ValueError):
    """A config value that cannot work; main prints it as one line."""


class TrainState(train_state.TrainState):
    """params, opt_state, step (+ apply_fn, tx as static fields)."""


# ----------------------------------------------------------------------------- model and optimiser


def create_model(model_config: ml_collections.ConfigDict) -> models.FCN:
    if model_config.dtype not in DTYPES:
        raise ConfigError(f"config.model.dtype={model_config.dtype!r}: expected one of {sorted(DTYPES)}")
    return models.create_model(
        model_config.variant,
        num_classes=model_config.num_classes,
        geometry=model_config.geometry,
        width=model_config.width,
        dropout_rate=model_config.dropout_rate,
        dtype=DTYPES[model_config.dtype],
    )


def param_labels(params: Any, learnable_upsample: bool) -> Any:
    """'weight' | 'bias' | 'frozen' per leaf: decay kernels only, biases at a higher lr, frozen deconvolutions."""

    def label(path, _):
        names = tuple(getattr(p, "key", str(p)) for p in path)
        if not learnable_upsample and models.is_upsample_param(names):
            return "frozen"
        return "bias" if names[-1] == "bias" else "weight"

    return jax.tree_util.tree_map_with_path(label, params)


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    lr = optim.learning_rate
    decay_steps = max(1, num_steps - optim.warmup_steps)
    if optim.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif optim.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps)
    elif optim.schedule == "poly":  # the DeepLab/FCN-era "poly" policy, power 0.9
        main = optax.polynomial_schedule(lr, 0.0, 0.9, decay_steps)
    else:
        raise ConfigError(f"config.optim.schedule={optim.schedule!r}: expected constant, cosine or poly")
    if optim.warmup_steps:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, optim.warmup_steps), main], [optim.warmup_steps])
    return main


def num_updates(config: ml_collections.ConfigDict) -> int:
    """Optimiser updates in a run: with accumulation over k steps, one update every k train steps."""
    return max(1, config.train.num_steps // config.optim.grad_accum_steps)


def create_optimizer(config: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
    """SGD-momentum (reference) or Adam/AdamW, per-group lr/decay, frozen upsampling, accumulation."""
    optim = config.optim
    schedule = learning_rate_schedule(optim, num_updates(config))

    def group(lr_mult: float, weight_decay: float) -> optax.GradientTransformation:
        lr = lambda count: schedule(count) * lr_mult  # noqa: E731
        if optim.optimizer == "sgd":
            return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=optim.momentum or None))
        if optim.optimizer == "adam":
            return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))
        if optim.optimizer == "adamw":
            return optax.adamw(lr, weight_decay=weight_decay)
        raise ConfigError(f"config.optim.optimizer={optim.optimizer!r}: expected sgd, adam or adamw")

    tx = optax.multi_transform(
        {
            "weight": group(1.0, optim.weight_decay),
            "bias": group(optim.bias_lr_mult, 0.0),
            "frozen": optax.set_to_zero(),
        },
        param_labels(params, config.model.learnable_upsample),
    )
    if optim.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
    if optim.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=optim.grad_accum_steps)
    return tx


def init_key(seed: int) -> jax.Array:
    """Key for parameter init: the "rbg" generator compiles ~7x faster than threefry on CPU.

    Only the initial draw depends on it (dropout keeps threefry, whose masks do not depend on the
    sharding), so this changes start-up time, not any result's reproducibility for a given backend.
    """
    return jax.random.key(seed, impl="rbg")


def create_train_state(config: ml_collections.ConfigDict, model: models.FCN, rng: jax.Array,
                       image_shape: tuple[int, int, int, int]) -> TrainState:
    """Fresh params (zero score layers, bilinear deconvolutions) and optimiser state."""
    params = model.init({"params": rng}, jnp.zeros(image_shape, jnp.float32), train=False)["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=create_optimizer(config, params))


# ----------------------------------------------------------------------------- the pure steps


def all_finite(tree: Any) -> jax.Array:
    """True iff every element of every leaf is finite, in one fused pass per leaf.

    x * 0 is 0 for finite x and NaN for inf or NaN (IEEE; XLA does not fold it away), so the sum is
    finite exactly when all elements are; ~3.5x faster on XLA:CPU than all(isfinite(x)).
    """
    return jnp.isfinite(sum(jnp.sum(x * 0) for x in jax.tree.leaves(tree)))


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, loss_normalization: str,
               num_classes: int) -> tuple[TrainState, dict]:
    """One SGD step on a global batch. A non-finite loss or gradient leaves the state unchanged."""
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, batch["image"], train=True, rngs={"dropout": dropout_rng})
        loss, num_valid = losses.pixel_cross_entropy(logits, batch["label"], normalization=loss_normalization)
        return loss, (logits, num_valid)

    (loss, (logits, num_valid)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    finite = jnp.isfinite(loss) & all_finite(grads)
    # cond, not a select over the whole state: only one branch runs, and the donated state is updated
    # in place instead of keeping old and new copies alive (benchmarks/train_step.py, BENCHMARKS.md).
    new_state = jax.lax.cond(finite, lambda s: s.apply_gradients(grads=grads), lambda s: s, state)
    confusion = metrics.confusion_matrix(jnp.argmax(logits, -1), batch["label"], num_classes)
    return new_state, {
        "loss": loss,
        "finite": finite,
        "num_valid": num_valid,
        "pixel_acc": jnp.trace(confusion) / jnp.maximum(confusion.sum(), 1),
    }


def eval_step(params: Any, batch: dict, *, apply_fn, num_classes: int) -> dict:
    """Confusion matrix (summed over the global batch), summed loss and the predicted masks."""
    logits = apply_fn({"params": params}, batch["image"], train=False)
    prediction = jnp.argmax(logits, -1)
    loss_sum, num_valid = losses.pixel_cross_entropy(logits, batch["label"], normalization="sum")
    return {
        "confusion": metrics.confusion_matrix(prediction, batch["label"], num_classes),
        "loss_sum": loss_sum,
        "num_valid": num_valid,
        "prediction": prediction.astype(jnp.uint8),
    }


# ----------------------------------------------------------------------------- validation of configs


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Bad values fail here, before anything is compiled, with one clear line."""
    if config.model.variant not in models.VARIANTS:
        raise ConfigError(f"config.model.variant={config.model.variant!r}: expected one of {', '.join(models.VARIANTS)}")
    if config.model.geometry not in ("caffe", "same"):
        raise ConfigError(f"config.model.geometry={config.model.geometry!r}: expected caffe or same")
    if config.loss_normalization not in ("sum", "mean"):
        raise ConfigError(f"config.loss_normalization={config.loss_normalization!r}: expected sum or mean")
    if config.data.source not in ("voc", "synthetic"):
        raise ConfigError(f"config.data.source={config.data.source!r}: expected voc or synthetic")
    if config.data.source == "voc" and not config.data.manual_dir:
        raise ConfigError("config.data.manual_dir is empty: point it at the folder holding VOCdevkit/ and "
                         "benchmark_RELEASE/ (see README, 'Using the real PASCAL VOC2012 + SBD')")
    if config.data.source == "voc" and not os.path.isdir(os.path.expanduser(config.data.manual_dir)):
        raise ConfigError(f"config.data.manual_dir={config.data.manual_dir!r} does not exist")
    for key in ("num_steps", "log_every", "eval_every", "checkpoint_every", "global_batch_size"):
        if config.train[key] <= 0:
            raise ConfigError(f"config.train.{key}={config.train[key]} must be positive")
    if config.optim.grad_accum_steps < 1:
        raise ConfigError(f"config.optim.grad_accum_steps={config.optim.grad_accum_steps} must be >= 1")


# ----------------------------------------------------------------------------- data


def load_sources(config: ml_collections.ConfigDict):
    """(train source, eval source): random-access splits of the tfds VOC/SBD builder."""
    from fcn_jax import synthetic, voc_dataset  # tfds import is slow: only when data is needed

    data = config.data
    manual_dir = os.path.expanduser(data.manual_dir)
    data_dir = os.path.expanduser(data.data_dir)
    if data.source == "synthetic":
        if jax.process_index() == 0:
            synthetic.write_synthetic_voc(manual_dir, num_train=data.synthetic_train, num_val=data.synthetic_val,
                                          seed=data.synthetic_seed)
        _sync("synthetic data written")
    if jax.process_index() == 0:
        voc_dataset.prepare(data_dir, manual_dir, skip_bad_examples=data.skip_bad_examples)
    _sync("dataset prepared")
    return tuple(voc_dataset.load_split(data_dir, split, manual_dir, skip_bad_examples=data.skip_bad_examples)
                 for split in (data.train_split, data.eval_split))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def eval_batch_sizes(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
    """(global, per-process) eval batch: the configured size rounded up to a multiple of the devices."""
    global_size = -(-config.eval.batch_size // num_devices) * num_devices
    return global_size, global_size // jax.process_count()


# ----------------------------------------------------------------------------- the loop (side effects live here)


class Writer:
    """metrics.jsonl + TensorBoard events, written by process 0 only."""

    def __init__(self, workdir: str, resume_step: int):
        self.active = jax.process_index() == 0
        if not self.active:
            return
        from tensorboardX import SummaryWriter

        self.path = os.path.join(workdir, "metrics.jsonl")
        _truncate_jsonl(self.path, resume_step)  # entries past the restored step belong to a lost future
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and np.isfinite(value):
                self.tb.add_scalar(f"{split}/{key}", value, step)
        self.tb.flush()

    def close(self) -> None:
        if self.active:
            self.tb.close()


def _truncate_jsonl(path: str, max_step: int) -> None:
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= max_step]
    with open(path, "w") as f:
        f.writelines(lines)


def evaluate(params, eval_source, config, mesh, compiled_eval: dict, *, sample_dir: str | None = None) -> dict:
    """Metrics over a whole split; compiles eval_step once per padded shape (cached in `compiled_eval`)."""
    _, per_process = eval_batch_sizes(config, mesh.devices.size)
    dataset = input_pipeline.eval_dataset(
        eval_source, batch_size=per_process, pad_size=tuple(config.eval.pad_size) or None,
        normalization=config.data.normalization, process_index=jax.process_index(),
        process_count=jax.process_count())
    confusion = np.zeros((config.model.num_classes,) * 2, np.int64)
    loss_sum, num_valid, num_saved = 0.0, 0, 0
    for batch in dataset.as_numpy_iterator():
        arrays = parallel.host_to_global({"image": batch["image"], "label": batch["label"]}, mesh)
        key = arrays["image"].shape
        if key not in compiled_eval:
            step_fn = functools.partial(eval_step, apply_fn=create_model(config.model).apply,
                                        num_classes=config.model.num_classes)
            compiled_eval[key] = jax.jit(
                step_fn, out_shardings={"confusion": parallel.replicated(mesh), "loss_sum": parallel.replicated(mesh),
                                        "num_valid": parallel.replicated(mesh),
                                        "prediction": parallel.batch_sharded(mesh)},
            ).lower(params, arrays).compile()
            logging.info("compiled eval_step for padded batch %s (%d eval compilation(s))", key, len(compiled_eval))
        out = compiled_eval[key](params, arrays)
        stats = parallel.fetch({k: out[k] for k in ("confusion", "loss_sum", "num_valid")})
        confusion += stats["confusion"]
        loss_sum += float(stats["loss_sum"])
        num_valid += int(stats["num_valid"])
        if sample_dir and jax.process_index() == 0 and num_saved < config.eval.num_samples:  # one writer
            num_saved += _save_samples(out["prediction"], batch, sample_dir, config.eval.num_samples - num_saved)
    result = metrics.segmentation_metrics(confusion)
    result["loss"] = loss_sum / max(num_valid, 1)
    return result


def _save_samples(prediction: jax.Array, batch: dict, directory: str, limit: int) -> int:
    """Predicted and ground-truth palette PNGs of this process's first real images."""
    os.makedirs(directory, exist_ok=True)
    shards = sorted(prediction.addressable_shards, key=lambda s: s.index[0].start or 0)
    local = np.concatenate([np.asarray(s.data) for s in shards])  # this process's rows, in order
    saved = 0
    for i, image_id in enumerate(batch["id"]):
        image_id = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
        if not image_id or saved >= limit:
            continue
        h, w = int(batch["height"][i]), int(batch["width"][i])
        visualize.save_mask(local[i, :h, :w], os.path.join(directory, f"{image_id}_pred.png"))
        visualize.save_mask(batch["label"][i, :h, :w].astype(np.uint8), os.path.join(directory, f"{image_id}_gt.png"))
        saved += 1
    return saved


def _init_from(state: TrainState, path: str) -> TrainState:
    from fcn_jax import pretrained

    loaded = checkpoints.load_params(path)
    params, report = pretrained.merge_params(jax.tree.map(np.asarray, state.params), loaded, strict=False)
    logging.info("init_from %s: %s", path, report)
    return state.replace(params=params, opt_state=state.tx.init(params))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train `config` in `workdir` (resuming from its latest checkpoint), evaluate, return the final metrics."""
    validate_config(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:  # evaluate/predict read the model settings back from it
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))
    mesh = parallel.create_mesh()
    try:
        parallel.check_batch_size(config.train.global_batch_size, mesh)
    except ValueError as error:
        raise ConfigError(f"config.train.global_batch_size: {error}") from None
    train_source, eval_source = load_sources(config)

    model = create_model(config.model)
    init_rng, dropout_rng = init_key(config.seed), jax.random.PRNGKey(config.seed)
    crop_h, crop_w = config.data.crop_size
    image_shape = (config.train.global_batch_size, crop_h, crop_w, 3)
    replicated = parallel.replicated(mesh)
    state = jax.jit(functools.partial(create_train_state, config, model, image_shape=image_shape),
                    out_shardings=replicated)(init_rng)
    dropout_rng = jax.device_put(dropout_rng, replicated)

    manager = checkpoints.create_manager(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
                                         async_save=config.train.async_checkpoint)
    if manager.latest_step() is not None:
        state, dropout_rng, meta = checkpoints.restore(manager, state, dropout_rng)
        logging.info("resumed from %s at step %d", workdir, meta["step"])
    elif config.init_from:
        state = parallel.replicate(_init_from(jax.device_get(state), config.init_from), mesh)
    start_step = int(parallel.fetch(state.step))

    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("%s (%s geometry, width %g): %s params on %d device(s), %d process(es)", config.model.variant,
                 config.model.geometry, config.model.width, f"{num_params:,}", mesh.devices.size, jax.process_count())

    train_ds = input_pipeline.train_dataset(
        train_source, global_batch_size=config.train.global_batch_size, crop_size=(crop_h, crop_w), seed=config.seed,
        start_step=start_step, process_index=jax.process_index(), process_count=jax.process_count(),
        scale_range=tuple(config.data.scale_range) or None, flip=config.data.flip,
        normalization=config.data.normalization)
    batches = train_ds.as_numpy_iterator()

    step_fn = functools.partial(train_step, loss_normalization=config.loss_normalization,
                                num_classes=config.model.num_classes)
    abstract_batch = {
        "image": jax.ShapeDtypeStruct(image_shape, jnp.float32, sharding=parallel.batch_sharded(mesh)),
        "label": jax.ShapeDtypeStruct(image_shape[:3], jnp.int32, sharding=parallel.batch_sharded(mesh)),
    }
    t0 = time.time()
    compiled_train = jax.jit(step_fn, out_shardings=(replicated, replicated), donate_argnums=(0,)).lower(
        state, abstract_batch, dropout_rng).compile()
    logging.info("compiled train_step once in %.1fs (1 train compilation)", time.time() - t0)
    compiled_eval: dict = {}

    writer = Writer(workdir, start_step)
    num_steps = config.train.num_steps
    schedule = jax.jit(learning_rate_schedule(config.optim, num_updates(config)))  # one compile, not one per op
    progress = _progress(start_step, num_steps)
    result: dict = {}
    last_good_step = manager.latest_step()
    window_start, window_images = time.time(), 0
    pending = None  # (step, metrics) of the previous step: checked one step late so dispatch stays async
    try:
        for step in range(start_step + 1, num_steps + 1):
            batch = parallel.host_to_global(next(batches), mesh)
            state, step_metrics = compiled_train(state, batch, dropout_rng)
            window_images += config.train.global_batch_size
            if pending is not None:
                _check_finite(*pending, last_good_step, workdir)
            pending = (step, step_metrics)
            if step % config.train.log_every == 0 or step == num_steps:
                _check_finite(*pending, last_good_step, workdir)
                values = parallel.fetch({k: step_metrics[k] for k in ("loss", "pixel_acc")})
                elapsed = time.time() - window_start
                values = {k: float(v) for k, v in values.items()}
                values["images_per_s"] = window_images / max(elapsed, 1e-9)
                values["learning_rate"] = float(schedule((step - 1) // config.optim.grad_accum_steps))
                writer.write(step, "train", values)
                progress.update(step - progress.n)
                progress.set_postfix(loss=f"{values['loss']:.4g}", img_s=f"{values['images_per_s']:.1f}")
                window_start, window_images = time.time(), 0
            is_eval = step % config.train.eval_every == 0 or step == num_steps
            if is_eval:
                result = evaluate(state.params, eval_source, config, mesh, compiled_eval,
                                  sample_dir=os.path.join(workdir, "samples", f"step_{step:06d}"))
                writer.write(step, config.data.eval_split, result)
                window_start = time.time()  # images/s measures training only
                logging.info("step %d %s: pixel acc %.4f  mean acc %.4f  mean IU %.4f  fw IU %.4f", step,
                             config.data.eval_split, result["pixel_acc"], result["mean_acc"], result["mean_iou"],
                             result["fw_iou"])
            if step % config.train.checkpoint_every == 0 or step == num_steps:
                _check_finite(*pending, last_good_step, workdir)
                checkpoints.save(manager, step, state, dropout_rng, {"step": step, "input_position": step},
                                 metrics=result if is_eval else None)
                last_good_step = step
        logging.info("compilations: train 1, eval %d", len(compiled_eval))
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()
        progress.close()
    return result


def _check_finite(step: int, step_metrics: dict, last_good_step: int | None, workdir: str) -> None:
    if not bool(parallel.fetch(step_metrics["finite"])):
        where = (f"the last good checkpoint is step {last_good_step} in {workdir}/checkpoints"
                 if last_good_step is not None else "no checkpoint was written yet")
        raise FloatingPointError(
            f"non-finite loss or gradient at step {step} (update skipped, training stopped); {where}. "
            "Lower config.optim.learning_rate or check the data.")


def _progress(start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", disable=jax.process_index() != 0,
                dynamic_ncols=True, mininterval=5.0)
