"""The pipeline's classifier (FCN paper, section 3.1: the classifier a segmenter starts from), trained on image-level
labels: the class of the largest object of each label mask.

Its inputs (images shrunk onto a mean canvas, never enlarged), He initialisation, its Adam step and predictions, and
`classifier_job`, the job train.loop.run trains. The nets themselves are models.classifier's.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import scipy.ndimage
from flax import traverse_util
from PIL import Image

from fcn_jax.core import parallel
from fcn_jax.core.constants import IGNORE_LABEL
from fcn_jax.core.normalization import normalize
from fcn_jax.data import sources
from fcn_jax.infer.batching import global_batch_size
from fcn_jax.models.classifier import ConvolutionalVGG16, VGG16Classifier, convolutionalize_params
from fcn_jax.train import loop
from fcn_jax.train.step import TrainState, init_key, learning_rate_schedule

RESUMABLE_KEYS = ("num_steps", "log_every", "checkpoint_every")  # the classifier's cadence keys (loop.run)


def largest_object_class(label: np.ndarray, background: int | None = 0) -> int:
    """The class of the largest object in a label mask: its biggest 4-connected region of one class.

    The `background` class (None: a dataset without one) and ignore (255) are never objects; background (or 0)
    when there is none. Ties go to the lower class id. A region, not a class's total area: two small cats lose
    to one larger dog.
    """
    best_class, best_size = background or 0, 0
    for value in np.unique(label):
        if value in (background, IGNORE_LABEL):
            continue
        regions, count = scipy.ndimage.label(label == value)
        size = int(np.bincount(regions.ravel(), minlength=count + 1)[1:].max())
        if size > best_size:
            best_class, best_size = int(value), size
    return best_class


def classifier_input(image: np.ndarray, size: int, normalization: str,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (size, size, 3): normalised, shrunk only if larger, placed on a mean canvas.

    Images are not enlarged, so objects keep the scale the FCN later sees. With `rng` (training) the
    image lands at a random position and is flipped half the time; without it, it is centred.
    """
    height, width = image.shape[:2]
    scale = min(1.0, size / max(height, width))
    if scale < 1.0:
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    x = normalize(image, normalization)
    if rng is None:
        top, left = (size - height) // 2, (size - width) // 2
    else:
        top, left = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
        if rng.random() < 0.5:
            x = x[:, ::-1]
    canvas = np.zeros((size, size, 3), np.float32)  # 0 = the mean pixel after normalisation
    canvas[top:top + height, left:left + width] = x
    return canvas


def classifier_examples(source, background: int | None = 0) -> list[tuple[np.ndarray, int]]:
    """(image, class of the largest object) for every example of a segmentation source."""
    examples = []
    for index in range(len(source)):
        example = source[index]
        label = example["label"] if example["label"].ndim == 2 else example["label"][..., 0]  # the first head's
        examples.append((example["image"], largest_object_class(label, background)))
    return examples


def classifier_batch(examples, step: int, cfg) -> dict[str, np.ndarray]:
    """Training batch `step`: a pure function of (seed, step), so a resumed run sees the same batches."""
    rng = np.random.default_rng((cfg.seed, step))
    indices = rng.choice(len(examples), cfg.batch_size, replace=len(examples) < cfg.batch_size)
    return {"image": np.stack([classifier_input(examples[i][0], cfg.input_size, cfg.normalization, rng)
                               for i in indices]),
            "label": np.asarray([examples[i][1] for i in indices], np.int32)}


def he_initialised(params: dict, rng: jax.Array) -> dict:
    """Kernels drawn from N(0, 2 / fan_in) (He et al. 2015), biases and the last layer (fc8) zero.

    Flax's default LeCun scaling (1 / fan_in) halves the activation variance at every ReLU, 2^-15 over
    VGG16's 15 layers, and the net then hardly trains from scratch in a few hundred steps. He scaling keeps
    the variance; a zero fc8 starts from uniform class probabilities.
    """
    flat = traverse_util.flatten_dict(params)
    out = {}
    for key, (path, value) in zip(jax.random.split(rng, len(flat)), flat.items()):
        if path[-1] == "kernel" and path[0] != "fc8":
            fan_in = int(np.prod(value.shape[:-1]))
            out[path] = jax.random.normal(key, value.shape, value.dtype) * np.sqrt(2.0 / fan_in)
        else:
            out[path] = jnp.zeros_like(value)
    return traverse_util.unflatten_dict(out)


