"""Ablation sweeps: train a base config and named variants of it, one workdir each; tabulate and plot.

    python -m fcn_jax.ablate --sweep experiments/ablate_skips.py --workdir runs/ablate [--steps 300] [--processes]
        [--set data.source=folder --set data.manual_dir=data/shapes --set model.num_classes=0 ...]

A sweep file defines `get_sweep(num_steps=...) -> (base ConfigDict, [(name, overrides), ...])`; rerunning resumes
the sweep (fcn_jax.flows.ablation). Outputs: workdir/results.md and workdir/results.png.
"""
from __future__ import annotations

import argparse
import os
import sys

from fcn_jax.flows import ablation
from fcn_jax.train import preemption


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fcn_jax.ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", required=True, help="sweep file defining get_sweep() (experiments/ablate_*.py)")
    parser.add_argument("--workdir", required=True, help="one folder per variant, results.md and results.png")
    parser.add_argument("--steps", type=int, help="training steps per variant (passed to get_sweep)")
    parser.add_argument("--processes", action="store_true", help="train each variant in its own subprocess")
    parser.add_argument("--variant", help="train only this variant (what --processes runs in each subprocess)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="override the base config, e.g. --set data.source=folder --set data.manual_dir=data/shapes"
                             " --set model.num_classes=0 (repeatable)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be positive, got {args.steps}")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    preemption.start_command_line()
    try:
        ablation.run(args.sweep, args.workdir, steps=args.steps, processes=args.processes, only=args.variant,
            settings=args.settings)
    except (preemption.Stopped, KeyboardInterrupt) as stopped:  # SIGTERM / SIGINT: what finished is kept
        print(f"ablate: {preemption.stopped_message(stopped)}", file=sys.stderr)
        return preemption.EXIT_CODE
    except (ValueError, OSError, FloatingPointError, RuntimeError, ImportError) as error:  # SweepError, ConfigError
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.variant is None:
        print(f"wrote {os.path.join(args.workdir, 'results.md')} and {os.path.join(args.workdir, 'results.png')}")
    return 0


if __name__ == "__main__":
    code = main()
    if code == preemption.EXIT_CODE:  # a compilation a signal left in a daemon thread must not hold the exit
        preemption.exit_now(code)
    sys.exit(code)
