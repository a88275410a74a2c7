"""The pure training step and its optimiser: TrainState, the per-group SGD / Adam of the reference recipe, and
`train_step`, a pure function of global arrays (core.parallel lays it over devices; train.loop.run compiles it once).

Imports neither TensorFlow nor ml_collections: a config is any object with the attributes used (config.optim.*,
config.train.num_steps, config.model.learnable_upsample), so the GPU benchmark runs it where only jax, flax,
optax, orbax, numpy and torch are installed. train.job builds the FCN training job around it.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from fcn_jax.core import losses, metrics
from fcn_jax.models import resnet, zoo


class ConfigError(ValueError):
    """A config value that cannot work; main prints it as one line."""


class TrainState(train_state.TrainState):
    """params, opt_state, step (+ apply_fn, tx as static fields)."""


# ----------------------------------------------------------------------------- optimiser


def param_labels(params: Any, learnable_upsample: bool) -> Any:
    """'weight' | 'bias' | 'frozen' per leaf: decay kernels only, biases at a higher lr, frozen deconvolutions and
    batch-norm statistics (train_step moves those itself)."""

    def label(path, _):
        names = tuple(getattr(p, "key", str(p)) for p in path)
        if zoo.is_statistic_param(names) or (not learnable_upsample and zoo.is_upsample_param(names)):
            return "frozen"
        return "bias" if names[-1] == "bias" else "weight"

    return jax.tree_util.tree_map_with_path(label, params)


def learning_rate_schedule(optim: Any, num_steps: int) -> optax.Schedule:
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


def num_updates(config: Any) -> int:
    """Optimiser updates in a run: with accumulation over k steps, one update every k train steps."""
    return max(1, config.train.num_steps // config.optim.grad_accum_steps)


def create_optimizer(config: Any, params: Any) -> optax.GradientTransformation:
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
    """Key for parameter init: the "rbg" generator compiles faster than threefry on CPU (docs/benchmarks.md).

    Only the initial draw depends on it (dropout keeps threefry, whose masks do not depend on the
    sharding), so this changes start-up time, not any result's reproducibility for a given backend.
    """
    return jax.random.key(seed, impl="rbg")


def create_train_state(config: Any, model, rng: jax.Array,
                       image_shape: tuple[int, int, int, int]) -> TrainState:
    """Fresh params (zero score layers, bilinear deconvolutions) and optimiser state."""
    params = model.init({"params": rng}, jnp.zeros(image_shape, jnp.float32), train=False)["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=create_optimizer(config, params))


# ----------------------------------------------------------------------------- the pure step


def all_finite(tree: Any) -> jax.Array:
    """True iff every element of every leaf is finite, in one fused pass per leaf.

    x * 0 is 0 for finite x and NaN for inf or NaN (IEEE; XLA does not fold it away), so the sum is
    finite exactly when all elements are; one cheap fused reduction on XLA:CPU, unlike all(isfinite(x)).
    """
    return jnp.isfinite(sum(jnp.sum(x * 0) for x in jax.tree.leaves(tree)))


def without_frozen_gradients(params: Any, learnable_upsample: bool) -> Any:
    """params with a stop_gradient on the leaves the optimiser freezes (`param_labels`): their gradients are never
    computed. The frozen upsampling's kernel gradient was the longest single op of the reference step in a profile
    on XLA:CPU (docs/benchmarks.md); torch's reference does not compute it either (requires_grad=False)."""
    return jax.tree.map(lambda p, label: jax.lax.stop_gradient(p) if label == "frozen" else p, params,
                        param_labels(params, learnable_upsample))


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, loss_reduction: str,
               num_classes: int | tuple[int, ...], aux_loss_weight: float = 0.0,
               learnable_upsample: bool = True,
               loss_spec: losses.LossSpec = losses.PLAIN) -> tuple[TrainState, dict]:
    """One SGD step on a global batch. A non-finite loss or gradient leaves the state unchanged.

    num_classes: the classes of each score head (a tuple for a multi-head FCN, whose loss sums the heads').
    A model may sow "aux" logits (added to the loss x aux_loss_weight) and "batch_stats" (batch-norm statistics
    of the global batch, which move the running ones: resnet.running_statistics). learnable_upsample=False: the
    upsampling kernels are frozen (config.model.learnable_upsample) and get no gradient. loss_spec: the loss
    (config.loss: class weights, focal, OHEM, Dice; plain cross entropy by default)."""
    head_classes = (num_classes,) if isinstance(num_classes, int) else tuple(num_classes)
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
        params = without_frozen_gradients(params, learnable_upsample)
        logits, sown = state.apply_fn({"params": params}, batch["image"], train=True, rngs={"dropout": dropout_rng},
                                      mutable=["aux", "batch_stats"] if aux_loss_weight else ["batch_stats"])
        loss, num_valid = losses.multi_head_loss(logits, batch["label"], head_classes, loss_spec,
                                                 reduction=loss_reduction)
        if aux_loss_weight and "aux" in sown:
            aux_loss, _ = losses.multi_head_loss(sown["aux"]["logits"][0], batch["label"], head_classes, loss_spec,
                                                 reduction=loss_reduction)
            loss = loss + aux_loss_weight * aux_loss
        return loss, (logits, num_valid, sown.get("batch_stats", {}))

    (loss, (logits, num_valid, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    finite = jnp.isfinite(loss) & all_finite(grads)

    def update(s):
        s = s.apply_gradients(grads=grads)
        return s.replace(params=resnet.running_statistics(s.params, batch_stats)) if batch_stats else s

    # cond, not a select over the whole state: only one branch runs, and the donated state is updated
    # in place instead of keeping old and new copies alive (benchmarks/train_step.py, docs/benchmarks.md).
    new_state = jax.lax.cond(finite, update, lambda s: s, state)
    first_logits, first_labels = losses.split_heads(logits, batch["label"], head_classes)[0]
    return new_state, {
        "loss": loss,
        "finite": finite,
        "num_valid": num_valid,
        "pixel_acc": metrics.pixel_accuracy(jnp.argmax(first_logits, -1), first_labels, head_classes[0]),
    }
