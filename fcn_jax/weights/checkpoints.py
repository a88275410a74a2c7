"""orbax checkpoints: the train state, the dropout rng and the input position, resumable exactly.

A checkpoint at step s holds `state` (params, optimizer state, step), `rng`
(the base dropout key; per-step keys are folded from it) and `meta` (JSON:
step, the input pipeline position, eval metrics). The input pipeline is
step-indexed (see input_pipeline), so the position is the step itself and no
tf.data state has to be stored. Restoring goes into an abstract target built
for the current mesh, so a run may resume on a different device count.

Retention: the `keep` latest checkpoints plus the one with the best mean IU.

This is the only module that drives orbax: training checkpoints, converted weights
(`save_params` / `load_converted`) and reading params back for init_from, evaluate and predict.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from fcn_jax.weights import artifacts

BEST_METRIC = "mean_iou"


def checkpoint_steps(directory: str) -> list[int]:
    """Steps of the finished checkpoints in `directory` (none if it does not exist), ascending."""
    return sorted(ocp.utils.checkpoint_steps(directory)) if os.path.isdir(directory) else []


def create_manager(directory: str, *, keep: int = 3, async_save: bool = True,
                   best_metric: str | None = BEST_METRIC) -> ocp.CheckpointManager:
    """Keeps the `keep` latest checkpoints, plus the best by `best_metric` (None: latest only)."""
    policies = [checkpoint_managers.LatestN(n=keep)]
    if best_metric:
        policies.append(checkpoint_managers.BestN(get_metric_fn=lambda m: m[best_metric], n=1,
                                                  keep_checkpoints_without_metrics=False))
    policy = checkpoint_managers.AnyPreservationPolicy(policies)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,  # a save killed half-way leaves a tmp dir: never restored, removed here
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "rng", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, rng: jax.Array, meta: dict,
         metrics: dict | None = None) -> None:
    """Save (asynchronously if the manager is async). `metrics` ({best_metric: value}) ranks the best checkpoint."""
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            rng=ocp.args.StandardSave({"dropout": rng}),  # Standard* needs a tree, not a bare array
            meta=ocp.args.JsonSave(meta),
        ),
        metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
        force=True,
    )


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def restore(manager: ocp.CheckpointManager, state: Any, rng: jax.Array, step: int | None = None):
    """Restore (state, rng, meta) at `step` (default: latest) into the shapes/shardings of the given ones."""
    step = manager.latest_step() if step is None else step
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(state)),
            rng=ocp.args.StandardRestore(abstract_like({"dropout": rng})),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return restored.state, restored.rng["dropout"], restored.meta


def newest_intact(steps: list[int], load, where: str):
    """load(step) for the newest step that loads; each damaged newer one is logged (step and why) and skipped.

    A kill or a full disk can leave the latest checkpoint unreadable while older ones are intact: falling back
    costs the steps since them instead of the whole run.
    """
    problems = []
    for step in sorted(steps, reverse=True):
        try:
            return step, load(step)
        except Exception as error:  # orbax raises many types for truncated / missing files
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            logging.warning("checkpoint step %d in %s is damaged, skipped: %s", step, where, reason)
            problems.append(f"step {step}: {reason}")
    raise ValueError(f"no intact checkpoint in {where} ({'; '.join(problems)}); delete it to start afresh")


def set_aside(directory: str, steps: list[int]) -> None:
    """Rename damaged step folders to <step>.damaged[.n]: kept for inspection, never listed as checkpoints."""
    for step in steps:
        target, n = os.path.join(directory, f"{step}.damaged"), 1
        while os.path.exists(target):
            target, n = os.path.join(directory, f"{step}.damaged.{n}"), n + 1
        os.rename(os.path.join(directory, str(step)), target)
        logging.warning("checkpoint step %d set aside as %s", step, target)


def load_params(path: str) -> dict:
    """Params (numpy) from a training workdir / its checkpoints dir (latest step) or a converted-weights dir.

    Used by `init_from` (staged training: 16s from 32s, 8s from 16s) and by evaluate/predict.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"init_from / weights path {path} does not exist or is not a directory")
    if os.path.isfile(os.path.join(path, artifacts.WEIGHTS_SIDECAR)):  # converted weights
        params, _ = load_converted(path)
        return params
    for directory in (os.path.join(path, artifacts.CHECKPOINTS_DIR), path):
        steps = checkpoint_steps(directory)
        if steps:
            return newest_intact(steps, lambda step: _load_state_params(directory, step), directory)[1]
    raise FileNotFoundError(
        f"{path} holds neither a training checkpoint (checkpoints/<step>/state) nor converted weights "
        "(fcn_jax_weights.json from python -m fcn_jax.convert)"
    )


def _load_state_params(directory: str, step: int) -> dict:
    state_dir = epath.Path(directory, str(step), "state")
    # The handler, not a Checkpointer: "state" is one item of a step, which has no metadata file of its own.
    # A numpy target restores on the host whatever device / process count saved it (without a target orbax
    # rebuilds the saved shardings and fails on another topology).
    handler = ocp.StandardCheckpointHandler()
    try:
        target = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), handler.metadata(state_dir))
        return handler.restore(state_dir, args=ocp.args.StandardRestore(target))["params"]
    finally:
        handler.close()


def save_params(directory: str, params: dict, metadata: dict) -> None:
    """Converted weights: DIR/checkpoint (orbax, {'params': params}) and DIR/fcn_jax_weights.json."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and os.listdir(directory):
        raise FileExistsError(f"output directory {directory} is not empty; choose a new one")
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, artifacts.WEIGHTS_CHECKPOINT), {"params": params})
    artifacts.write_json(os.path.join(directory, artifacts.WEIGHTS_SIDECAR), dict(metadata))


def load_converted(path: str) -> tuple[dict, dict]:
    """(params as NumPy arrays, metadata) from a directory written by `save_params`."""
    path = os.path.abspath(path)
    sidecar = os.path.join(path, artifacts.WEIGHTS_SIDECAR)
    if not os.path.isfile(sidecar):
        raise FileNotFoundError(f"{path} holds no converted weights ({artifacts.WEIGHTS_SIDECAR} missing; "
                                "see python -m fcn_jax.convert)")
    metadata = artifacts.read_json(sidecar)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(os.path.join(path, artifacts.WEIGHTS_CHECKPOINT))
    return jax.tree.map(np.asarray, restored["params"]), metadata
