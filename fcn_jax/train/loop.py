"""The training loop: one for everything fcn_jax trains (the FCNs, the pipeline's classifier).

What differs between trainings is a `Job` (state, step function, batches, evaluation); what every
training does lives here once: skip a finished workdir, refuse one trained under another config,
resume from the latest checkpoint, compile the step once, log (metrics.jsonl, TensorBoard, a progress
bar), evaluate, checkpoint, stop on a non-finite step, stop with a checkpoint on SIGTERM / SIGINT
(preemption), hold the workdir against a second run, and leave result.json when done.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
from typing import Any, Callable, Iterator

import jax

from fcn_jax.core import parallel, xla_options
from fcn_jax.models import zoo
from fcn_jax.train import preemption
from fcn_jax.weights import artifacts, checkpoints, workdir_lock


@dataclasses.dataclass(frozen=True)
class Cadence:
    """How long to train and how often to log, evaluate (0: at the last step only) and checkpoint."""

    num_steps: int
    log_every: int
    checkpoint_every: int
    eval_every: int = 0
    keep_checkpoints: int = 3
    async_checkpoint: bool = True
    loss_spike_factor: float = 0.0  # > 0: stop when a logged loss exceeds this x the median of the last 10


@dataclasses.dataclass(frozen=True)
class Job:
    """One training, ready to run. `step_fn(state, batch, rng) -> (state, metrics)` is pure; batches(s) yields
    host batches s + 1, s + 2, ...; evaluate(params, step) -> scores, written under split `eval_split`."""

    state: Any  # a TrainState replicated over mesh, freshly initialised
    rng: jax.Array
    step_fn: Callable
    abstract_batch: dict  # ShapeDtypeStructs (with shardings) of one global batch
    batches: Callable[[int], Iterator[dict]]
    batch_size: int
    mesh: Any
    log_keys: tuple[str, ...]
    evaluate: Callable[[Any, int], dict] | None = None
    eval_split: str = "eval"
    init: Callable[[Any], Any] | None = None  # applied to a fresh (not resumed) state: init_from
    learning_rate: Callable[[int], float] | None = None  # logged lr at a train step
    best_metric: str | None = None  # the checkpoint kept besides the latest ones


def run(config: dict, workdir: str, cadence: Cadence, make_job: Callable[[], Job], *, name: str = "train",
        resumable_keys: tuple[str, ...] = ()) -> dict:
    """Train in `workdir` (resuming it) and return the final scores + images_per_s + params.

    A workdir that finished under `config` returns its result.json without building the job; one trained under a
    config that differs in more than `resumable_keys` (the dotted keys, or their prefixes, that may change between
    runs: the cadence) is a WorkdirError naming the keys, and so is a workdir another run is training. A signal
    stops the run with a checkpoint: preemption.Preempted.
    """
    is_writer = jax.process_index() == 0
    with workdir_lock.hold(workdir, active=is_writer), preemption.Watcher() as watcher:
        result = artifacts.finished_or_resumable(config, workdir, resumable_keys)
        if result is not None:
            logging.info("%s: finished already in %s (%s)", name, workdir, artifacts.RESULT_FILE)
            return result
        return _run(config, workdir, cadence, make_job, name, watcher)


def _run(config: dict, workdir: str, cadence: Cadence, make_job: Callable[[], Job], name: str,
         watcher: preemption.Watcher) -> dict:
    is_writer = jax.process_index() == 0
    directory = os.path.join(workdir, artifacts.CHECKPOINTS_DIR)
    _check_writable(directory)
    saved_steps = checkpoints.checkpoint_steps(directory)
    resume_step = saved_steps[-1] if saved_steps else 0
    try:
        # Several processes agree to stop at (the highest step they reported) + 1: report the step before the one
        # they resume at, so that a signal while the job is built and restored stops them there.
        if watcher.should_stop(max(resume_step - 1, 0)):  # (-1 reads as "no step reported")
            raise preemption.Interrupted(watcher.signal_name or "SIGTERM")
        with watcher.interruptible():  # the first run's dataset build can be long
            job = make_job()
    except preemption.Interrupted as interrupted:
        raise preemption.Preempted(interrupted.signal_name, resume_step, workdir, saved=False) from None
    num_params = zoo.count_params(job.state.params)  # before the first step donates the state
    manager = checkpoints.create_manager(directory, keep=cadence.keep_checkpoints,
                                         async_save=cadence.async_checkpoint, best_metric=job.best_metric)
    state, rng, pending_eval = job.state, job.rng, False
    if manager.latest_step() is not None:
        step, (state, rng, meta) = checkpoints.newest_intact(
            manager.all_steps(), lambda step: checkpoints.restore(manager, job.state, job.rng, step), directory)
        if step != manager.latest_step() and is_writer:  # set the damaged ones aside: their steps get saved again
            checkpoints.set_aside(directory, [s for s in manager.all_steps() if s > step])
            manager.reload()
        logging.info("%s: resumed from %s at step %d", name, workdir, step)
        pending_eval = bool(meta.get("pending_eval"))
    elif job.init is not None:
        state = job.init(state)
    if is_writer:  # after the restore: checkpoints of another model must not get this config (evaluate reads it)
        artifacts.write_json(os.path.join(workdir, artifacts.CONFIG_FILE), config)
    start_step = int(parallel.fetch(state.step))
    writer = artifacts.Writer(workdir, start_step, active=is_writer)
    try:
        if watcher.should_stop(start_step):  # a signal while the job was built or restored
            raise preemption.Interrupted(watcher.signal_name or "SIGTERM")
        result = _train(job, cadence, state, rng, start_step, manager, writer, workdir, name, watcher, pending_eval)
    except preemption.Interrupted as interrupted:  # before the first step, or in its compilation: nothing new to save
        raise preemption.Preempted(interrupted.signal_name, start_step, workdir, saved=False) from None
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()
    result = {**result, "images_per_s": artifacts.median_train_speed(workdir), "params": num_params,
              "steps": cadence.num_steps}
    if is_writer:
        return artifacts.write_result(config, workdir, result)
    return artifacts.json_clean(result)


def _check_writable(directory: str) -> None:
    """Fail now, in one line, if checkpoints cannot be written (not after hours, from a background thread)."""
    probe = os.path.join(directory, f".write_probe_{jax.process_index()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise artifacts.WorkdirError(f"cannot write checkpoints to {directory}: {error.strerror or error}") from None


def compile_step(job: Job, state: Any, rng: jax.Array):
    """The step compiled once, state donated (updated in place), outputs replicated, with the mesh's platform's
    training options (xla_options)."""
    replicated = parallel.replicated(job.mesh)
    start = time.time()
    options = xla_options.training(job.mesh.devices.flat[0].platform)
    compiled = jax.jit(job.step_fn, out_shardings=(replicated, replicated), donate_argnums=(0,),
                       compiler_options=options).lower(state, job.abstract_batch, rng).compile()
    logging.info("compiled the train step once in %.1fs (1 train compilation)", time.time() - start)
    return compiled


def _train(job: Job, cadence: Cadence, state, rng, start_step: int, manager, writer, workdir: str, name: str,
           watcher: preemption.Watcher, pending_eval: bool) -> dict:
    """Steps start_step + 1 .. num_steps; returns the last evaluation's scores."""
    num_steps = cadence.num_steps
    result: dict = {}
    # Saved before its evaluation (it failed or was interrupted), or stopped after its last checkpoint before
    # result.json: score that step first.
    if (pending_eval or start_step >= num_steps) and job.evaluate is not None:
        with watcher.interruptible():
            result = job.evaluate(state.params, start_step)
        writer.write(start_step, job.eval_split, result, replace=True)  # a row of a run stopped since: rescored
    if start_step >= num_steps:
        return result
    compiled = watcher.run_interruptibly(lambda: compile_step(job, state, rng))
    batches = job.batches(start_step)  # closed below: its reader threads end with the loop, also on an error
    progress = _progress(start_step, num_steps, name)
    last_good_step = manager.latest_step()
    window_start, window_images = time.time(), 0
    losses: list[float] = []  # logged losses, for the spike guard
    pending = None  # (step, metrics) of the previous step: checked one step late so dispatch stays async
    try:
        for step in range(start_step + 1, num_steps + 1):
            state, step_metrics = compiled(state, parallel.host_to_global(next(batches), job.mesh), rng)
            window_images += job.batch_size
            if pending is not None:
                _check_finite(*pending, last_good_step, workdir)
            pending = (step, step_metrics)
            if step % cadence.log_every == 0 or step == num_steps:
                _check_finite(*pending, last_good_step, workdir)
                values = {k: float(v) for k, v in parallel.fetch({k: step_metrics[k] for k in job.log_keys}).items()}
                values["images_per_s"] = window_images / max(time.time() - window_start, 1e-9)
                if job.learning_rate is not None:
                    values["learning_rate"] = job.learning_rate(step)
                writer.write(step, "train", values)
                _check_spike(step, values[job.log_keys[0]], losses, cadence.loss_spike_factor, last_good_step,
                             workdir)
                progress.update(step - progress.n)
                progress.set_postfix({k: f"{values[k]:.4g}" for k in job.log_keys[:1]},
                                     img_s=f"{values['images_per_s']:.1f}")
                window_start, window_images = time.time(), 0
            is_eval = job.evaluate is not None and (
                (cadence.eval_every and step % cadence.eval_every == 0) or step == num_steps)
            is_checkpoint = step % cadence.checkpoint_every == 0 or step == num_steps
            # Every process, every step: they agree on the step to stop at. The last step finishes the run anyway.
            stop = watcher.should_stop(step) and step < num_steps
            if is_checkpoint or stop or is_eval:
                _check_finite(*pending, last_good_step, workdir)
            if is_eval:
                try:
                    with watcher.interruptible():
                        result = job.evaluate(state.params, step)
                except BaseException as error:  # failed or interrupted: keep this step's training, score it on resume
                    if is_checkpoint or jax.process_count() == 1:  # (a save is collective: the others save it too)
                        _save(manager, step, state, rng, None, pending_eval=True)
                    if isinstance(error, preemption.Interrupted):
                        raise preemption.Preempted(error.signal_name, step, workdir, saved=True) from None
                    raise
                writer.write(step, job.eval_split, result)
                window_start = time.time()  # images/s measures training only
            if is_checkpoint or stop:
                ranked = {job.best_metric: result[job.best_metric]} if is_eval and job.best_metric else None
                _save(manager, step, state, rng, ranked)
                last_good_step = step
            if stop:
                progress.update(step - progress.n)
                raise preemption.Preempted(watcher.signal_name or "SIGTERM", step, workdir, saved=True)
    finally:
        progress.close()
        if hasattr(batches, "close"):
            batches.close()
    return result


