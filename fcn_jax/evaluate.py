"""Score weights on labelled images: the paper's four scores, per-class IU, precision, recall and F1.

    python -m fcn_jax.evaluate --weights weights/fcn8s_pascal --split seg11valid \\
        --data_dir ~/tensorflow_datasets --manual_dir ~/data/voc --output metrics.json
    python -m fcn_jax.evaluate --weights runs/fcn8s --images my/images --labels my/labels

Data: a split of a tfds dataset prepared from --manual_dir on first use (the
voc_sbd one of fcn_jax.data.voc_builder, or with --layout a folder dataset or a
benchmark of fcn_jax.data.layouts), or a folder of images with a folder of labels of the same
stems (<stem>.png), decoded as the dataset description says (the dataset.json
stored with the weights, or --dataset: VOC palette PNGs for VOC). --weights
and the model settings work as in fcn_jax.predict; per-class IU, precision,
recall and F1 are reported under the dataset's class names, and --figure draws
the confusion matrix.

Scoring follows the reference (score.py): one confusion matrix summed over all
images, nothing resized. Images are batched by padded size; padded pixels carry
label 255 and are never counted. With the default --pad_multiple 1 every image
runs at its own size, as the reference net ran them, so the numbers are the
reference protocol's; --pad_multiple 32 or --buckets K (at most K shapes, chosen
from the images' sizes) compile fewer shapes, but predictions near the
bottom/right border may then differ slightly (see fcn_jax.predict).
--window / --flip / --scales score the logits of an inference mode (fcn_jax.infer.modes)
instead, one image at a time.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from fcn_jax.data import dataset_info, layouts, sources
from fcn_jax.data.examples import FolderSource
from fcn_jax.infer import evaluation, flags, score_figures
from fcn_jax.infer.network import load_network
from fcn_jax.weights import artifacts


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fcn_jax.evaluate", description=__doc__.split("\n\n")[0])
    flags.add_model_flags(parser)
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--split", help="a voc_sbd split, e.g. seg11valid (with --data_dir, --manual_dir)")
    data.add_argument("--images", help="folder of images (with --labels)")
    parser.add_argument("--labels", help="folder of label PNGs, <stem>.png for each image (encoded as the dataset "
                                         "description says)")
    parser.add_argument("--layout", default="voc", choices=("voc", *layouts.LAYOUTS),
                        help="with --split: the voc_sbd dataset, or a folder / benchmark layout read from --manual_dir")
    parser.add_argument("--data_dir", default="~/tensorflow_datasets", help="where the prepared tfds dataset lives")
    parser.add_argument("--manual_dir", default=None,
                        help="the dataset's folder (voc: the one holding VOCdevkit/ and benchmark_RELEASE/), "
                             "to prepare the dataset")
    parser.add_argument("--val_fraction", type=float, default=None,
                        help="--layout folder without split lists or subfolders: the seeded share of val (default: "
                             "the training run's config.data.val_fraction, else 0.2)")
    parser.add_argument("--split_seed", type=int, default=None, help="its seed (default: the run's, else 0)")
    parser.add_argument("--output", help="write the metrics as JSON to this file")
    parser.add_argument("--figure", help="write the confusion matrix (rows normalised, class names) as this PNG")
    args = parser.parse_args(argv)
    if args.images and not args.labels:
        parser.error("--images needs --labels")
    return args


def split_options(args: argparse.Namespace) -> dict:
    """The folder builder's options as the training run used them (its config.json), so the scored split is the
    one it validated on, not a re-drawn one; the flags override them."""
    data = (artifacts.run_config(args.weights) or {}).get("data", {})
    return {"classes": data.get("classes", ""),
            "val_fraction": data.get("val_fraction", 0.2) if args.val_fraction is None else args.val_fraction,
            "split_seed": data.get("split_seed", 0) if args.split_seed is None else args.split_seed}


def load_source(args: argparse.Namespace, info: dataset_info.DatasetInfo):
    """(the source to score, its description for the report)."""
    if args.images:
        return FolderSource(args.images, args.labels, info), f"{args.images} (labels {args.labels})"
    data_dir = os.path.expanduser(args.data_dir)
    manual_dir = os.path.expanduser(args.manual_dir) if args.manual_dir else None
    source = sources.get(args.layout).load_split(args.split, data_dir, manual_dir, **split_options(args))
    if args.layout == "voc":
        return source, f"voc_sbd {args.split} ({data_dir})"
    return source, f"{args.layout} {args.split} ({manual_dir})"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.output and os.path.isdir(args.output):
            raise IsADirectoryError(f"--output {args.output} is a folder; give a file name such as metrics.json")
        inference_mode = flags.mode(args)
        network = load_network(args.weights, flags.overrides(args))
        heads = dataset_info.for_weights(args.weights, network.heads, args.dataset)
        if args.images and len(heads) > 1:
            raise ValueError(f"{args.weights} has {len(heads)} score heads; score it on a --split of its dataset "
                             "(--layout, --manual_dir), which holds a label of every head")
        source, description = load_source(args, heads[0][1])
        result = evaluation.evaluate(network, source, batch_size=args.batch_size, pad_multiple=args.pad_multiple,
                                     buckets=args.buckets, progress=True, mode=inference_mode)
        if args.output:
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            with open(args.output, "w") as f:
                f.write(evaluation.to_json(result, heads, weights=os.path.abspath(args.weights), data=description,
                                           settings=network.settings, pad_multiple=args.pad_multiple,
                                           buckets=args.buckets, mode=dataclasses.asdict(inference_mode)) + "\n")
        if args.figure:
            score_figures.confusion_figure(args.figure, result["confusion"], heads[0][1].classes,
                                           f"{description}: labelled (rows) against predicted, %")
    except (ValueError, OSError, ImportError) as error:  # ImportError: preparing without TensorFlow
        print(f"error: {error}", file=sys.stderr)
        return 1
    settings = network.settings
    print(f"{settings['variant']} ({settings['geometry']} geometry, width {settings['width']:g}) on {description}: "
          f"{result['num_images']} images, {result['compilations']} compilation(s)")
    print(evaluation.report(result, heads))
    for path in (args.output, args.figure):
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
