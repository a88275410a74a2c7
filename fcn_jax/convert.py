"""Convert weights users own into an fcn_jax params checkpoint.

    python -m fcn_jax.convert --format caffe --input fcn8s-heavy-pascal.caffemodel \\
        --variant fcn8s --num_classes 21 --output weights/fcn8s_pascal

Formats: caffe (.caffemodel: ImageNet VGG16 or the FCN models), torchvision
(vgg16 state_dict .pth), pytorch_fcn (FCN32s/16s/8s/8sAtOnce state_dict .pth).
The output directory (an orbax checkpoint plus fcn_jax_weights.json) is what
training's `config.init_from` and evaluate/predict's `--weights` take.
Strict by default: every model param must come from the file and every file
layer must be used; --allow_missing imports a backbone only (ImageNet VGG16),
keeping a fresh init for the layers the file lacks.
"""

from __future__ import annotations

import argparse
import sys

from fcn_jax.core.normalization import NORMALIZATIONS
from fcn_jax.data import dataset_info
from fcn_jax.models import zoo
from fcn_jax.weights import checkpoints, convert, formats


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fcn_jax.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", required=True, choices=formats.FORMATS)
    parser.add_argument("--input", required=True, help="the .caffemodel or .pth file")
    parser.add_argument("--variant", required=True, choices=zoo.VARIANTS)
    parser.add_argument("--num_classes", type=int, default=21)
    parser.add_argument("--output", required=True, help="new directory for the converted weights")
    parser.add_argument("--allow_missing", action="store_true",
                        help="partial import: layers missing from the file keep a fresh init, extra ones are dropped")
    parser.add_argument("--normalization", choices=NORMALIZATIONS, default=None,
                        help="re-express conv1_1 for this input normalization (default: the file's own)")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier of the model (1 for real weights)")
    parser.add_argument("--dataset", default=None,
                        help="class names and colours stored with the weights: a preset (voc, cityscapes, ...) or a "
                             "classes.json (default: voc for 21 classes)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        heads = dataset_info.for_weights(None, args.num_classes, args.dataset)
        params, meta = convert.convert(
            args.format, args.input, args.variant, args.num_classes, width=args.width,
            allow_missing=args.allow_missing, normalization=args.normalization,
        )
        checkpoints.save_params(args.output, params, meta)
        dataset_info.write(heads, args.output)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(convert.format_report(meta))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
