"""core/xla_options.py: the memory-optimised XLA:CPU scheduler for the training step changes where memory goes, not
values."""
import functools

import jax
import numpy as np
import pytest

from experiments import base
from fcn_jax.core import xla_options
from fcn_jax.models import zoo
from fcn_jax.train import step

needs_the_option = pytest.mark.skipif(
    not xla_options._accepted("cpu", tuple(sorted(xla_options.CPU_TRAINING_OPTIONS.items()))),
    reason="this jaxlib does not take xla_cpu_scheduler_type (the training step compiles without it)")


@needs_the_option
def test_training_options_are_the_memory_scheduler_on_cpu():
    assert xla_options.training("cpu") == xla_options.CPU_TRAINING_OPTIONS
    assert xla_options.training() == xla_options.CPU_TRAINING_OPTIONS  # the tests run on the CPU backend


def test_other_platforms_get_no_options_and_no_probe(monkeypatch):
    def probe(*args):
        raise AssertionError("probed an option on a platform that does not use it")

    monkeypatch.setattr(xla_options, "_accepted", probe)
    assert xla_options.training("gpu") == {} and xla_options.training("tpu") == {}


def test_a_scheduler_chosen_in_xla_flags_wins(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED")
    assert xla_options.training("cpu") == {}


def test_an_option_this_jaxlib_rejects_is_left_out_and_logged(monkeypatch, caplog):
    monkeypatch.setattr(xla_options, "CPU_TRAINING_OPTIONS", {xla_options.SCHEDULER_OPTION: "NOT_A_SCHEDULER"})
    assert xla_options.training("cpu") == {}
    assert "NOT_A_SCHEDULER" in caplog.text and "compiles without them" in caplog.text


@needs_the_option
def test_the_training_step_gives_the_same_values_in_less_memory():
    """FCN-8s (width 1/16, 64x64, the reference recipe's SGD, dropout 0.5): one step with and without the options;
    the params after it are equal bit for bit and XLA's temp buffer is smaller (the padded inputs of the kernel
    gradients are no longer computed during the forward)."""
    config = base.get_config()
    config.optim.learning_rate = 1e-6
    rng = np.random.default_rng(0)
    batch = {"image": rng.standard_normal((1, 64, 64, 3)).astype(np.float32),
             "label": rng.integers(0, 21, (1, 64, 64)).astype(np.int32)}
    model = zoo.create_model("fcn8s", geometry="caffe", width=1 / 16)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), batch["image"])["params"]
    state = step.TrainState.create(apply_fn=model.apply, params=params, tx=step.create_optimizer(config, params))
    train = functools.partial(step.train_step, loss_reduction="sum", num_classes=21, learnable_upsample=False)
    results = []
    for options in ({}, xla_options.training("cpu")):
        compiled = jax.jit(train, compiler_options=options).lower(state, batch, jax.random.PRNGKey(0)).compile()
        new_state, _ = compiled(state, batch, jax.random.PRNGKey(0))
        results.append((compiled.memory_analysis().temp_size_in_bytes, jax.tree.leaves(new_state.params)))
    (default_temp, default_params), (memory_temp, memory_params) = results
    assert all(np.array_equal(a, b) for a, b in zip(default_params, memory_params))
    assert not all(np.array_equal(a, b) for a, b in zip(default_params, jax.tree.leaves(params)))  # it trained
    assert memory_temp < default_temp