def classifier_train_step(state, batch: dict, rng: jax.Array) -> tuple[Any, dict]:
    """Adam step on softmax cross entropy over the image-level labels (no dropout: `rng` is unused)."""
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, batch["image"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": accuracy}


def classifier_predictions(model, params, examples, cfg, mesh) -> np.ndarray:
    """Predicted classes of the centred examples, in batches of the mesh's size (last batch padded)."""
    rows = global_batch_size(cfg.batch_size, mesh)
    step = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), -1),
                   out_shardings=parallel.replicated(mesh))
    predictions = []
    for start in range(0, len(examples), rows):
        chunk = [classifier_input(image, cfg.input_size, cfg.normalization)
                 for image, _ in examples[start:start + rows]]
        images = np.zeros((rows, cfg.input_size, cfg.input_size, 3), np.float32)
        images[:len(chunk)] = chunk
        out = step(params, parallel.host_to_global({"image": images}, mesh)["image"])
        predictions.append(parallel.fetch(out)[:len(chunk)])
    return np.concatenate(predictions)


def dense_vs_convolutional(classifier_params, images: np.ndarray, cfg) -> float:
    """Max |Dense classifier logits - ConvolutionalVGG16 scores| on 224x224 inputs (1x1 score maps)."""
    dense = VGG16Classifier(num_classes=cfg.num_classes, width=cfg.width)
    conv = ConvolutionalVGG16(num_classes=cfg.num_classes, width=cfg.width)
    logits = jax.jit(lambda p, x: dense.apply({"params": p}, x))(classifier_params, images)
    scores = jax.jit(lambda p, x: conv.apply({"params": p}, x))(
        convolutionalize_params(classifier_params), images)
    return float(jnp.max(jnp.abs(scores[:, 0, 0] - logits)))


def classifier_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Everything the classifier depends on (stored as classifier/config.json, checked on resume)."""
    cfg = ml_collections.ConfigDict(config.classifier.to_dict())
    cfg.seed = config.fcn.seed
    cfg.num_classes = config.fcn.model.num_classes
    cfg.width = config.fcn.model.width  # the FCN backbone takes these weights: same channel counts
    cfg.normalization = config.fcn.data.normalization
    cfg.data = ml_collections.ConfigDict(config.fcn.data.to_dict())
    return cfg


def classifier_job(cfg: ml_collections.ConfigDict, fcn_config: ml_collections.ConfigDict, mesh) -> loop.Job:
    """The classifier's data, He-initialised state and final evaluation (accuracy on the eval split)."""
    train_source, eval_source = sources.load_sources(fcn_config)
    background = sources.describe_dataset(fcn_config)[0][1].background
    train_examples, eval_examples = (classifier_examples(source, background)
                                     for source in (train_source, eval_source))
    model = VGG16Classifier(num_classes=cfg.num_classes, width=cfg.width)
    tx = optax.adam(learning_rate_schedule(cfg, cfg.num_steps))
    image_shape = (cfg.batch_size, cfg.input_size, cfg.input_size, 3)
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)

    def init(rng):
        init_rng, he_rng = jax.random.split(rng)
        params = he_initialised(model.init(init_rng, jnp.zeros((1, *image_shape[1:])))["params"], he_rng)
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    def batches(start_step: int):
        return (classifier_batch(train_examples, step, cfg) for step in range(start_step + 1, cfg.num_steps + 1))

    truth = np.asarray([label for _, label in eval_examples])
    counts = np.bincount(truth, minlength=cfg.num_classes)

    def evaluate(params, step: int) -> dict:
        predicted = classifier_predictions(model, params, eval_examples, cfg, mesh)
        return {"accuracy": float(np.mean(predicted == truth)),
                "majority_accuracy": float(counts.max() / counts.sum()),  # always answering the commonest class
                "num_eval_images": len(eval_examples), "num_train_images": len(train_examples)}

    return loop.Job(
        state=jax.jit(init, out_shardings=replicated)(init_key(cfg.seed)),
        rng=jax.device_put(jax.random.PRNGKey(cfg.seed), replicated), step_fn=classifier_train_step,
        abstract_batch={"image": jax.ShapeDtypeStruct(image_shape, jnp.float32, sharding=sharded),
                        "label": jax.ShapeDtypeStruct(image_shape[:1], jnp.int32, sharding=sharded)},
        batches=batches, batch_size=cfg.batch_size, mesh=mesh, log_keys=("loss", "accuracy"), evaluate=evaluate,
        eval_split=cfg.data.eval_split)


