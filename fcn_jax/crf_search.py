"""Choose the dense CRF's parameters for a trained run: a grid scored on part of its eval split, the best settings
checked against no CRF on the rest and stored with the weights (crf.json), where `--crf` finds them.

    python -m fcn_jax.crf_search --run runs/shapes [--grid "bilateral_weight=3,5,10;bilateral_srgb=3,5,13"] \\
        [--images 100] [--tune_fraction 0.5] [--seed 0] [--output crf_search.json]

The grid names CRFSettings' fields (iterations, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb,
bilateral_weight); the others keep --base's values (name=value,...; default: the reference's). fcn_jax.flows.crf_search.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from fcn_jax.train import preemption


def parse_args(argv):
    from fcn_jax.flows.crf_search import DEFAULT_GRID

    parser = argparse.ArgumentParser(prog="python -m fcn_jax.crf_search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the workdir of a finished training run")
    parser.add_argument("--grid", default=DEFAULT_GRID, help=f"name=v1,v2;... (default: {DEFAULT_GRID})")
    parser.add_argument("--base", default="", help="name=value,... for the parameters the grid leaves out")
    parser.add_argument("--images", type=int, default=100, help="eval images used at most (tuning + held out)")
    parser.add_argument("--tune_fraction", type=float, default=0.5, help="share of them the grid is scored on")
    parser.add_argument("--seed", type=int, default=0, help="draws the images and their tuning share")
    parser.add_argument("--output", help="also write the whole search as JSON here")
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error(f"--images {args.images}: at least 2 (some to tune on, some to test)")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    preemption.start_command_line()
    from fcn_jax.flows import crf_search
    from fcn_jax.models.crf import CRFSettings

    try:
        options = crf_search.Options(grid=args.grid, base=CRFSettings.parse(args.base), images=args.images,
                                     tune_fraction=args.tune_fraction, seed=args.seed)
        crf_search.parse_grid(options.grid, options.base)  # a bad grid fails before any work
        result = crf_search.search(args.run, options)
        if args.output:
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            with open(args.output, "w") as f:
                json.dump(result, f, indent=1)
    except (preemption.Stopped, KeyboardInterrupt) as stopped:
        print(f"crf_search: {preemption.stopped_message(stopped)}", file=sys.stderr)
        return preemption.EXIT_CODE
    except (ValueError, OSError, ImportError) as error:  # ImportError: preparing without TensorFlow
        print(f"error: {error}", file=sys.stderr)
        return 1
    held_out = result["held_out"]
    print(f"best on {result['tune_images']} tuning images: "
          + ", ".join(f"{k}={v:g}" for k, v in result["best"].items()))
    print(f"held-out mean IU ({result['held_out_images']} images): no CRF {100 * held_out['no_crf']:.2f}, "
          f"best {100 * held_out['best']:.2f}, defaults {100 * held_out['defaults']:.2f}")
    print(f"wrote {result['path']} (used by --crf)")
    return 0


if __name__ == "__main__":
    code = main()
    if code == preemption.EXIT_CODE:
        preemption.exit_now(code)
    sys.exit(code)
