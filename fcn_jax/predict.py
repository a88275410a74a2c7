"""Segment images with trained or converted weights: palette masks, colour overlays, figures.

    python -m fcn_jax.predict --weights weights/fcn8s_pascal --input photo.jpg more_photos/ --output out/

For each image, out/<stem>.png is the predicted mask as a VOC palette PNG (the
pixel indices are the class ids), out/<stem>_overlay.jpg the classes blended
over the image, and with --figure out/<stem>_figure.png shows image |
prediction | the names of the classes present. --weights takes a training
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

The inference core (loading weights with their settings, batching images of one
padded size, one compiled step per size) lives here; fcn_jax.evaluate reuses it.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any, Callable, Hashable, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from PIL import Image

from fcn_jax import checkpoints, input_pipeline, models, parallel, pretrained, train, visualize

SETTINGS = ("variant", "num_classes", "width", "geometry", "normalization")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CONFIG_FILE = "config.json"  # written into the workdir by train.train_and_evaluate


# ----------------------------------------------------------------------------- weights and their settings


def stored_settings(weights: str) -> dict:
    """Model settings saved with the weights: the converted sidecar, else the training run's config.json.

    A checkpoints/ dir reads the config.json of the workdir above it. {} when the folder holds neither.
    """
    path = os.path.abspath(os.path.expanduser(weights))
    if os.path.isfile(path):
        raise ValueError(f"--weights {weights} is a file; pass a training workdir or a folder written by "
                         "python -m fcn_jax.convert (which converts .caffemodel and .pth files)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--weights {weights} does not exist")
    sidecar = os.path.join(path, pretrained.SIDECAR)
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            meta = json.load(f)
        return {k: meta[k] for k in (*SETTINGS, "dtype") if k in meta}
    for directory in (path, os.path.dirname(path)):
        config_path = os.path.join(directory, CONFIG_FILE)
        if os.path.isfile(config_path):
            with open(config_path) as f:
                config = ml_collections.ConfigDict(json.load(f))
            settings = {k: config.model[k] for k in ("variant", "num_classes", "width", "geometry", "dtype")}
            return {**settings, "normalization": config.data.normalization}
    return {}


def model_settings(weights: str, overrides: dict | None = None) -> dict:
    """Stored settings with the non-None `overrides` on top; every one of SETTINGS must end up known."""
    settings = {"dtype": "float32", **stored_settings(weights)}
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    missing = [k for k in SETTINGS if k not in settings]
    if missing:
        raise ValueError(f"{weights} holds neither {pretrained.SIDECAR} nor a training {CONFIG_FILE}; "
                         f"pass {' '.join('--' + k for k in missing)}")
    if settings["normalization"] not in input_pipeline.NORMALIZATIONS:
        raise ValueError(f"normalization {settings['normalization']!r}: expected one of "
                         f"{', '.join(input_pipeline.NORMALIZATIONS)}")
    settings["num_classes"], settings["width"] = int(settings["num_classes"]), float(settings["width"])
    return settings


@dataclasses.dataclass(frozen=True)
class Network:
    """A model, its params (replicated over `mesh`) and the settings they were loaded with."""

    model: models.FCN
    params: Any
    settings: dict
    mesh: Mesh

    @property
    def num_classes(self) -> int:
        return self.settings["num_classes"]


def load_network(weights: str, overrides: dict | None = None, mesh: Mesh | None = None) -> Network:
    """Weights (workdir, checkpoints dir or converted dir) -> Network; params must fit the model exactly."""
    settings = model_settings(weights, overrides)
    model_config = ml_collections.ConfigDict({
        "variant": settings["variant"], "num_classes": settings["num_classes"], "width": settings["width"],
        "geometry": settings["geometry"], "dtype": settings["dtype"], "dropout_rate": 0.0})
    try:
        model = train.create_model(model_config)
        template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"])
    except ValueError as error:  # unknown variant / geometry / dtype
        raise ValueError(f"{weights}: {error}") from None
    try:
        params, _ = pretrained.merge_params(template, checkpoints.load_params(weights), strict=True)
    except pretrained.ParamMismatchError as error:
        described = ", ".join(f"{k}={settings[k]}" for k in ("variant", "num_classes", "width"))
        raise ValueError(f"{weights} does not fit {described}: {'; '.join(error.problems)}") from None
    mesh = parallel.create_mesh() if mesh is None else mesh
    return Network(model, parallel.replicate(params, mesh), settings, mesh)


def class_names(num_classes: int) -> tuple[str, ...]:
    if num_classes == len(visualize.VOC_CLASSES):
        return visualize.VOC_CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))


# ----------------------------------------------------------------------------- batching by padded size


def padded_shape(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(H, W) rounded up to `multiple` (1: unchanged)."""
    if multiple < 1:
        raise ValueError(f"pad_multiple must be >= 1, got {multiple}")
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def global_batch_size(batch_size: int, mesh: Mesh) -> int:
    """The requested batch rounded up to a multiple of the devices (every device gets the same rows)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = mesh.devices.size
    return -(-batch_size // n) * n


def batches_by_shape(items: Iterable, shape_of: Callable[[Any], Hashable], batch_size: int) -> Iterator[list]:
    """Groups a stream into lists of at most `batch_size` items of one shape.

    A group is yielded as soon as it is full, the partial ones at the end, so memory holds at most one
    partial group per distinct shape.
    """
    open_groups: dict[Hashable, list] = {}
    for item in items:
        key = shape_of(item)
        group = open_groups.setdefault(key, [])
        group.append(item)
        if len(group) == batch_size:
            yield open_groups.pop(key)
    yield from open_groups.values()


def pad_stack(arrays: list[np.ndarray], shape: tuple[int, int], rows: int, value, dtype) -> np.ndarray:
    """(rows, H, W, ...) filled with `value`, arrays[i] at the top-left of row i; the rest are dummy rows."""
    out = np.full((rows, *shape, *arrays[0].shape[2:]), value, dtype)
    for row, array in zip(out, arrays):
        row[:array.shape[0], :array.shape[1]] = array
    return out


def normalize(image: np.ndarray, mode: str) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 network input, by input_pipeline's one definition."""
    return input_pipeline.normalize(image, mode).numpy()


