"""The inference core: models from settings, the eval and predict steps compiled per shape, and scoring.

Training validation, `python -m fcn_jax.evaluate`, `python -m fcn_jax.predict` and the pipeline all run
networks through this module; it imports neither TensorFlow nor ml_collections.

    weights --load_network--> Network(model, replicated params, settings, mesh)
    uint8 images --normalize, pad_stack--> batch --CompiledSteps(eval_step | predict_step)--> outputs
    outputs --Scores--> confusion matrix, loss --metrics.segmentation_metrics--> the paper's scores
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import queue
import threading
import time
from typing import Any, Callable, Hashable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from fcn_jax import artifacts, checkpoints, losses, metrics, models, parallel
from fcn_jax import resnet as resnet_fcn
from fcn_jax.constants import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD, check_normalization

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MAX_DISTINCT_SHAPES = 256  # bucket_shapes' merging works on at most this many padded sizes


# ----------------------------------------------------------------------------- models and their params


def create_model(variant: str, *, num_classes: int, geometry: str = "caffe", width: float = 1.0,
                 dropout_rate: float = 0.0, dtype: str = "float32", heads=(), resnet=None) -> models.FCN:
    """An FCN from plain settings (the names of config.model); a bad value raises a ValueError naming it.
    `resnet`: config.model.resnet's options, for the ResNet variants only."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    heads = tuple((str(name), int(k)) for name, k in heads)
    options = {"resnet_options": dict(resnet or {})} if variant in resnet_fcn.DEPTHS else {}
    return models.create_model(variant, num_classes=num_classes, geometry=geometry, width=width,
                               dropout_rate=dropout_rate, dtype=DTYPES[dtype], heads=heads, **options)


def init_params(model, rng: jax.Array | None = None, image_size: int = 32) -> Any:
    """The param tree of `model`: ShapeDtypeStructs without `rng`, else values initialised from it (host numpy)."""
    init = lambda key: model.init(key, jnp.zeros((1, image_size, image_size, 3), jnp.float32))["params"]  # noqa: E731
    if rng is None:
        return jax.eval_shape(init, jax.random.PRNGKey(0))
    return jax.device_get(jax.jit(init)(rng))


def count_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


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

    @property
    def heads(self) -> tuple[tuple[str, int], ...]:
        return models.head_specs(self.model.num_classes, self.model.heads)


def load_network(weights: str, overrides: dict | None = None, mesh: Mesh | None = None) -> Network:
    """Weights (workdir, checkpoints dir or converted dir) -> Network; params must fit the model exactly."""
    from fcn_jax import pretrained

    settings = artifacts.model_settings(weights, overrides)
    try:
        model = create_model(settings["variant"], num_classes=settings["num_classes"], width=settings["width"],
                             geometry=settings["geometry"], dtype=settings["dtype"], heads=settings["heads"],
                             resnet=settings["resnet"])
        template = init_params(model)
    except ValueError as error:  # unknown variant / geometry / dtype
        raise ValueError(f"{weights}: {error}") from None
    try:
        params, _ = pretrained.merge_params(template, checkpoints.load_params(weights), strict=True)
    except pretrained.ParamMismatchError as error:
        described = ", ".join(f"{k}={settings[k]}" for k in ("variant", "num_classes", "width"))
        raise ValueError(f"{weights} does not fit {described}: {'; '.join(error.problems)}") from None
    mesh = parallel.create_mesh() if mesh is None else mesh
    return Network(model, parallel.replicate(params, mesh), settings, mesh)


# ----------------------------------------------------------------------------- inputs


