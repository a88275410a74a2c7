"""orbax checkpoints: the train state, the dropout rng and the input position, resumable exactly.

A checkpoint at step s holds `state` (params, optimizer state, step), `rng`
(the base dropout key; per-step keys are folded from it) and `meta` (JSON:
step, the input pipeline position, eval metrics). The input pipeline is
step-indexed (see input_pipeline), so the position is the step itself and no
iterator state has to be stored. Restoring goes into an abstract target built
for the current mesh, so a run may resume on a different device count.

Retention: the `keep` latest checkpoints plus the one with the best mean IU.

A save that fails (a full disk) is one line, CheckpointSaveError, with its partial `<step>.orbax-checkpoint-tmp`
folder removed (orbax's own tracebacks, logged from each thread the failure passes, are dropped). Checkpoints of
another model (config.json deleted, then another width) are a ModelMismatchError, not "damaged".

This is the only module that drives orbax: training checkpoints, converted weights
(`save_params` / `load_converted`) and reading params back for init_from, evaluate and predict.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from fcn_jax.weights import artifacts

BEST_METRIC = "mean_iou"
TMP_DIR = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")  # orbax writes step s there, then renames it to s


class CheckpointSaveError(OSError):
    """A checkpoint that could not be written (disk full, ...): one line, its partial folder removed."""


class ModelMismatchError(artifacts.WorkdirError):
    """Intact checkpoints of another model or config than the one restoring them: not damage."""


class _DropOrbaxTracebacks(logging.Filter):
    """orbax logs a failed save's exception with its traceback from every thread it passes (4 to 8 times, hundreds
    of lines); the exception itself reaches manager.save / wait_until_finished, which report it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname)


def _drop_orbax_tracebacks() -> None:
    absl_logger = logging.getLogger("absl")  # orbax logs through absl
    if not any(isinstance(f, _DropOrbaxTracebacks) for f in absl_logger.filters):
        absl_logger.addFilter(_DropOrbaxTracebacks())
    if not getattr(sys.unraisablehook, "drops_closed_loop_callbacks", False):
        sys.unraisablehook = _without_closed_loop_callbacks(sys.unraisablehook)


def _without_closed_loop_callbacks(previous):
    """An unraisable-exception hook dropping 'Event loop is closed': after a failed save orbax closes its event loop
    while tensorstore finishes the other writes, and each one's callback would print a traceback (hundreds)."""
    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    return hook


class _Manager(ocp.CheckpointManager):
    """orbax's manager, whose failed saves raise CheckpointSaveError (one line) and leave no tmp folder."""

    def save(self, step: int, *args, **kwargs) -> bool:
        try:
            return super().save(step, *args, **kwargs)
        except CheckpointSaveError:
            raise
        except (OSError, ValueError) as error:  # tensorstore reports a failed write as a ValueError
            raise save_failed(str(self.directory), error) from None

    def wait_until_finished(self) -> None:
        try:
            super().wait_until_finished()
        except (OSError, ValueError) as error:
            raise save_failed(str(self.directory), error) from None


def remove_tmp_dirs(directory: str) -> list[int]:
    """Remove the partial step folders of failed saves (process 0: the folder is shared); their steps."""
    names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    steps = [int(m.group(1)) for m in map(TMP_DIR.match, names) if m]
    if jax.process_index() == 0:
        for name in names:
            if TMP_DIR.match(name):
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    return sorted(set(steps))


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if getattr(error, "errno", None) == errno.ENOSPC or "RESOURCE_EXHAUSTED" in text or "No space left" in text:
        return "no space left on device"
    return text[:300] or type(error).__name__


def _join_save_threads(timeout_s: float = 60.0) -> None:
    """Wait for orbax's other save threads: the first failure is raised while they still write (they would make the
    tmp folder again after its removal)."""
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if type(thread).__module__.startswith("orbax.") and thread is not threading.current_thread():
            threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))  # theirs raises their error


def save_failed(directory: str, error: BaseException) -> CheckpointSaveError:
    """The one-line error of a failed save, after removing what it left half-written."""
    _join_save_threads()
    steps = remove_tmp_dirs(directory)
    kept = checkpoint_steps(directory)
    what = f"checkpoint step {', '.join(map(str, steps))}" if steps else "a checkpoint"
    resume = f"a rerun resumes from step {kept[-1]}" if kept else "no checkpoint was written before it"
    return CheckpointSaveError(f"cannot write {what} to {directory}: {_reason(error)} (partial files removed; "
                               f"{resume})")


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
    _drop_orbax_tracebacks()
    return _Manager(os.path.abspath(directory), options=options, item_names=("state", "rng", "meta"))


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
    """Restore (state, rng, meta) at `step` (default: latest) into the shapes/shardings of the given ones; a
    checkpoint whose arrays are not the target's is a ModelMismatchError."""
    step = manager.latest_step() if step is None else step
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(state)),
                rng=ocp.args.StandardRestore(abstract_like({"dropout": rng})),
                meta=ocp.args.JsonRestore(),
            ),
        )
    except Exception:  # checked only after a failure: a restore that works is never refused
        differences = tree_differences(_stored_shapes(manager, step), _shapes(state))
        if differences:
            raise ModelMismatchError(
                f"{manager.directory}: its checkpoints were written by another model or config than this run's "
                f"({differences}); run with the config that wrote them, or use a new workdir") from None
        raise
    return restored.state, restored.rng["dropout"], restored.meta


def _path(keys) -> str:
    """'params/conv1/kernel' for a tree path, whether its keys are dict keys, attributes or indices."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keys)


def _shapes(tree: Any) -> dict[str, tuple]:
    return {_path(p): tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)
            for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _stored_shapes(manager: ocp.CheckpointManager, step: int) -> dict[str, tuple] | None:
    """Array shapes of a checkpoint's state from its metadata; None where that is unreadable (damage)."""
    try:
        stored = manager.item_metadata(step)["state"]
    except Exception:  # orbax raises many types for missing / truncated metadata
        return None
    return None if stored is None else _shapes(stored)


def tree_differences(stored: dict[str, tuple] | None, wanted: dict[str, tuple]) -> str:
    """The first differences (params first) between a checkpoint's arrays and a target's; '' if none or unknown."""
    if not stored:
        return ""
    lines = [f"{k}: {stored[k]} in the checkpoint, {wanted[k]} here" for k in wanted
             if k in stored and stored[k] != wanted[k]]
    lines += [f"{k} only in the checkpoint" for k in stored if k not in wanted]
    lines += [f"{k} only here" for k in wanted if k not in stored]
    lines.sort(key=lambda line: not line.startswith("params/"))
    return "; ".join(lines[:3]) + (f"; {len(lines) - 3} more" if len(lines) > 3 else "")


def newest_intact(steps: list[int], load, where: str):
    """load(step) for the newest step that loads; each damaged newer one is logged (step and why) and skipped.

    A kill or a full disk can leave the latest checkpoint unreadable while older ones are intact: falling back
    costs the steps since them instead of the whole run. Checkpoints of another model (ModelMismatchError) are not
    damaged: that is raised at once.
    """
    problems = []
    for step in sorted(steps, reverse=True):
        try:
            return step, load(step)
        except ModelMismatchError:
            raise
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