class CompiledSteps:
    """`step(params, batch)` compiled once per batch shape over the mesh; counts compilations and times.

    compile_s: seconds spent compiling; run_s: seconds in the compiled step (to results ready),
    host-to-device transfer excluded.
    """

    def __init__(self, step: Callable, network: Network, out_shardings):
        self._jitted = jax.jit(step, out_shardings=out_shardings)
        self._network = network
        self._compiled: dict[tuple, Any] = {}
        self.compile_s = self.run_s = 0.0

    @property
    def compilations(self) -> int:
        return len(self._compiled)

    def __call__(self, batch: dict[str, np.ndarray]):
        arrays = parallel.host_to_global(batch, self._network.mesh)
        key = tuple(arrays["image"].shape)
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = self._jitted.lower(self._network.params, arrays).compile()
            self.compile_s += time.perf_counter() - start
        start = time.perf_counter()
        out = jax.block_until_ready(self._compiled[key](self._network.params, arrays))
        self.run_s += time.perf_counter() - start
        return out


def predict_step(params: Any, batch: dict, *, apply_fn) -> jax.Array:
    """(B, H, W) uint8 class ids: argmax of the logits."""
    return jnp.argmax(apply_fn({"params": params}, batch["image"], train=False), -1).astype(jnp.uint8)


def segment(network: Network, images: Iterable[tuple[Any, np.ndarray]], *, batch_size: int = 1,
            pad_multiple: int = 1, steps: CompiledSteps | None = None) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """(key, uint8 RGB image) pairs -> (key, image, (H, W) uint8 mask), in groups of one padded size.

    Order follows the groups, not the input. Pass `steps` (from `predict_steps`) to read its timings.
    """
    steps = predict_steps(network) if steps is None else steps
    rows = global_batch_size(batch_size, network.mesh)
    normalization = network.settings["normalization"]
    shape_of = lambda item: padded_shape(*item[1].shape[:2], pad_multiple)  # noqa: E731
    for group in batches_by_shape(images, shape_of, rows):
        shape = shape_of(group[0])
        batch = pad_stack([normalize(image, normalization) for _, image in group], shape, rows, 0.0, np.float32)
        masks = jax.device_get(steps({"image": batch}))
        for (key, image), mask in zip(group, masks):
            yield key, image, mask[:image.shape[0], :image.shape[1]]


