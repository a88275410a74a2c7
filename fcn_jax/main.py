"""Front door: python -m fcn_jax.main --config experiments/fcn8s.py --workdir runs/fcn8s [--config.key=value ...]

Initialises jax.distributed when this is one of several processes (TPU pod
slices and SLURM are detected; elsewhere pass --coordinator_address,
--num_processes and --process_id), then calls train.train_and_evaluate.
"""
from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (experiments/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, TensorBoard events, samples.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Total number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.mark_flags_as_required(["config", "workdir"])


def is_multi_process_env(environ=os.environ) -> bool:
    """True on a SLURM job step with several tasks or a multi-worker TPU VM slice."""
    if int(environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_ID" in environ:
        return True
    return "," in environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize_distributed() -> None:
    import jax

    explicit = [_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise app.UsageError("--coordinator_address, --num_processes and --process_id go together")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif is_multi_process_env():
        jax.distributed.initialize()  # auto-detects the cluster (SLURM, TPU, ...)


class _QuietLibraries(logging.Filter):
    """Drop the INFO chatter of orbax and tfds; keep their warnings and our own progress."""

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = any(name in record.pathname for name in ("orbax", "tensorflow_datasets", "etils"))
        return record.levelno >= logging.WARNING or not noisy


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # tf.data only: keep TF off the accelerators JAX uses
    initialize_distributed()
    import jax

    from fcn_jax import train

    logging.getLogger().setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietLibraries())
    if jax.process_index() != 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (train.ConfigError, FileNotFoundError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if jax.process_index() == 0 and result:
        summary = {k: round(v, 4) for k, v in result.items() if isinstance(v, float)}
        print("final validation metrics:", json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
