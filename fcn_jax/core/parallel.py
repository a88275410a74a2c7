"""Data parallelism: a 1-D ("data",) mesh, batch sharded, state replicated.

This is the modern form of "pmap over all devices": `jax.pmap` is now a thin
wrapper over `jit(shard_map)` and in maintenance mode, while `jax.jit` with
`NamedSharding`s lets XLA insert the gradient all-reduce itself, works the same
on one device, eight fake CPU devices, a GPU node or a multi-host TPU pod, and
keeps `train_step` a plain function of global arrays. The mesh axis is
`AxisType.Auto` because explicit sharding rejects some ops we use (bincount).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def create_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis, the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """Every device must get the same number of examples: fail early and clearly."""
    n = mesh.devices.size
    if global_batch_size <= 0 or global_batch_size % n:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the {n} devices of the mesh; "
            f"use a multiple of {n} (e.g. --config.train.global_batch_size={max(n, global_batch_size // n * n or n)})"
        )


def host_to_global(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch (this process's rows) -> global arrays sharded over the mesh.

    With P processes each holding B/P rows, the global array has B rows in
    process order, so P processes see exactly what one process with B rows sees.
    """
    sharding = batch_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in batch.items()
        if np.asarray(v).dtype.kind in "biuf"  # numeric fields only (ids stay on the host)
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a host pytree (identical on every process) replicated on every device."""
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def fetch(tree: Any) -> Any:
    """Replicated global arrays -> numpy on this host (works across processes)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)
