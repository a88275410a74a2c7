"""XLA compile options for the training step: on XLA:CPU, the memory-optimised instruction scheduler.

XLA:CPU's default scheduler (concurrency-optimised) starts independent work as early as it can. In the VGG16
training step that is the padded copies of the conv inputs for the per-tap kernel gradients (conv_forms.tap_conv):
scheduled during the forward, they sit beside every other residual at the backward's peak. The memory-optimised
scheduler computes them where the backward needs them; the step's values are the same bit for bit, its peak host
memory and its time both fell on every measured case, and inference did not change (BENCHMARKS.md).
"""
import functools
import os

import jax
import jax.numpy as jnp

SCHEDULER_OPTION = "xla_cpu_scheduler_type"
CPU_TRAINING_OPTIONS = {SCHEDULER_OPTION: "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


@functools.cache
def _accepted(options: tuple) -> bool:
    """Whether this jaxlib compiles with `options` (an XLA without the option or the value rejects it)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros(())).compile()
    except Exception:  # noqa: BLE001 -- jaxlib raises its own error types for unknown options
        return False
    return True


def training(platform: str | None = None) -> dict:
    """Compiler options for jax.jit of the training step on `platform` (default: jax's default backend).

    CPU_TRAINING_OPTIONS on the CPU, unless XLA_FLAGS chooses a scheduler itself (the user's choice wins) or this
    jaxlib does not know the option; {} on every other platform."""
    platform = jax.default_backend() if platform is None else platform
    if platform != "cpu" or SCHEDULER_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_TRAINING_OPTIONS) if _accepted(tuple(sorted(CPU_TRAINING_OPTIONS.items()))) else {}