def _save(manager, step: int, state, rng, ranked: dict | None, pending_eval: bool = False) -> None:
    meta = {"step": step, "input_position": step, "pending_eval": pending_eval}
    checkpoints.save(manager, step, state, rng, meta, metrics=ranked)


def _check_spike(step: int, loss: float, losses: list[float], factor: float, last_good_step: int | None,
                 workdir: str) -> None:
    """Stop before a diverging run's state is checkpointed: a loss above `factor` x the recent median."""
    recent = losses[-10:]
    losses.append(loss)
    if factor and len(recent) >= 5 and loss > factor * statistics.median(recent):
        where = (f"the last checkpoint before it is step {last_good_step} in {workdir}/{artifacts.CHECKPOINTS_DIR}"
                 if last_good_step is not None else "no checkpoint was written before it")
        raise FloatingPointError(
            f"loss spike at step {step}: {loss:.4g} > {factor:g} x {statistics.median(recent):.4g}, the median of "
            f"the last {len(recent)} logged losses (training stopped, this state not saved); {where}. "
            "Lower config.optim.learning_rate, or raise config.train.loss_spike_factor (0 = off).")


def _check_finite(step: int, step_metrics: dict, last_good_step: int | None, workdir: str) -> None:
    if "finite" in step_metrics and not bool(parallel.fetch(step_metrics["finite"])):
        where = (f"the last good checkpoint is step {last_good_step} in {workdir}/{artifacts.CHECKPOINTS_DIR}"
                 if last_good_step is not None else "no checkpoint was written yet")
        raise FloatingPointError(
            f"non-finite loss or gradient at step {step} (update skipped, training stopped); {where}. "
            "Lower config.optim.learning_rate or check the data.")


def _progress(start: int, total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=name, unit="step", disable=jax.process_index() != 0,
                dynamic_ncols=True, mininterval=5.0)
