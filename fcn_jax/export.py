"""Export trained or converted weights as artifacts that run without fcn_jax: StableHLO, a TF SavedModel, ONNX.

    python -m fcn_jax.export --weights runs/fcn8s --output exported/fcn8s       # StableHLO + SavedModel, any batch/size
    python -m fcn_jax.export --weights runs/fcn8s --output exported/onnx --formats onnx     # ONNX, any batch and size
    python -m fcn_jax.export --weights runs/fcn8s --output exported/fixed --batch 1 --size 512 512 --formats stablehlo

What the folder holds and what the artifacts take and give: fcn_jax.infer.export.
"""
from __future__ import annotations

import argparse
import sys

from fcn_jax.data import dataset_info
from fcn_jax.infer import export
from fcn_jax.infer.network import load_network


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fcn_jax.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True,
                        help="training workdir, its checkpoints/ dir, or converted weights (python -m fcn_jax.convert)")
    parser.add_argument("--output", required=True, help="folder to write (replaced if it holds an earlier export)")
    parser.add_argument("--formats", nargs="+", choices=export.FORMATS, default=list(export.DEFAULT_FORMATS),
                        help="saved_model needs TensorFlow (pip install \".[prepare]\"), onnx the onnx package "
                        "(pip install \".[onnx]\"); stablehlo needs only jax")
    parser.add_argument("--batch", type=int, help="fix the batch size (default: symbolic, any batch)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="fix the image size (default: symbolic, any size)")
    parser.add_argument("--platforms", nargs="+", default=["cpu"], choices=("cpu", "cuda", "rocm", "tpu"),
                        help="platforms the StableHLO artifact is lowered for (it runs on those only)")
    parser.add_argument("--dataset", help="class names and colours (default: the dataset.json stored with the weights)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if (args.batch is not None and args.batch < 1) or (args.size and min(args.size) < 1):
            raise ValueError("--batch and --size must be positive")
        network = load_network(args.weights)
        heads = dataset_info.for_weights(args.weights, network.heads, args.dataset)
        meta = export.write_artifacts(network, heads, args.output, batch=args.batch,
                               size=tuple(args.size) if args.size else None, formats=tuple(args.formats),
                               platforms=tuple(args.platforms))
    except ImportError as error:
        missing = getattr(error, "name", "") or ""
        hint = ("--formats onnx needs the onnx package: pip install \".[onnx]\"" if missing.startswith("onnx") else
                "--formats saved_model needs TensorFlow: pip install \".[prepare]\", or export --formats stablehlo only"
                if "saved_model" in args.formats else "pip install the package again: pip install .")
        print(f"error: {error} ({hint})", file=sys.stderr)
        return 1
    except (ValueError, OSError, NotImplementedError) as error:  # NotImplementedError: a primitive ONNX lacks
        print(f"error: {error}", file=sys.stderr)
        return 1
    accepts = meta["accepts"]
    print(f"wrote {', '.join(args.formats)} to {args.output}: batch {accepts['batch']}, height {accepts['height']}, "
          f"width {accepts['width']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
