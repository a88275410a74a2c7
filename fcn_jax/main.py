"""Front door: python -m fcn_jax.main --config experiments/fcn8s.py --workdir runs/fcn8s [--config.key=value ...]

Runs as one process over every local device, or as one of several processes (hosts) of a data-parallel job:
  - explicit: --coordinator_address=host:port --num_processes=N --process_id=i (launch.sh cpu-procs);
  - auto-detected: a SLURM job step with several tasks (srun), a GKE TPU slice;
  - --distributed: jax.distributed.initialize() detects the cluster itself (TPU VM pod slices, Open MPI).
Every process runs the same program; process 0 alone logs progress and writes metrics, TensorBoard and samples;
all processes take part in checkpointing (orbax coordinates them). SIGTERM or SIGINT stops training with a
checkpoint of the step in flight and exit code 75 (preempted: the same command resumes). See docs/scaling.md.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from fcn_jax.train.config_flags import parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (experiments/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, TensorBoard events, samples.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Total number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() and let it detect the cluster (TPU pod slice, SLURM, "
    "Open MPI), even where this module's own detection sees no multi-process environment.")
flags.mark_flags_as_required(["config", "workdir"])

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def is_multi_process_env(environ=os.environ) -> bool:
    """True in a SLURM job step (srun) with several tasks, or on a multi-host GKE TPU slice.

    The SLURM variables are the ones jax's own SLURM detection reads; a batch script outside srun lacks
    SLURM_STEP_NODELIST, so it is (rightly) a single process.
    """
    if all(name in environ for name in _SLURM_VARS) and int(environ["SLURM_NTASKS"] or 1) > 1:
        return True
    return "," in environ.get("TPU_WORKER_HOSTNAMES", "")


def distributed_init_kwargs(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
                            *, force: bool = False, environ=os.environ) -> dict | None:
    """Arguments for jax.distributed.initialize, {} to let it auto-detect, or None for a single-process run."""
    explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    missing = [f"--{name}" for name, value in explicit.items() if value is None]
    if len(missing) == len(explicit):
        return {} if force or is_multi_process_env(environ) else None
    if missing:
        raise app.UsageError(f"--coordinator_address, --num_processes and --process_id go together; missing "
                             f"{', '.join(missing)}")
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise app.UsageError(f"--coordinator_address={coordinator_address!r}: expected host:port")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise app.UsageError(f"--process_id={process_id} is not in [0, --num_processes={num_processes})")
    return explicit


class _QuietLibraries(logging.Filter):
    """Drop the INFO chatter of orbax and tfds; keep their warnings and our own progress."""

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = any(name in record.pathname for name in ("orbax", "tensorflow_datasets", "etils"))
        return record.levelno >= logging.WARNING or not noisy


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    init_kwargs = distributed_init_kwargs(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                          force=_DISTRIBUTED.value)  # bad flags fail before the slow imports
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF (imported only to prepare a dataset) stays quiet
    import jax

    from fcn_jax.train import preemption

    preemption.stop_on_sigterm()  # first: with several processes, jax.distributed's notifier then takes SIGTERM over
    try:
        if init_kwargs is not None:
            jax.distributed.initialize(**init_kwargs)  # before anything touches a JAX backend
        from fcn_jax.train import job

        logging.getLogger().setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietLibraries())
        result = job.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (preemption.Stopped, KeyboardInterrupt) as stopped:  # SIGTERM / SIGINT: saved, resumable
        print(f"fcn_jax: {preemption.stopped_message(stopped)}", file=sys.stderr)
        if init_kwargs is None:
            preemption.exit_now(preemption.EXIT_CODE)
        sys.exit(preemption.EXIT_CODE)  # several processes: jax.distributed shuts down at exit, in step
    except (ValueError, OSError, FloatingPointError, ImportError) as error:  # bad config, data, workdir, install
        print(f"error: {error}", file=sys.stderr)
        preemption.exit_now(1)
    except BaseException:  # a bug: its traceback, then out
        traceback.print_exc()
        preemption.exit_now(1)
    if jax.process_index() == 0 and result:
        summary = {k: round(v, 4) for k, v in result.items() if isinstance(v, float) and k != "images_per_s"}
        print("final validation metrics:", json.dumps(summary))
    if init_kwargs is None:  # (several processes exit normally: jax.distributed shuts down at exit)
        preemption.exit_now(0)  # the work is saved and closed: nothing left for a lingering thread to hold up


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