def normalize(image: np.ndarray, mode: str) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 network input; 0 afterwards means 'mean pixel' (what padding uses).

    The same float32 operations, in the same order, as input_pipeline's TF version: bit-identical inputs.
    """
    if check_normalization(mode) == "caffe_bgr":
        return image[..., ::-1].astype(np.float32) - np.asarray(CAFFE_BGR_MEAN, np.float32)
    return ((image.astype(np.float32) / np.float32(255.0) - np.asarray(IMAGENET_MEAN, np.float32))
            / np.asarray(IMAGENET_STD, np.float32))


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


def bucket_shapes(sizes: Iterable[tuple[int, int]], max_shapes: int, multiple: int = 1) -> dict:
    """{(H, W): the padded shape its batches run at} for every size of `sizes`, at most `max_shapes` shapes (0: no
    bound), which bounds the compilations of a folder. Each size is padded to `multiple`; then, while there are too
    many shapes, the two whose union (the larger H and W) adds the fewest padded pixels over their images merge;
    then every size moves to the smallest shape that holds it and each shape shrinks to its sizes, until stable.
    Beyond MAX_DISTINCT_SHAPES padded sizes, the multiple doubles (from 8) until that many remain."""
    sizes = [tuple(int(v) for v in size) for size in sizes]
    counts = collections.Counter(padded_shape(h, w, multiple) for h, w in sizes)
    while max_shapes and len(counts) > MAX_DISTINCT_SHAPES:  # the merging below costs O(n^3) in the shapes
        multiple = max(8, 2 * multiple)
        counts = collections.Counter(padded_shape(h, w, multiple) for h, w in sizes)
    if not counts:
        return {}
    shapes = np.array(sorted(counts), np.int64).reshape(-1, 2)
    images = np.array([counts[tuple(s)] for s in shapes.tolist()], np.int64)
    pixels = images * shapes.prod(1)  # the images' pixels as padded now, per shape
    while max_shapes and len(shapes) > max_shapes:
        union = np.maximum(shapes[:, None], shapes[None])  # (n, n, 2)
        added = (images[:, None] + images[None]) * union.prod(-1) - pixels[:, None] - pixels[None]
        added[np.tril_indices(len(shapes))] = np.iinfo(np.int64).max
        i, j = np.unravel_index(np.argmin(added), added.shape)
        shapes[i], images[i], pixels[i] = union[i, j], images[i] + images[j], pixels[i] + pixels[j] + added[i, j]
        shapes, images, pixels = (np.delete(a, j, 0) for a in (shapes, images, pixels))
    padded = np.array(sorted(counts), np.int64).reshape(-1, 2)
    while True:  # each step lowers the padding or ends: every size fits some shape, the shapes only shrink
        fits = np.all(padded[:, None] <= shapes[None], -1)  # (sizes, shapes)
        chosen = np.where(fits, shapes.prod(1)[None], np.iinfo(np.int64).max).argmin(1)
        shrunk = np.array([padded[chosen == k].max(0) if np.any(chosen == k) else shapes[k]
                           for k in range(len(shapes))]).reshape(-1, 2)
        if np.array_equal(shrunk, shapes):
            break
        shapes = shrunk
    to_shape = {tuple(p): tuple(int(v) for v in shapes[k]) for p, k in zip(padded.tolist(), chosen)}
    return {size: to_shape[padded_shape(*size, multiple)] for size in set(sizes)}


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """`items`, produced by a background thread up to `depth` ahead, so decoding and batching overlap the compiled
    steps (which release the GIL); an exception of the producer is raised here, where its item would have been."""
    channel, stop, end = queue.Queue(depth), threading.Event(), object()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                channel.put(value, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put((end, error))

    threading.Thread(target=produce, daemon=True, name="prefetch").start()
    try:
        while True:
            item, error = channel.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()


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


def batch_shape_of(pad_multiple: int, buckets: dict | None, image_of: Callable) -> Callable:
    """item -> the padded shape its batch runs at: its image's bucket (bucket_shapes) if it has one, else the
    image's size padded to `pad_multiple`."""
    def shape_of(item):
        size = image_of(item).shape[:2]
        return buckets[size] if buckets and size in buckets else padded_shape(*size, pad_multiple)
    return shape_of


