"""From an image classifier to a segmenter (FCN paper, sections 3.1 and 4.1), end to end.

    python -m fcn_jax.pipeline --config experiments/pipeline_demo.py --workdir runs/pipeline [--config.key=value ...]

Five stages, each in its own folder under --workdir and skipped once finished there, so an interrupted pipeline
resumes where it stopped: classifier/ (a VGG16 classifier trained on image-level labels), convolutionalized/ (its
fc6/fc7 as convolutions in the first FCN's backbone), fcn/<variant>/ (the FCN stages of config.stages, e.g.
32s -> 16s -> 8s), segment/ (the last FCN on new images) and study/ (the last FCN studied on its data:
fcn_jax.flows.study); then report.md. See fcn_jax.flows.pipeline.
"""
from __future__ import annotations

import logging
import os
import sys

import ml_collections

from fcn_jax.flows import pipeline
from fcn_jax.train import config_flags, preemption


def parse_args(argv: list[str]) -> tuple[ml_collections.ConfigDict, str]:
    """--config FILE [--config.key=value ...] --workdir DIR, on a private flag set (no global absl flags)."""
    from absl import flags
    from ml_collections import config_flags as ml_config_flags

    if "--help" in argv or "-h" in argv:
        print(__doc__)
        raise SystemExit(0)
    flag_values = flags.FlagValues()
    ml_config_flags.DEFINE_config_file("config", None, "Pipeline config (experiments/pipeline_demo.py).",
                                       flag_values=flag_values, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "One folder per stage and report.md.", flag_values=flag_values)
    config_flags.parse_flags(argv, flag_values)
    if flag_values.config is None or flag_values.workdir is None:
        raise SystemExit("error: --config and --workdir are required")
    return flag_values.config, flag_values.workdir


def main(argv=None) -> int:
    config, workdir = parse_args(sys.argv if argv is None else ["pipeline", *argv])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax / tfds chatter
    preemption.stop_on_sigterm()
    try:
        pipeline.run_pipeline(config, workdir)
    except (preemption.Stopped, KeyboardInterrupt) as stopped:  # SIGTERM / SIGINT: finished stages are kept
        print(f"pipeline: {preemption.stopped_message(stopped)}", file=sys.stderr)
        return preemption.EXIT_CODE
    except (ValueError, OSError, FloatingPointError, ImportError) as error:  # ConfigError, SweepError: ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {os.path.join(os.path.abspath(workdir), 'report.md')}")
    return 0


if __name__ == "__main__":
    code = main()
    if code == preemption.EXIT_CODE:  # a compilation a signal left in a daemon thread must not hold the exit
        preemption.exit_now(code)
    sys.exit(code)
