"""Score weights on labelled images: pixel acc, mean acc, mean IU, fw IU and the IU of every class.

    python -m fcn_jax.evaluate --weights weights/fcn8s_pascal --split seg11valid \\
        --data_dir ~/tensorflow_datasets --manual_dir ~/data/voc --output metrics.json
    python -m fcn_jax.evaluate --weights runs/fcn8s --images my/images --labels my/labels

Data: a split of a tfds dataset prepared from --manual_dir on first use (the
voc_sbd one of voc_dataset.py, or with --layout a folder dataset or a benchmark
of fcn_jax.layouts), or a folder of images with a folder of labels of the same
stems (<stem>.png), decoded as the dataset description says (the dataset.json
stored with the weights, or --dataset: VOC palette PNGs for VOC). --weights
and the model settings work as in fcn_jax.predict; per-class IU is reported
under the dataset's class names.

Scoring follows the reference (score.py): one confusion matrix summed over all
images, nothing resized. Images are batched by padded size; padded pixels carry
label 255 and are never counted. With the default --pad_multiple 1 every image
runs at its own size, as the reference net ran them, so the numbers are the
reference protocol's; --pad_multiple 32 or --buckets K (at most K shapes, chosen
from the images' sizes) compile fewer shapes, but predictions near the
bottom/right border may then differ slightly (see fcn_jax.predict).
--window / --flip / --scales score the logits of an inference mode (fcn_jax.modes)
instead, one image at a time.
"""
from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import json
import math
import os
import sys

import numpy as np

from fcn_jax import artifacts, dataset_info, image_io, inference, layouts, modes, predict
from fcn_jax.constants import IGNORE_LABEL, SCORES


class FolderSource(collections.abc.Sequence):
    """Images of a folder with their labels `<labels_dir>/<stem>.png`: a source as input_pipeline defines it.

    Every pair is checked when the source is made (label present, same size, from the file headers), so a
    bad folder fails before anything is compiled; pixels are decoded on access, labels by `info`.
    """

    def __init__(self, images_dir: str, labels_dir: str, info: dataset_info.DatasetInfo):
        self.info = info
        for flag, directory in (("--images", images_dir), ("--labels", labels_dir)):
            if not os.path.isdir(directory):
                raise FileNotFoundError(f"{flag} folder {directory} does not exist")
        self.pairs, self._sizes = [], []  # (id, image path, label path), (H, W)
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
            self._sizes.append(image_size)

    def sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image, from the headers read when the source was made."""
        return list(self._sizes)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        stem, image_path, label_path = self.pairs[index]
        return {"image": image_io.read_rgb(image_path), "label": self.info.decode(label_path), "id": stem}


def evaluate(network: inference.Network, source, *, batch_size: int = 1, pad_multiple: int = 1, buckets: int = 0,
             progress: bool = False, mode: modes.Mode = modes.Mode()) -> dict:
    """Scores of `network` on every example of `source` (segmentation_metrics + loss, num_images, confusion).

    Runs inference.eval_step data-parallel over the network's mesh, compiled once per padded batch shape (at most
    `buckets` shapes if > 0: inference.bucket_shapes); in a non-plain `mode`, the mode's logits of each image
    (fcn_jax.modes). Examples are read in a background thread while the network runs.
    """
    from tqdm import tqdm

    steps = inference.eval_steps(network.model.apply, network.heads, network.mesh)
    rows = inference.global_batch_size(batch_size, network.mesh)
    normalization = network.settings["normalization"]
    if buckets < 0 or (buckets and not mode.plain):
        raise ValueError(f"buckets={buckets}: >= 0 (0: one shape per size), for whole-image inference only")
    shapes = inference.bucket_shapes(image_io.image_sizes(source), buckets, pad_multiple) if buckets else None
    shape_of = inference.batch_shape_of(pad_multiple, shapes, lambda example: example[0])
    head_classes = tuple(k for _, k in network.heads)
    examples = (image_io.check_example(source[i], head_classes if len(head_classes) > 1 else head_classes[0])
                for i in range(len(source)))  # (image, label, id), checked

    def batches():  # run by inference.prefetch's thread
        for group in inference.batches_by_shape(examples, shape_of, rows):
            shape = shape_of(group[0])
            yield {"image": inference.pad_stack([inference.normalize(image, normalization) for image, _, _ in group],
                                                shape, rows, 0.0, np.float32),
                   "label": inference.pad_stack([label for _, label, _ in group], shape, rows, IGNORE_LABEL,
                                                np.int32),
                   "size": len(group)}

    with tqdm(total=len(source), desc="evaluate", unit="image", disable=not progress, dynamic_ncols=True) as bar:
        if mode.plain:
            scores = inference.score(steps, network.params, inference.prefetch(batches()), network.heads,
                                     on_batch=lambda out, batch: bar.update(batch["size"]))
        else:  # one image at a time, each at its own size (windows, flips and scales batched inside)
            run, scores = modes.LogitSteps.of(network, batch_size), inference.Scores(network.heads)
            for image, label, _ in inference.prefetch(examples):
                scores.add(modes.scores(modes.image_logits(run, inference.normalize(image, normalization), mode),
                                        label, network.heads))
                bar.update(1)
            steps = run.steps
    result = scores.result()
    result.update(num_images=len(source), num_pixels=scores.num_valid, compilations=steps.compilations,
                  confusion=scores.confusion.tolist())
    return result


def _head_keys(index: int, name: str) -> tuple[str, str]:
    """(key suffix of a head in a result, its title): the first head's keys are plain."""
    return ("", "") if index == 0 else (f"_{name}", f"head {name}: ")


