"""Study a trained model on its own data: the samples per class, per-class precision / recall / IU, the worst
images, the labels that look wrong, the images to annotate next and how many images the recipe needs.

    python -m fcn_jax.study --run runs/shapes [--folds 3] [--unlabelled more/images] \\
        [--fractions 0.125,0.25,0.5,1 --target 0.9] [--output runs/shapes/study]

--run is the workdir of a finished training run (its config.json names the data and the recipe). --folds K trains
K models of the run's recipe, each without one fold of the training split, to rank every training label from
predictions of a model that did not train on it; --fractions trains the recipe on those nested fractions of the
training split for the learning curve. Both resume like any run (rerun the same command). Writes report.md, its
figures and study.json into --output (fcn_jax.flows.study).
"""
from __future__ import annotations

import argparse
import os
import sys

from fcn_jax.train import preemption


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fcn_jax.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the workdir of a finished training run")
    parser.add_argument("--output", help="where report.md, its figures and study.json go (default: RUN/study)")
    parser.add_argument("--folds", type=int, default=0,
                        help="K >= 2: rank every training label out of fold (trains K models); 0: the eval split only")
    parser.add_argument("--unlabelled", default="", help="a folder of images to rank for annotation")
    parser.add_argument("--uncertainty", default="entropy", help="entropy | margin (for --unlabelled)")
    parser.add_argument("--fractions", default="",
                        help="nested fractions of the training split for the learning curve, e.g. 0.125,0.25,0.5,1")
    parser.add_argument("--target", type=float, help="a mean IU (0..1) whose image count the learning curve predicts")
    parser.add_argument("--worst", type=int, default=6, help="images drawn per section")
    parser.add_argument("--pad_multiple", type=int, default=32,
                        help="pad images to multiples of this: one compilation a padded shape (1: every image at "
                             "its own size, as evaluate's default; slower where sizes vary)")
    args = parser.parse_args(argv)
    if args.folds == 1 or args.folds < 0:
        parser.error(f"--folds {args.folds}: 0 (none) or at least 2")
    if args.worst < 0 or args.pad_multiple < 1:
        parser.error(f"--worst {args.worst} must be >= 0 and --pad_multiple {args.pad_multiple} >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    preemption.start_command_line()
    from fcn_jax.flows import learning_curve, study

    output = args.output or os.path.join(args.run, "study")
    try:
        fractions = learning_curve.parse_fractions(args.fractions) if args.fractions else ()
        if args.target is not None and not fractions:
            raise ValueError("--target needs --fractions (the learning curve it is read from)")
        options = study.Options(folds=args.folds, fractions=fractions, target=args.target,
                                unlabelled=args.unlabelled, uncertainty=args.uncertainty, worst=args.worst,
                                pad_multiple=args.pad_multiple)
        result = study.run(args.run, output, options)
    except (preemption.Stopped, KeyboardInterrupt) as stopped:
        print(f"study: {preemption.stopped_message(stopped)}", file=sys.stderr)
        return preemption.EXIT_CODE
    except (ValueError, OSError, FloatingPointError, RuntimeError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"lacking samples: {', '.join(result['lacking_samples']) or 'none'}; most suspect labels: "
          + ", ".join(f"{r['id']} ({r['label_quality']:.2f})" for r in result["suspect_labels"][:5]))
    print(f"wrote {os.path.join(output, 'report.md')}")
    return 0


if __name__ == "__main__":
    code = main()
    if code == preemption.EXIT_CODE:
        preemption.exit_now(code)
    sys.exit(code)
