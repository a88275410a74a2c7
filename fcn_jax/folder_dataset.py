"""Check and build your own segmentation data (or Cityscapes, ADE20K, PASCAL-Context, SIFT Flow) as a tfds dataset.

    python -m fcn_jax.folder_dataset --manual_dir data/shapes --data_dir data/tfds_shapes [--layout folder]

reads the files of a layout (fcn_jax.data.layouts) once, checks every example, writes each split as array_record
under data_dir (fcn_jax.data.folder_builder) and prints the split sizes and the pixels of every class per split.
A prepared data_dir remembers what it was built from: reading it after the folder changed is an error. A class no
split labels is a warning (with the fix of 0/255 masks); Ctrl-C or SIGTERM stops a build in one line, leaving no
partial folder, and what a killed build left is removed by the next one.
"""
from __future__ import annotations

import argparse
import logging
import sys

from fcn_jax.data import layouts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fcn_jax.folder_dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manual_dir", required=True, help="the dataset's folder")
    parser.add_argument("--data_dir", required=True, help="where the prepared tfds dataset goes")
    parser.add_argument("--layout", default="folder", choices=sorted(layouts.LAYOUTS))
    parser.add_argument("--classes", default="", help="a classes.json (default: the folder's, or the preset's)")
    parser.add_argument("--val_fraction", type=float, default=0.2, help="folder without splits: share of val")
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--skip_bad_examples", action="store_true",
                        help="skip (and count) bad examples of train* splits instead of failing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from fcn_jax.data import folder_builder  # tfds (and TensorFlow to prepare): only once the flags are good

    try:
        prepared = folder_builder.prepare(args.data_dir, args.manual_dir, args.layout, classes=args.classes,
                                          val_fraction=args.val_fraction, split_seed=args.split_seed,
                                          skip_bad_examples=args.skip_bad_examples)
        print(folder_builder.summary(prepared, progress=True))
    except (ValueError, OSError, ImportError) as error:  # ImportError: preparing without TensorFlow
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # SIGINT, or SIGTERM during the build (layouts.tfds_build)
        print(layouts.build_stopped_line(args.data_dir), file=sys.stderr)
        return layouts.BUILD_STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
