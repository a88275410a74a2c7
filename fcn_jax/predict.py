"""Segment images with trained or converted weights: palette masks, colour overlays, figures.

    python -m fcn_jax.predict --weights weights/fcn8s_pascal --input photo.jpg more_photos/ --output out/

For each image, out/<stem>.png is the predicted mask as a palette PNG (the
pixel indices are the class ids, the colours the dataset's), out/<stem>_overlay.jpg the classes blended
over the image, and with --figure out/<stem>_figure.png shows image |
prediction | the names of the classes present. Names and colours come from the
dataset.json stored with the weights (or --dataset). --weights takes a training
workdir, its checkpoints/ dir, or converted weights (python -m fcn_jax.convert);
the model settings and the input normalisation come with them (config.json of
the run, or fcn_jax_weights.json), and --variant etc. override them.

This is the paper's recipe: normalise the image as the weights expect (for the
Caffe models: BGR minus the mean), run the net on the whole image, argmax over
the classes. Images are never resized. By default each image runs at its own
size, which gives exactly the network's output on that image; one compilation
per distinct size. --pad_multiple 32 pads images (bottom/right, with the mean
pixel) to multiples of 32 instead, so fewer sizes compile; the padding is cut
off the masks, but pixels near the bottom/right border then see padded content
instead of the net's own zero padding, so some of their predictions can change.
--buckets K bounds the compilations of a folder of mixed sizes to K: the K
padded shapes are chosen from the images' sizes (file headers) to pad least,
and --batch_size images of one shape run together. Images are decoded in a
background thread and the files written in another while the network runs.

Loading weights, batching by padded size and the compiled steps live in fcn_jax.inference;
this module is the command line and the files it writes.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import sys
import time

import numpy as np
from PIL import Image

from fcn_jax import artifacts, dataset_info, image_io, inference, models, modes, visualize
from fcn_jax.constants import NORMALIZATIONS

WRITE_AHEAD = 8  # images whose files may wait to be written


# ----------------------------------------------------------------------------- files


def prepare_output(directory: str) -> str:
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise FileExistsError(f"--output {directory} is an existing file, not a folder")
    os.makedirs(directory, exist_ok=True)
    return directory


def save_figure(path: str, image: np.ndarray, mask: np.ndarray, info: dataset_info.DatasetInfo) -> None:
    """image | prediction | legend of the classes present, named by the dataset (matplotlib, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    palette = info.palette()
    present = [int(c) for c in np.unique(mask)]
    handles = [Patch(color=palette[c] / 255.0, label=info.classes[c] if c < info.num_classes else str(c))
               for c in present]
    columns = -(-len(handles) // 12)  # at most 12 names a column: fits the 4-inch height
    height, width = mask.shape
    panel, legend = 4.0 * width / height, 1.7 * columns  # inches, panels 4 inches high
    figure = Figure(figsize=(2 * panel + legend, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3, gridspec_kw={"width_ratios": [panel, panel, legend]})
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(visualize.colorize(mask, palette), interpolation="nearest")
    axes[1].set_title("prediction")
    axes[2].legend(handles=handles, loc="center left", ncol=columns, fontsize="small", frameon=False)
    for ax in axes:
        ax.axis("off")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.92, wspace=0.04)
    figure.savefig(path, dpi=100)


def write_outputs(directory: str, path: str, image: np.ndarray, mask: np.ndarray, heads: dataset_info.Heads,
                  figure: bool) -> None:
    """<stem>.png, <stem>_overlay.jpg (and <stem>_figure.png); the masks of a second head and later ones get
    the head's name after the stem (<stem>_geo.png ...)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    masks = [mask] if mask.ndim == 2 else [mask[..., i] for i in range(mask.shape[-1])]
    for index, ((name, info), head_mask) in enumerate(zip(heads, masks)):
        out = os.path.join(directory, stem + (f"_{name}" if index else ""))
        palette = info.palette()
        visualize.save_mask(head_mask, f"{out}.png", palette)
        Image.fromarray(visualize.overlay(image, head_mask, palette=palette, background=info.background)).save(
            f"{out}_overlay.jpg", quality=90)
        if figure:
            save_figure(f"{out}_figure.png", image, head_mask, info)


# ----------------------------------------------------------------------------- command line


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """--weights and the settings that override what is stored with them (shared with evaluate)."""
    parser.add_argument("--weights", required=True,
                        help="training workdir, its checkpoints/ dir, or converted weights (python -m fcn_jax.convert)")
    group = parser.add_argument_group("model settings (default: stored with the weights)")
    group.add_argument("--variant", choices=models.VARIANTS)
    group.add_argument("--num_classes", type=int)
    group.add_argument("--geometry", choices=models.GEOMETRIES)
    group.add_argument("--width", type=float)
    group.add_argument("--normalization", choices=NORMALIZATIONS)
    group.add_argument("--dataset", help="class names and colours: a preset (voc, cityscapes, ade20k, pascal_context, "
                                         "sift_flow for its two heads, ...) or a classes.json; default: the "
                                         "dataset.json stored with the weights")
    parser.add_argument("--batch_size", type=int, default=1,
                        help="images per step (same padded size), rounded up to a multiple of the devices")
    modes_group = parser.add_argument_group("inference mode (fcn_jax.modes; default: one whole-image pass)")
    modes_group.add_argument("--window", type=int, nargs=2, metavar=("H", "W"),
                             help="sliding windows of this size (the network compiles once whatever the image "
                                  "sizes); with a mode, images run one at a time and --pad_multiple is not used")
    modes_group.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"),
                             help="between windows (default: the window); overlapping logits are averaged")
    modes_group.add_argument("--flip", action="store_true", help="average in the horizontally flipped image")
    modes_group.add_argument("--scales", type=float, nargs="+", default=[1.0],
                             help="average over the image resized by these factors, e.g. 0.75 1 1.25")
    parser.add_argument("--pad_multiple", type=int, default=1,
                        help="1: each image at its own size (exact); 32: pad to multiples of 32, fewer compilations")
    parser.add_argument("--buckets", type=int, default=0,
                        help="at most this many padded shapes (compilations), chosen from the images' sizes to pad "
                             "least; 0: one per distinct size. Use with --batch_size > 1 on folders of mixed sizes")


def mode(args: argparse.Namespace) -> modes.Mode:
    """The inference mode of the flags (a bad combination is a ValueError, printed as one line)."""
    chosen = modes.Mode(tuple(args.window) if args.window else None, tuple(args.stride) if args.stride else None,
                        args.flip, tuple(args.scales))
    if args.buckets and not chosen.plain:
        raise ValueError("--buckets bounds the shapes of whole-image inference; with --window / --flip / --scales "
                         "images run one at a time (windows compile once)")
    return chosen


def segment_in_mode(network: inference.Network, images, mode: modes.Mode, run: modes.LogitSteps):
    """(key, image, mask) of every (key, image) under a non-plain inference mode, one image at a time."""
    for key, image in images:
        logits = modes.image_logits(run, inference.normalize(image, network.settings["normalization"]), mode)
        yield key, image, inference.head_masks(logits, network.heads)


def buckets(paths: list[str], args: argparse.Namespace) -> dict | None:
    """--buckets: the padded shape of every image size (from the file headers), at most that many; None if 0."""
    if args.buckets < 0:
        raise ValueError(f"--buckets must be >= 0 (0: one shape per size), got {args.buckets}")
    if not args.buckets:
        return None
    return inference.bucket_shapes([image_io.image_size(path) for path in paths], args.buckets, args.pad_multiple)


def overrides(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in artifacts.SETTINGS}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fcn_jax.predict", description=__doc__.split("\n\n")[0])
    add_model_flags(parser)
    parser.add_argument("--input", required=True, nargs="+", help="image files and/or folders of images")
    parser.add_argument("--output", required=True, help="folder for <stem>.png, <stem>_overlay.jpg (created)")
    parser.add_argument("--figure", action="store_true", help="also write <stem>_figure.png (matplotlib)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from tqdm import tqdm

    start = time.perf_counter()
    try:
        inference_mode = mode(args)
        paths = image_io.find_images(args.input)
        directory = prepare_output(args.output)
        network = inference.load_network(args.weights, overrides(args))
        heads = dataset_info.for_weights(args.weights, network.heads, args.dataset)
        images = ((path, image_io.read_rgb(path)) for path in paths)
        if inference_mode.plain:
            steps = inference.predict_steps(network)
            segmented = inference.segment(network, images, batch_size=args.batch_size, pad_multiple=args.pad_multiple,
                                          buckets=buckets(paths, args), steps=steps)
        else:
            run = modes.LogitSteps.of(network, args.batch_size)
            steps, segmented = run.steps, segment_in_mode(network, inference.prefetch(images), inference_mode, run)
        with tqdm(total=len(paths), desc="predict", unit="image", dynamic_ncols=True) as progress, \
                concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
            pending = collections.deque()  # files are encoded and written while the next batch runs
            for path, image, mask in segmented:
                pending.append(writer.submit(write_outputs, directory, path, image, mask, heads, args.figure))
                while pending and (len(pending) > WRITE_AHEAD or pending[0].done()):
                    pending.popleft().result()
                    progress.update(1)
                progress.set_postfix(compilations=steps.compilations, refresh=False)
            for future in pending:
                future.result()
                progress.update(1)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} mask(s) to {directory}: {steps.compilations} compilation(s) {steps.compile_s:.1f}s, "
          f"forward {steps.run_s:.1f}s, total {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
