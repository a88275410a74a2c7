"""xla_options: the memory-optimised XLA:CPU scheduler for the training step changes where memory goes, not values."""
import functools

import jax
import numpy as np

from benchmarks import common, train_step as bench_train_step
from fcn_jax import models, step, xla_options


def test_training_options_are_the_memory_scheduler_on_cpu_only():
    assert xla_options.training("cpu") == xla_options.CPU_TRAINING_OPTIONS
    assert xla_options.training("gpu") == {} and xla_options.training("tpu") == {}
    assert xla_options.training() == xla_options.CPU_TRAINING_OPTIONS  # the tests run on the CPU backend


def test_a_scheduler_chosen_in_xla_flags_wins(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED")
    assert xla_options.training("cpu") == {}


def test_an_option_this_jaxlib_rejects_is_left_out(monkeypatch):
    monkeypatch.setattr(xla_options, "CPU_TRAINING_OPTIONS", {xla_options.SCHEDULER_OPTION: "NOT_A_SCHEDULER"})
    assert xla_options.training("cpu") == {}


def test_the_training_step_gives_the_same_values_in_less_memory():
    """FCN-8s (width 1/16, 64x64, the reference recipe): one step with and without the options; the params after
    it are equal bit for bit and XLA's temp buffer is smaller (the padded inputs of the kernel gradients are no
    longer computed during the forward)."""
    config = bench_train_step.make_config("fcn8s", "caffe", "fp32", learning_rate=1e-6, dropout_rate=0.0)
    config.model.width = 1 / 16
    batch = bench_train_step.make_batch(1, 64)
    model = models.create_model("fcn8s", geometry="caffe", width=1 / 16)
    params = common.random_params(model, batch["image"].shape)
    state = step.TrainState.create(apply_fn=model.apply, params=params, tx=step.create_optimizer(config, params))
    train = functools.partial(step.train_step, loss_reduction="sum", num_classes=21, learnable_upsample=False)
    results = []
    for options in ({}, xla_options.training("cpu")):
        compiled = jax.jit(train, compiler_options=options).lower(state, batch, jax.random.PRNGKey(0)).compile()
        new_state, _ = compiled(state, batch, jax.random.PRNGKey(0))
        results.append((compiled.memory_analysis().temp_size_in_bytes, jax.tree.leaves(new_state.params)))
    (default_temp, default_params), (memory_temp, memory_params) = results
    assert all(np.array_equal(a, b) for a, b in zip(default_params, memory_params))
    assert not np.array_equal(default_params[0], jax.tree.leaves(params)[0])  # the step did move the params
    assert memory_temp < default_temp