def predict_steps(network: Network) -> CompiledSteps:
    step = functools.partial(predict_step, apply_fn=network.model.apply)
    return CompiledSteps(step, network, out_shardings=parallel.batch_sharded(network.mesh))


# ----------------------------------------------------------------------------- files


def find_images(inputs: Iterable[str]) -> list[str]:
    """Image files named by `inputs` (files, or folders whose images are taken in name order), checked readable."""
    paths = []
    for name in inputs:
        if os.path.isdir(name):
            found = sorted(os.path.join(name, f) for f in os.listdir(name)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(name, f)))
            if not found:
                raise ValueError(f"input folder {name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif os.path.isfile(name):
            paths.append(name)
        else:
            raise FileNotFoundError(f"input {name} does not exist")
    by_stem: dict[str, str] = {}
    for path in paths:
        image_size(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in by_stem:
            raise ValueError(f"inputs {by_stem[stem]} and {path} would both write {stem}.png; rename one")
        by_stem[stem] = path
    return paths


def image_size(path: str) -> tuple[int, int]:
    """(height, width) from the file's header, or a one-line error naming it."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, fully decoded (a truncated file fails here, naming it)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def prepare_output(directory: str) -> str:
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise FileExistsError(f"--output {directory} is an existing file, not a folder")
    os.makedirs(directory, exist_ok=True)
    return directory


def save_figure(path: str, image: np.ndarray, mask: np.ndarray, names: tuple[str, ...]) -> None:
    """image | prediction | legend of the classes present (matplotlib, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    palette = visualize.voc_palette() / 255.0
    present = [int(c) for c in np.unique(mask)]
    handles = [Patch(color=palette[c], label=names[c] if c < len(names) else str(c)) for c in present]
    columns = -(-len(handles) // 12)  # at most 12 names a column: fits the 4-inch height
    height, width = mask.shape
    panel, legend = 4.0 * width / height, 1.7 * columns  # inches, panels 4 inches high
    figure = Figure(figsize=(2 * panel + legend, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3, gridspec_kw={"width_ratios": [panel, panel, legend]})
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(visualize.colorize(mask), interpolation="nearest")
    axes[1].set_title("prediction")
    axes[2].legend(handles=handles, loc="center left", ncol=columns, fontsize="small", frameon=False)
    for ax in axes:
        ax.axis("off")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.92, wspace=0.04)
    figure.savefig(path, dpi=100)


def write_outputs(directory: str, path: str, image: np.ndarray, mask: np.ndarray, names: tuple[str, ...],
                  figure: bool) -> None:
    stem = os.path.splitext(os.path.basename(path))[0]
    visualize.save_mask(mask, os.path.join(directory, f"{stem}.png"))
    Image.fromarray(visualize.overlay(image, mask)).save(os.path.join(directory, f"{stem}_overlay.jpg"), quality=90)
    if figure:
        save_figure(os.path.join(directory, f"{stem}_figure.png"), image, mask, names)


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
    group.add_argument("--normalization", choices=input_pipeline.NORMALIZATIONS)
    parser.add_argument("--batch_size", type=int, default=1,
                        help="images per step (same padded size), rounded up to a multiple of the devices")
    parser.add_argument("--pad_multiple", type=int, default=1,
                        help="1: each image at its own size (exact); 32: pad to multiples of 32, fewer compilations")


def overrides(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in SETTINGS}


def hide_gpus_from_tensorflow() -> None:
    """tf is only used on the host (normalisation, data): keep it off the accelerators JAX uses."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")


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

    hide_gpus_from_tensorflow()
    start = time.perf_counter()
    try:
        paths = find_images(args.input)
        directory = prepare_output(args.output)
        network = load_network(args.weights, overrides(args))
        names = class_names(network.num_classes)
        steps = predict_steps(network)
        images = ((path, read_rgb(path)) for path in paths)
        with tqdm(total=len(paths), desc="predict", unit="image", dynamic_ncols=True) as progress:
            for path, image, mask in segment(network, images, batch_size=args.batch_size,
                                             pad_multiple=args.pad_multiple, steps=steps):
                write_outputs(directory, path, image, mask, names, args.figure)
                progress.update(1)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} mask(s) to {directory}: {steps.compilations} compilation(s) {steps.compile_s:.1f}s, "
          f"forward {steps.run_s:.1f}s, total {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