def pad_stack(arrays: list[np.ndarray], shape: tuple[int, int], rows: int, value, dtype) -> np.ndarray:
    """(rows, H, W, ...) filled with `value`, arrays[i] at the top-left of row i; the rest are dummy rows."""
    out = np.full((rows, *shape, *arrays[0].shape[2:]), value, dtype)
    for row, array in zip(out, arrays):
        row[:array.shape[0], :array.shape[1]] = array
    return out


# ----------------------------------------------------------------------------- the pure steps


def _suffix(index: int, name: str) -> str:
    """Keys of the first head are plain ("confusion", "mean_iou"), the others' end in _<head name>."""
    return "" if index == 0 else f"_{name}"


def logit_scores(logits: jax.Array, labels: jax.Array, heads: tuple[tuple[str, int], ...]) -> dict:
    """Per head (models.head_specs): confusion matrix (summed over the batch), summed loss and valid pixels; and
    the predicted masks, (B, H, W) or (B, H, W, heads)."""
    out, predictions = {}, []
    for index, ((name, classes), (head_logits, head_labels)) in enumerate(
            zip(heads, losses.split_heads(logits, labels, tuple(k for _, k in heads)))):
        prediction = jnp.argmax(head_logits, -1)
        suffix = _suffix(index, name)
        out[f"loss_sum{suffix}"], out[f"num_valid{suffix}"] = losses.pixel_cross_entropy(
            head_logits, head_labels, reduction="sum")
        out[f"confusion{suffix}"] = metrics.confusion_matrix(prediction, head_labels, classes)
        predictions.append(prediction)
    out["prediction"] = (predictions[0] if len(predictions) == 1 else jnp.stack(predictions, -1)).astype(jnp.uint8)
    return out


def eval_step(params: Any, batch: dict, *, apply_fn, heads: tuple[tuple[str, int], ...]) -> dict:
    """logit_scores of the network's logits on a global batch."""
    return logit_scores(apply_fn({"params": params}, batch["image"], train=False), batch["label"], heads)


def predict_step(params: Any, batch: dict, *, apply_fn, heads: tuple[tuple[str, int], ...]) -> jax.Array:
    """(B, H, W) uint8 class ids, the argmax of the logits; (B, H, W, heads) for several heads."""
    return head_masks(apply_fn({"params": params}, batch["image"], train=False), heads)


def head_masks(logits, heads: tuple[tuple[str, int], ...]):
    """uint8 argmax of each head's logits (NumPy or JAX arrays), stacked on a last axis for several heads."""
    masks = [x.argmax(-1) for x in losses.split_logits(logits, tuple(k for _, k in heads))]
    stack = np.stack if isinstance(logits, np.ndarray) else jnp.stack
    return (masks[0] if len(masks) == 1 else stack(masks, -1)).astype(np.uint8)


class CompiledSteps:
    """`step(params, batch)` compiled once per batch shape over `mesh`; counts compilations and times them.

    compile_s: seconds spent compiling; run_s: seconds in the compiled step (to results ready),
    host-to-device transfer excluded.
    """

    def __init__(self, step: Callable, mesh: Mesh, out_shardings):
        self._jitted = jax.jit(step, out_shardings=out_shardings)
        self.mesh = mesh
        self._compiled: dict[tuple, Any] = {}
        self.compile_s = self.run_s = 0.0

    @property
    def compilations(self) -> int:
        return len(self._compiled)

    def __call__(self, params: Any, batch: dict[str, np.ndarray]):
        arrays = parallel.host_to_global(batch, self.mesh)
        key = tuple(arrays["image"].shape)
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = self._jitted.lower(params, arrays).compile()
            self.compile_s += time.perf_counter() - start
        start = time.perf_counter()
        out = jax.block_until_ready(self._compiled[key](params, arrays))
        self.run_s += time.perf_counter() - start
        return out


def eval_steps(apply_fn, heads: tuple[tuple[str, int], ...], mesh: Mesh) -> CompiledSteps:
    """eval_step compiled per shape: statistics replicated, predicted masks left sharded by rows."""
    step = functools.partial(eval_step, apply_fn=apply_fn, heads=heads)
    replicated = parallel.replicated(mesh)
    shardings = {f"{key}{_suffix(i, name)}": replicated for i, (name, _) in enumerate(heads)
                 for key in ("confusion", "loss_sum", "num_valid")}
    return CompiledSteps(step, mesh, out_shardings={**shardings, "prediction": parallel.batch_sharded(mesh)})


