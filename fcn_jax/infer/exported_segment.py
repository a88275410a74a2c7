"""Segment images with a network exported by `python -m fcn_jax.export`, using only jax, numpy and Pillow.

    python segment.py photo.jpg more/*.jpg --output masks/

writes masks/<stem>.png for each image: the class ids as pixel values, coloured with the dataset's palette
(masks/<stem>_<head>.png for second and later heads). From Python:

    import segment
    run = segment.load("exported/fcn8s")    # the folder holding this file, model.jax_export and params.npz
    logits, masks = run(images)              # uint8 RGB (batch, height, width, 3) of one size

fcn_jax.infer.export copies this file into every export folder as segment.py; fcn_jax itself never imports it.
"""
import argparse
import json
import os
import sys

import jax
import numpy as np
from jax import export
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))


def load(folder: str = HERE):
    """run(images) -> (logits, masks) as NumPy arrays; each new image shape compiles once."""
    with open(os.path.join(folder, "model.jax_export"), "rb") as f:
        exported = export.deserialize(bytearray(f.read()))
    with np.load(os.path.join(folder, "params.npz")) as stored:
        params = [jax.device_put(stored[f"p{i}"]) for i in range(len(stored.files))]
    call = jax.jit(exported.call)
    return lambda images: tuple(np.asarray(x) for x in call(params, np.asarray(images, np.uint8)))


def segment_file(run, path: str, accepts: dict) -> np.ndarray:
    """(H, W) or (H, W, heads) masks of one image file, fitted to the batch and size the export accepts."""
    with Image.open(path) as image:
        pixels = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    fixed = [accepts[k] for k in ("height", "width")]
    if all(isinstance(v, int) for v in fixed) and list(pixels.shape[:2]) != fixed:
        raise ValueError(f"{path} is {pixels.shape[0]}x{pixels.shape[1]}, but this export takes {fixed[0]}x{fixed[1]} "
                         "images only (export again without --size for any size)")
    batch = accepts["batch"] if isinstance(accepts["batch"], int) else 1
    return run(np.repeat(pixels[None], batch, axis=0))[1][0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--output", required=True, help="folder for the masks (created)")
    parser.add_argument("--model", default=HERE, help="the export folder (default: this file's)")
    args = parser.parse_args(argv)
    try:
        with open(os.path.join(args.model, "export.json")) as f:
            meta = json.load(f)
        run = load(args.model)
        os.makedirs(args.output, exist_ok=True)
        for path in args.images:
            masks = segment_file(run, path, meta["accepts"])  # (H, W), or (H, W, heads)
            stem = os.path.splitext(os.path.basename(path))[0]
            planes = [masks] if masks.ndim == 2 else list(masks.transpose(2, 0, 1))
            for index, (head, mask) in enumerate(zip(meta["heads"], planes)):
                out = Image.fromarray(mask, mode="P")
                out.putpalette([v for colour in head["palette"] for v in colour])
                out.save(os.path.join(args.output, stem + (f"_{head['name']}" if index else "") + ".png"))
    except (OSError, ValueError) as error:  # a missing file, another size, another platform
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(args.images)} mask(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
