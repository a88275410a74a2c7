"""Build PASCAL VOC2012 + SBD as a tfds dataset from your local copies, once, and print the split sizes.

    python -m fcn_jax.voc_dataset --manual_dir ~/data/voc_raw --data_dir ~/data/tfds

manual_dir holds VOCdevkit/VOC2012/ and benchmark_RELEASE/dataset/ (fcn_jax.data.voc); nothing is downloaded.
Ctrl-C or SIGTERM stops a build in one line, leaving no partial folder; what a killed build left is removed by the
next one.
"""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fcn_jax.voc_dataset", description=__doc__.splitlines()[0])
    parser.add_argument("--manual_dir", required=True, help="folder holding VOCdevkit/ and benchmark_RELEASE/")
    parser.add_argument("--data_dir", required=True, help="where the prepared tfds dataset goes")
    parser.add_argument("--skip_bad_examples", action="store_true",
                        help="skip (and count) unreadable training examples instead of failing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from fcn_jax.data import layouts, voc, voc_builder  # tfds (and TensorFlow to prepare): only once the flags are good

    try:
        builder = voc_builder.prepare(args.data_dir, args.manual_dir, skip_bad_examples=args.skip_bad_examples)
    except (ValueError, OSError, ImportError) as error:  # ImportError: preparing without TensorFlow
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # SIGINT, or SIGTERM during the build (layouts.tfds_build)
        print(layouts.build_stopped_line(args.data_dir), file=sys.stderr)
        return layouts.BUILD_STOPPED
    print(f"{builder.data_dir}")
    print(f"seg11valid: {builder.info.metadata['seg11valid_rule']}")
    for split in voc.SPLITS:
        print(f"{split:>24}: {builder.info.splits[split].num_examples}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
