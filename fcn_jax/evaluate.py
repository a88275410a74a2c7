"""Score weights on labelled images: pixel acc, mean acc, mean IU, fw IU and the IU of every class.

    python -m fcn_jax.evaluate --weights weights/fcn8s_pascal --split seg11valid \\
        --data_dir ~/tensorflow_datasets --manual_dir ~/data/voc --output metrics.json
    python -m fcn_jax.evaluate --weights runs/fcn8s --images my/images --labels my/labels

Data: a split of the voc_sbd tfds dataset (voc_dataset.py; prepared from
--manual_dir on first use), or a folder of images with a folder of VOC palette
PNG labels of the same stems (SegmentationClass style: index = class id, 255 =
ignore). --weights and the model settings work as in fcn_jax.predict.

Scoring follows the reference (score.py): one confusion matrix summed over all
images, nothing resized. Images are batched by padded size; padded pixels carry
label 255 and are never counted. With the default --pad_multiple 1 every image
runs at its own size, as the reference net ran them, so the numbers are the
reference protocol's; --pad_multiple 32 compiles fewer sizes, but predictions
near the bottom/right border may then differ slightly (see fcn_jax.predict).
"""
from __future__ import annotations

import argparse
import collections.abc
import json
import math
import os
import sys

import numpy as np

from fcn_jax import artifacts, image_io, inference, predict
from fcn_jax.constants import IGNORE_LABEL, SCORES


class FolderSource(collections.abc.Sequence):
    """Images of a folder with their labels `<labels_dir>/<stem>.png`: a source as input_pipeline defines it.

    Every pair is checked when the source is made (label present, same size, from the file headers), so a
    bad folder fails before anything is compiled; pixels are decoded on access.
    """

    def __init__(self, images_dir: str, labels_dir: str):
        for flag, directory in (("--images", images_dir), ("--labels", labels_dir)):
            if not os.path.isdir(directory):
                raise FileNotFoundError(f"{flag} folder {directory} does not exist")
        self.pairs = []  # (id, image path, label path)
        for image_path in image_io.find_images([images_dir]):
            stem = os.path.splitext(os.path.basename(image_path))[0]
            label_path = os.path.join(labels_dir, f"{stem}.png")
            if not os.path.isfile(label_path):
                raise FileNotFoundError(f"no label {label_path} for image {image_path}")
            image_size, label_size = image_io.image_size(image_path), image_io.image_size(label_path)
            if image_size != label_size:
                raise ValueError(f"label {label_path} is {label_size[0]}x{label_size[1]} but image {image_path} "
                                 f"is {image_size[0]}x{image_size[1]}")
            self.pairs.append((stem, image_path, label_path))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        stem, image_path, label_path = self.pairs[index]
        return {"image": image_io.read_rgb(image_path), "label": image_io.read_voc_label(label_path), "id": stem}


def evaluate(network: inference.Network, source, *, batch_size: int = 1, pad_multiple: int = 1,
             progress: bool = False) -> dict:
    """Scores of `network` on every example of `source` (segmentation_metrics + loss, num_images, confusion).

    Runs inference.eval_step data-parallel over the network's mesh, compiled once per padded batch shape.
    """
    from tqdm import tqdm

    steps = inference.eval_steps(network.model.apply, network.num_classes, network.mesh)
    rows = inference.global_batch_size(batch_size, network.mesh)
    normalization = network.settings["normalization"]
    shape_of = lambda example: inference.padded_shape(*example[1].shape, pad_multiple)  # noqa: E731
    examples = (image_io.check_example(source[i], network.num_classes)  # (image, label, id), checked
                for i in range(len(source)))

    def batches():
        for group in inference.batches_by_shape(examples, shape_of, rows):
            shape = shape_of(group[0])
            yield {"image": inference.pad_stack([inference.normalize(image, normalization) for image, _, _ in group],
                                                shape, rows, 0.0, np.float32),
                   "label": inference.pad_stack([label for _, label, _ in group], shape, rows, IGNORE_LABEL,
                                                np.int32),
                   "size": len(group)}

    with tqdm(total=len(source), desc="evaluate", unit="image", disable=not progress, dynamic_ncols=True) as bar:
        scores = inference.score(steps, network.params, batches(), network.num_classes,
                                 on_batch=lambda out, batch: bar.update(batch["size"]))
    result = scores.result()
    result.update(num_images=len(source), num_pixels=scores.num_valid, compilations=steps.compilations,
                  confusion=scores.confusion.tolist())
    return result


def report(result: dict, names: tuple[str, ...]) -> str:
    """The four scores and the per-class IU table, in percent as in the paper."""
    def percent(value):
        return "     n/a" if math.isnan(value) else f"{100 * value:8.2f}"

    lines = [f"{label:<12}{percent(result[key])}" for key, label in SCORES]
    lines += ["", f"{'class':<12}{'IU':>8}"]
    lines += [f"{name:<12}{percent(iou)}" for name, iou in zip(names, result["per_class_iou"])]
    return "\n".join(lines)


def to_json(result: dict, names: tuple[str, ...], **context) -> str:
    """JSON of the result: per-class IU keyed by class name, NaN (class absent) as null."""
    out = {**context, **{k: v for k, v in result.items() if k != "per_class_iou"}}
    out["per_class_iou"] = dict(zip(names, result["per_class_iou"]))
    return json.dumps(artifacts.json_clean(out), indent=2)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fcn_jax.evaluate", description=__doc__.split("\n\n")[0])
    predict.add_model_flags(parser)
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--split", help="a voc_sbd split, e.g. seg11valid (with --data_dir, --manual_dir)")
    data.add_argument("--images", help="folder of images (with --labels)")
    parser.add_argument("--labels", help="folder of VOC palette PNG labels, <stem>.png for each image")
    parser.add_argument("--data_dir", default="~/tensorflow_datasets", help="where the prepared tfds dataset lives")
    parser.add_argument("--manual_dir", default=None,
                        help="folder holding VOCdevkit/ and benchmark_RELEASE/ (to prepare the dataset)")
    parser.add_argument("--output", help="write the metrics as JSON to this file")
    args = parser.parse_args(argv)
    if args.images and not args.labels:
        parser.error("--images needs --labels")
    return args


def load_source(args: argparse.Namespace):
    if args.images:
        return FolderSource(args.images, args.labels), f"{args.images} (labels {args.labels})"
    from fcn_jax import voc_dataset

    data_dir = os.path.expanduser(args.data_dir)
    manual_dir = os.path.expanduser(args.manual_dir) if args.manual_dir else None
    return voc_dataset.load_split(data_dir, args.split, manual_dir), f"voc_sbd {args.split} ({data_dir})"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.output and os.path.isdir(args.output):
            raise IsADirectoryError(f"--output {args.output} is a folder; give a file name such as metrics.json")
        source, description = load_source(args)
        network = inference.load_network(args.weights, predict.overrides(args))
        result = evaluate(network, source, batch_size=args.batch_size, pad_multiple=args.pad_multiple,
                          progress=True)
        names = predict.class_names(network.num_classes)
        if args.output:
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            with open(args.output, "w") as f:
                f.write(to_json(result, names, weights=os.path.abspath(args.weights), data=description,
                                settings=network.settings, pad_multiple=args.pad_multiple) + "\n")
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    settings = network.settings
    print(f"{settings['variant']} ({settings['geometry']} geometry, width {settings['width']:g}) on {description}: "
          f"{result['num_images']} images, {result['compilations']} compilation(s)")
    print(report(result, names))
    if args.output:
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