def predict_steps(network: Network) -> CompiledSteps:
    step = functools.partial(predict_step, apply_fn=network.model.apply, heads=network.heads)
    return CompiledSteps(step, network.mesh, out_shardings=parallel.batch_sharded(network.mesh))


# ----------------------------------------------------------------------------- scoring and segmenting


class Scores:
    """Sums eval_step outputs over a split: one confusion matrix per head, as the reference's score.py does."""

    def __init__(self, heads: tuple[tuple[str, int], ...]):
        self.suffixes = [_suffix(i, name) for i, (name, _) in enumerate(heads)]
        self.confusions = {s: np.zeros((k, k), np.int64) for s, (_, k) in zip(self.suffixes, heads)}
        self.loss_sums = dict.fromkeys(self.suffixes, 0.0)
        self.num_valids = dict.fromkeys(self.suffixes, 0)

    @property
    def confusion(self) -> np.ndarray:
        return self.confusions[""]

    @property
    def num_valid(self) -> int:
        return self.num_valids[""]

    def add(self, out: dict) -> None:
        stats = parallel.fetch({k: v for k, v in out.items() if k != "prediction"})
        for s in self.suffixes:
            self.confusions[s] += stats[f"confusion{s}"]
            self.loss_sums[s] += float(stats[f"loss_sum{s}"])
            self.num_valids[s] += int(stats[f"num_valid{s}"])

    def result(self) -> dict:
        """segmentation_metrics of each head's summed confusion and its mean loss per valid pixel; the first
        head's keys are plain, the others' end in _<head name>."""
        result = {}
        for s in self.suffixes:
            head = metrics.segmentation_metrics(self.confusions[s])
            head["loss"] = self.loss_sums[s] / max(self.num_valids[s], 1)
            result.update({f"{k}{s}": v for k, v in head.items()})
        return result


def score(steps: CompiledSteps, params: Any, batches: Iterable[dict], heads: tuple[tuple[str, int], ...],
          on_batch: Callable[[dict, dict], None] | None = None) -> Scores:
    """Runs `steps` (from eval_steps) on host batches {'image', 'label', ...}; `on_batch(out, batch)` after each."""
    scores = Scores(heads)
    for batch in batches:
        out = steps(params, {"image": batch["image"], "label": batch["label"]})
        scores.add(out)
        if on_batch is not None:
            on_batch(out, batch)
    return scores


def segment(network: Network, images: Iterable[tuple[Any, np.ndarray]], *, batch_size: int = 1,
            pad_multiple: int = 1, buckets: dict | None = None,
            steps: CompiledSteps | None = None) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """(key, uint8 RGB image) pairs -> (key, image, (H, W) uint8 mask, (H, W, heads) for several heads), in
    groups of one padded size: `buckets[(H, W)]` (bucket_shapes) if given, else (H, W) padded to `pad_multiple`.

    Images are read and batched in a background thread while the network runs. Order follows the groups, not
    the input. Pass `steps` (from `predict_steps`) to read its timings.
    """
    steps = predict_steps(network) if steps is None else steps
    rows = global_batch_size(batch_size, network.mesh)
    normalization = network.settings["normalization"]
    shape_of = batch_shape_of(pad_multiple, buckets, lambda item: item[1])

    def batches():
        for group in batches_by_shape(images, shape_of, rows):
            yield group, pad_stack([normalize(image, normalization) for _, image in group], shape_of(group[0]), rows,
                                   0.0, np.float32)

    for group, batch in prefetch(batches()):
        masks = jax.device_get(steps(network.params, {"image": batch}))
        for (key, image), mask in zip(group, masks):
            yield key, image, mask[:image.shape[0], :image.shape[1]]
