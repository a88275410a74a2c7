"""Segment images with a network exported by `python -m fcn_jax.export`, with numpy, Pillow and either jax (the
StableHLO artifact) or onnxruntime (model.onnx).

    python segment.py photo.jpg more/*.jpg --output masks/ [--runtime onnxruntime]

writes masks/<stem>.png for each image: the class ids as pixel values, coloured with the dataset's palette
(masks/<stem>_<head>.png for second and later heads). From Python:

    import segment
    run = segment.load("exported/fcn8s")    # the folder holding this file and the artifacts
    logits, masks = run(images)              # uint8 RGB (batch, height, width, 3) of one size

fcn_jax.infer.export copies this file into every export folder as segment.py; fcn_jax itself never imports it.
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIMES = ("jax", "onnxruntime")


def default_runtime(folder: str) -> str:
    """jax where the folder holds its artifact and jax imports, else onnxruntime."""
    if os.path.exists(os.path.join(folder, "model.jax_export")):
        try:
            import jax  # noqa: F401
            return "jax"
        except ImportError:
            pass
    return "onnxruntime"


def load(folder: str = HERE, runtime: str | None = None):
    """run(images) -> (logits, masks) as NumPy arrays, by jax (model.jax_export + params.npz; each new image shape
    compiles once) or onnxruntime (model.onnx, on CUDA where onnxruntime-gpu has it, else the CPU)."""
    if (runtime or default_runtime(folder)) == "onnxruntime":
        if not os.path.isfile(os.path.join(folder, "model.onnx")):
            raise FileNotFoundError(f"{folder} holds no model.onnx (export with --formats onnx)")
        import onnxruntime

        providers = [p for p in onnxruntime.get_available_providers() if p != "TensorrtExecutionProvider"]
        session = onnxruntime.InferenceSession(os.path.join(folder, "model.onnx"), providers=providers)
        return lambda images: tuple(session.run(["logits", "masks"], {"images": np.asarray(images, np.uint8)}))
    import jax
    from jax import export

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
    parser.add_argument("--runtime", choices=RUNTIMES, help="default: jax if the folder has its artifact and jax "
                        "imports, else onnxruntime")
    args = parser.parse_args(argv)
    try:
        with open(os.path.join(args.model, "export.json")) as f:
            meta = json.load(f)
        run = load(args.model, args.runtime)
        os.makedirs(args.output, exist_ok=True)
        for path in args.images:
            masks = segment_file(run, path, meta["accepts"])  # (H, W), or (H, W, heads)
            stem = os.path.splitext(os.path.basename(path))[0]
            planes = [masks] if masks.ndim == 2 else list(masks.transpose(2, 0, 1))
            for index, (head, mask) in enumerate(zip(meta["heads"], planes)):
                out = Image.fromarray(mask, mode="P")
                out.putpalette([v for colour in head["palette"] for v in colour])
                out.save(os.path.join(args.output, stem + (f"_{head['name']}" if index else "") + ".png"))
    except (OSError, ValueError, ImportError) as error:  # a missing file or runtime, another size or platform
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(args.images)} mask(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