def report(result: dict, heads: dataset_info.Heads) -> str:
    """The four scores and the per-class IU table of every head, in percent as in the paper."""
    def percent(value):
        return "     n/a" if math.isnan(value) else f"{100 * value:8.2f}"

    width = max(12, *(len(name) + 1 for _, info in heads for name in info.classes))
    lines = []
    for index, (name, info) in enumerate(heads):
        suffix, title = _head_keys(index, name)
        lines += [""] * bool(index) + [f"{title}{info.name}"] * bool(title)
        lines += [f"{label:<{width}}{percent(result[key + suffix])}" for key, label in SCORES]
        lines += ["", f"{'class':<{width}}{'IU':>8}"]
        lines += [f"{c:<{width}}{percent(iou)}" for c, iou in zip(info.classes, result["per_class_iou" + suffix])]
    return "\n".join(lines)


def to_json(result: dict, heads: dataset_info.Heads, **context) -> str:
    """JSON of the result: per-class IU keyed by class name, NaN (class absent) as null."""
    out = {**context, **result}
    for index, (name, info) in enumerate(heads):
        key = "per_class_iou" + _head_keys(index, name)[0]
        out[key] = dict(zip(info.classes, result[key]))
    return json.dumps(artifacts.json_clean(out), indent=2)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fcn_jax.evaluate", description=__doc__.split("\n\n")[0])
    predict.add_model_flags(parser)
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
    if args.images:
        return FolderSource(args.images, args.labels, info), f"{args.images} (labels {args.labels})"
    data_dir = os.path.expanduser(args.data_dir)
    manual_dir = os.path.expanduser(args.manual_dir) if args.manual_dir else None
    if args.layout != "voc":
        from fcn_jax import folder_dataset

        if manual_dir is None:
            raise ValueError(f"--layout {args.layout} needs --manual_dir, the dataset's folder")
        source = folder_dataset.load_split(data_dir, args.split, manual_dir, args.layout, **split_options(args))
        return source, f"{args.layout} {args.split} ({manual_dir})"
    from fcn_jax import voc_dataset

    return voc_dataset.load_split(data_dir, args.split, manual_dir), f"voc_sbd {args.split} ({data_dir})"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.output and os.path.isdir(args.output):
            raise IsADirectoryError(f"--output {args.output} is a folder; give a file name such as metrics.json")
        inference_mode = predict.mode(args)
        network = inference.load_network(args.weights, predict.overrides(args))
        heads = dataset_info.for_weights(args.weights, network.heads, args.dataset)
        if args.images and len(heads) > 1:
            raise ValueError(f"{args.weights} has {len(heads)} score heads; score it on a --split of its dataset "
                             "(--layout, --manual_dir), which holds a label of every head")
        source, description = load_source(args, heads[0][1])
        result = evaluate(network, source, batch_size=args.batch_size, pad_multiple=args.pad_multiple,
                          buckets=args.buckets, progress=True, mode=inference_mode)
        if args.output:
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            with open(args.output, "w") as f:
                f.write(to_json(result, heads, weights=os.path.abspath(args.weights), data=description,
                                settings=network.settings, pad_multiple=args.pad_multiple,
                                buckets=args.buckets, mode=dataclasses.asdict(inference_mode)) + "\n")
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    settings = network.settings
    print(f"{settings['variant']} ({settings['geometry']} geometry, width {settings['width']:g}) on {description}: "
          f"{result['num_images']} images, {result['compilations']} compilation(s)")
    print(report(result, heads))
    if args.output:
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
