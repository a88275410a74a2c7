"""XLA compile options for the training step and inference: on XLA:CPU, the memory-optimised instruction scheduler.

XLA:CPU's default scheduler (concurrency-optimised) starts independent work as early as it can. In the VGG16
training step that is the padded copies of the conv inputs for the per-tap kernel gradients
(models.conv_forms.tap_conv): scheduled during the forward, they sit beside every other residual at the backward's
peak. The memory-optimised scheduler computes them where the backward needs them. The step's values are the same bit
for bit; its peak host memory fell in every case measured (VGG16 and ResNet FCNs), VGG16's step time too, a ResNet's
stayed level. Inference: the Winograd convolutions' (models.winograd) transformed tiles and filters, started early
by the default scheduler, held several times the direct forward's temp memory at once; the memory-optimised
scheduler brings it back below torch's peak (docs/benchmarks.md).
`XLA_FLAGS=--xla_cpu_scheduler_type=...` overrides it.
"""
import functools
import logging
import os

import jax
import jax.numpy as jnp

SCHEDULER_OPTION = "xla_cpu_scheduler_type"
CPU_TRAINING_OPTIONS = {SCHEDULER_OPTION: "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


@functools.cache
def _accepted(platform: str, options: tuple) -> bool:
    """Whether this jaxlib compiles with `options` on `platform` (an XLA without the option or value rejects it)."""
    try:
        x = jax.device_put(jnp.zeros(()), jax.devices(platform)[0])
        jax.jit(lambda v: v + 1, compiler_options=dict(options)).lower(x).compile()
    except Exception as error:  # noqa: BLE001 -- jaxlib raises its own error types for unknown options
        logging.warning("this jax does not take the XLA options %s (%s): the training step compiles without them",
                        dict(options), str(error).splitlines()[0] if str(error) else type(error).__name__)
        return False
    return True


def training(platform: str | None = None) -> dict:
    """Compiler options for jax.jit of the training step on `platform` (default: jax's default backend).

    CPU_TRAINING_OPTIONS on the CPU, unless XLA_FLAGS chooses a scheduler itself (the user's choice wins) or this
    jaxlib does not take the option (logged once); {} on every other platform, without probing it."""
    platform = jax.default_backend() if platform is None else platform
    if platform != "cpu" or SCHEDULER_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_TRAINING_OPTIONS) if _accepted(platform, tuple(sorted(CPU_TRAINING_OPTIONS.items()))) else {}


def inference(platform: str | None = None) -> dict:
    """Compiler options for jax.jit of a forward (predict, evaluate, validation): the training step's."""
    return training(platform)
