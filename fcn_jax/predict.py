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

Loading the weights is fcn_jax.infer.network, running them fcn_jax.infer.runner (whole images, or an
inference mode: --window, --flip, --scales), the files fcn_jax.infer.outputs; this module is the command line.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import sys
import time

from fcn_jax.data import dataset_info, image_io
from fcn_jax.infer import flags, outputs
from fcn_jax.infer.network import load_network
from fcn_jax.infer.runner import Runner

WRITE_AHEAD = 8  # images whose files may wait to be written


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fcn_jax.predict", description=__doc__.split("\n\n")[0])
    flags.add_model_flags(parser)
    parser.add_argument("--input", required=True, nargs="+", help="image files and/or folders of images")
    parser.add_argument("--output", required=True, help="folder for <stem>.png, <stem>_overlay.jpg (created)")
    parser.add_argument("--figure", action="store_true", help="also write <stem>_figure.png (matplotlib)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from tqdm import tqdm

    start = time.perf_counter()
    try:
        mode = flags.mode(args)
        paths = image_io.find_images(args.input)
        directory = outputs.prepare_output(args.output)
        network = load_network(args.weights, flags.overrides(args))
        heads = dataset_info.for_weights(args.weights, network.heads, args.dataset)
        runner = Runner.of(network, mode=mode, batch_size=args.batch_size, pad_multiple=args.pad_multiple,
                           buckets=flags.buckets(args, lambda: [image_io.image_size(path) for path in paths]))
        segmented = runner.masks(network.params, ((path, image_io.read_rgb(path)) for path in paths))
        with tqdm(total=len(paths), desc="predict", unit="image", dynamic_ncols=True) as progress, \
                concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
            pending = collections.deque()  # files are encoded and written while the next batch runs
            for path, image, mask in segmented:
                pending.append(writer.submit(outputs.write_outputs, directory, path, image, mask, heads, args.figure))
                while pending and (len(pending) > WRITE_AHEAD or pending[0].done()):
                    pending.popleft().result()
                    progress.update(1)
                progress.set_postfix(compilations=runner.compilations, refresh=False)
            for future in pending:
                future.result()
                progress.update(1)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} mask(s) to {directory}: {runner.compilations} compilation(s) {runner.compile_s:.1f}s, "
          f"forward {runner.run_s:.1f}s, total {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
