"""The command-line flags predict and evaluate share: the weights, the model settings that override what is stored
with them, the batch, and the inference mode; and the runner options they make."""
from __future__ import annotations

import argparse
from typing import Callable

from fcn_jax.core.normalization import NORMALIZATIONS
from fcn_jax.infer import batching, dense_crf, modes, runner
from fcn_jax.models import crf, vgg, zoo
from fcn_jax.weights import artifacts


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """--weights, the settings that override what is stored with them, --batch_size and the inference mode."""
    parser.add_argument("--weights", required=True,
                        help="training workdir, its checkpoints/ dir, or converted weights (python -m fcn_jax.convert)")
    group = parser.add_argument_group("model settings (default: stored with the weights)")
    group.add_argument("--variant", choices=zoo.VARIANTS)
    group.add_argument("--num_classes", type=int)
    group.add_argument("--geometry", choices=vgg.GEOMETRIES)
    group.add_argument("--width", type=float)
    group.add_argument("--normalization", choices=NORMALIZATIONS)
    group.add_argument("--dataset", help="class names and colours: a preset (voc, cityscapes, ade20k, pascal_context, "
                                         "sift_flow for its two heads, ...) or a classes.json; default: the "
                                         "dataset.json stored with the weights")
    parser.add_argument("--batch_size", type=int, default=1,
                        help="images per step (same padded size), rounded up to a multiple of the devices")
    modes_group = parser.add_argument_group("inference mode (fcn_jax.infer.modes; default: one whole-image pass)")
    modes_group.add_argument("--window", type=int, nargs=2, metavar=("H", "W"),
                             help="sliding windows of this size (the network compiles once whatever the image "
                                  "sizes); with a mode, images run one at a time and --pad_multiple is not used")
    modes_group.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"),
                             help="between windows (default: the window); overlapping logits are averaged")
    modes_group.add_argument("--flip", action="store_true", help="average in the horizontally flipped image")
    modes_group.add_argument("--scales", type=float, nargs="+", default=[1.0],
                             help="average over the image resized by these factors, e.g. 0.75 1 1.25")
    modes_group.add_argument("--crf", nargs="?", const="", metavar="NAME=VALUE,...",
                             help="refine with the dense CRF (docs/crf.md): the settings stored with the weights "
                                  "(crf.json, from python -m fcn_jax.crf_search) or the defaults, with these on top, "
                                  "e.g. --crf iterations=10,bilateral_srgb=3")
    parser.add_argument("--pad_multiple", type=int, default=1,
                        help="1: each image at its own size (exact); 32: pad to multiples of 32, fewer compilations")
    parser.add_argument("--buckets", type=int, default=0,
                        help="at most this many padded shapes (compilations), chosen from the images' sizes to pad "
                             "least; 0: one per distinct size. Use with --batch_size > 1 on folders of mixed sizes")


def mode(args: argparse.Namespace) -> modes.Mode:
    """The inference mode of the flags; a bad combination is a ValueError (printed as one line) before any work."""
    settings = None
    if args.crf is not None:
        settings = crf.CRFSettings.parse(args.crf, dense_crf.stored_settings(args.weights))
    chosen = modes.Mode(tuple(args.window) if args.window else None, tuple(args.stride) if args.stride else None,
                        args.flip, tuple(args.scales), settings)
    runner.check_options(chosen, args.buckets, args.batch_size, args.pad_multiple)
    return chosen


def buckets(args: argparse.Namespace, sizes: Callable[[], list[tuple[int, int]]]) -> dict | None:
    """--buckets: the padded shape of every image size (`sizes()`, read only then), at most that many; None if 0."""
    return batching.bucket_shapes(sizes(), args.buckets, args.pad_multiple) if args.buckets else None


def overrides(args: argparse.Namespace) -> dict:
    """The model settings given on the command line (None where not given)."""
    return {k: getattr(args, k) for k in artifacts.SETTINGS}
