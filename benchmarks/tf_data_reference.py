"""The tf.data input pipeline fcn_jax trained with before data.input_pipeline (NumPy, no TensorFlow) replaced it:
kept as the reference that the new stream is checked equal to (tests/data/input_pipeline_test.py) and timed
against (benchmarks/input_pipeline.py). Not imported by fcn_jax.

A *source* is any random-access sequence of examples (data.examples): a Python list, or a prepared tfds split.
Decoding is the source's job; reading happens in a parallel `tf.numpy_function` map, the rest are TF ops.

Iterator state: the training stream is a pure function of (seed, step), so a checkpoint needs only the step.
  - Stream element k (k = 0, 1, 2, ...) is `source[perm_e(k % N)]` with e = k // N and perm_e a per-epoch
    permutation (`tf.random.experimental.index_shuffle` seeded by (seed, e)): every epoch visits each example once.
  - Every random choice for element k (scale, crop offset, flip) comes from stateless ops seeded by (seed, k).
  - Global batch t is elements [t*B, (t+1)*B); process p of P takes positions [p*B/P, (p+1)*B/P) of it.
So `train_dataset(..., start_step=s)` yields exactly the batches s, s+1, ... of an uninterrupted run, and P processes
together see exactly what one process sees. No tf.data state is saved or restored.

Padding (train crops smaller than crop_size, eval images) goes bottom/right: label 255, image 0 after normalisation.
A bad example (label value outside 0..20/255, image/label size mismatch, image larger than an eval pad_size) raises
a ValueError naming its id inside the read; iterating then raises tf.errors.InvalidArgumentError with that message.
Keep iterators local to a function: TF may hang at interpreter exit if one is alive while its Python reads run.
"""
from __future__ import annotations

import functools
import re
from typing import Sequence

import numpy as np
import tensorflow as tf

from fcn_jax.core.constants import IGNORE_LABEL, VOC_NUM_CLASSES
from fcn_jax.core.normalization import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD, check_normalization
from fcn_jax.data.examples import label_dims
from fcn_jax.data.input_pipeline import (  # what has no TensorFlow in it is the package's
    _check_process,
    _num_examples,
    eval_pad_size,
    read_example,
    stream_index,
)

PREFETCH_BATCHES = 2  # batches read ahead while the accelerator computes
tf.config.set_visible_devices([], "GPU")  # tf.data runs on the host: keep TF off the accelerators JAX uses


def normalize(image, mode: str) -> tf.Tensor:
    """uint8/float RGB (..., 3) -> float32 network input, as core.normalization.normalize does in NumPy."""
    if check_normalization(mode) == "caffe_bgr":  # tf.reverse: several times faster than image[..., ::-1] on CPU
        return tf.cast(tf.reverse(image, axis=[-1]), tf.float32) - tf.constant(CAFFE_BGR_MEAN, tf.float32)
    image = tf.cast(image, tf.float32)
    return (image / 255.0 - tf.constant(IMAGENET_MEAN, tf.float32)) / tf.constant(IMAGENET_STD, tf.float32)


def shuffled_index(k: tf.Tensor, *, num_examples: int, seed: int) -> tf.Tensor:
    """Source index of stream element k: a fresh permutation of the source every epoch."""
    epoch = k // num_examples
    return tf.random.experimental.index_shuffle(
        k % num_examples, seed=tf.stack([tf.constant(seed, tf.int64), epoch]),
        max_index=tf.constant(num_examples - 1, tf.int64))


def _read_train(source, index, *, num_classes):
    image, label, _ = read_example(source, index, num_classes)
    return image, label


def numpy_batches(dataset: tf.data.Dataset):
    """dataset.as_numpy_iterator(), where a bad example (a ValueError in a read) surfaces as that ValueError's one
    line instead of a TF error wrapping a Python traceback."""
    iterator = dataset.as_numpy_iterator()
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as error:
            found = re.findall(r"(?:ValueError|BadExampleError): (.+)", error.message)
            raise ValueError(found[-1].strip() if found else error.message.splitlines()[0]) from None


def _read_eval(source, k, *, pad_size, num_classes):
    """Stream element k of the eval split; past the end an empty dummy (padded later to all-ignore)."""
    if k >= len(source):
        return np.zeros((0, 0, 3), np.uint8), np.zeros([0, 0, *label_dims(num_classes)], np.uint8), np.bytes_(b"")
    image, label, example_id = read_example(source, k, num_classes)
    if image.shape[0] > pad_size[0] or image.shape[1] > pad_size[1]:
        raise ValueError(f"example {example_id.decode(errors='replace')!r}: image {image.shape[0]}x{image.shape[1]} "
                         f"is larger than pad_size {pad_size[0]}x{pad_size[1]}")
    return image, label, np.bytes_(example_id)


def _pad_to(x: tf.Tensor, size: tuple[int, int], value) -> tf.Tensor:
    """Pad bottom/right to `size` (x is at most that size)."""
    extra = [[0, size[0] - tf.shape(x)[0]], [0, size[1] - tf.shape(x)[1]]] + [[0, 0]] * (x.shape.rank - 2)
    return tf.ensure_shape(tf.pad(x, extra, constant_values=value), list(size) + x.shape[2:].as_list())


def augment(image: tf.Tensor, label: tf.Tensor, *, rng_seed: tf.Tensor, crop_size: tuple[int, int],
            scale_range: tuple[float, float] | None, flip: bool, normalization: str):
    """One training example: random scale, random crop (padded when smaller), flip, normalise.

    image uint8 (H, W, 3), label uint8 (H, W) -> float32 (h, w, 3), int32 (h, w). All randomness comes from
    `rng_seed` (shape [2]) through stateless ops. Padding goes bottom/right: image 0 after normalisation (the mean
    pixel), label 255.
    """
    u = tf.random.stateless_uniform([4], seed=rng_seed)  # scale, crop y, crop x, flip
    size = tf.shape(label)[:2]
    if scale_range is not None:
        scale = scale_range[0] + u[0] * (scale_range[1] - scale_range[0])
        scaled = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)
        image = tf.image.resize(image, scaled, method="bilinear")  # float32, whole image: borders stay exact
    else:
        scaled = size
    top = _offset(u[1], scaled[0] - crop_size[0])
    left = _offset(u[2], scaled[1] - crop_size[1])
    image = image[top:top + crop_size[0], left:left + crop_size[1]]
    # The label window straight from the unscaled label: nearest needs no interpolation, so only the crop is
    # computed (identical to tf.image.resize(..., "nearest") then cropping).
    rows = nearest_indices(top, tf.minimum(crop_size[0], scaled[0] - top), size[0], scaled[0])
    cols = nearest_indices(left, tf.minimum(crop_size[1], scaled[1] - left), size[1], scaled[1])
    label = tf.gather(tf.gather(label, rows, axis=0), cols, axis=1)
    if flip:
        flipped = u[3] < 0.5
        image = tf.cond(flipped, lambda: tf.reverse(image, axis=[1]), lambda: image)
        label = tf.cond(flipped, lambda: tf.reverse(label, axis=[1]), lambda: label)
    image = _pad_to(normalize(image, normalization), crop_size, 0.0)
    label = _pad_to(tf.cast(label, tf.int32), crop_size, IGNORE_LABEL)
    return image, label


def nearest_indices(start, length, in_size, out_size) -> tf.Tensor:
    """Source indices of output pixels [start, start + length) when resizing in_size -> out_size by nearest.

    Same float32 arithmetic as TF's half-pixel-centre ResizeNearestNeighbor (what tf.image.resize uses).
    """
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    centres = tf.cast(tf.range(start, start + length), tf.float32) + 0.5
    return tf.minimum(tf.cast(tf.floor(centres * scale), tf.int32), in_size - 1)


def _offset(u: tf.Tensor, slack: tf.Tensor) -> tf.Tensor:
    """Uniform integer in [0, max(slack, 0)] from u in [0, 1)."""
    slack = tf.maximum(slack, 0)
    return tf.minimum(tf.cast(u * tf.cast(slack + 1, tf.float32), tf.int32), slack)


def train_dataset(source: Sequence[dict], *, global_batch_size: int, crop_size: tuple[int, int], seed: int,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  scale_range: tuple[float, float] | None = (0.5, 2.0), flip: bool = True,
                  normalization: str = "caffe_bgr", num_steps: int | None = None,
                  num_classes: int | tuple[int, ...] = VOC_NUM_CLASSES) -> tf.data.Dataset:
    """Host-local batches {'image': float32 (B/P, h, w, 3), 'label': int32 (B/P, h, w)} for steps start_step + 1 ..

    num_steps (None: without end). A finite stream lets the parallel readers stop with the last batch instead of
    reading ahead into batches nobody takes (which an interpreter exit then waits for).
    """
    _check_process(process_index, process_count)
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(f"global batch size {global_batch_size} is not a positive multiple of the "
                         f"{process_count} processes; every process must get the same number of examples")
    local_batch = global_batch_size // process_count
    num_examples = _num_examples(source)
    crop_size = (int(crop_size[0]), int(crop_size[1]))
    if min(crop_size) <= 0:
        raise ValueError(f"crop_size must be positive, got {crop_size}")
    if scale_range is not None and not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    normalize(tf.zeros([1, 1, 3]), normalization)  # unknown modes fail here, not on the first batch
    read = functools.partial(_read_train, source, num_classes=num_classes)

    def element(position):
        k = stream_index(position, global_batch_size=global_batch_size, process_index=process_index,
                         process_count=process_count)
        image, label = tf.numpy_function(read, [shuffled_index(k, num_examples=num_examples, seed=seed)],
                                         [tf.uint8, tf.uint8], stateful=False)
        image = tf.ensure_shape(image, [None, None, 3])
        label = tf.ensure_shape(label, [None, None, *label_dims(num_classes)])
        image, label = augment(image, label, rng_seed=tf.stack([tf.constant(seed, tf.int64), k]),
                               crop_size=crop_size, scale_range=scale_range, flip=flip, normalization=normalization)
        return {"image": image, "label": label}

    positions = (tf.data.Dataset.counter(start_step * local_batch) if num_steps is None else
                 tf.data.Dataset.range(start_step * local_batch, max(num_steps, start_step) * local_batch))
    dataset = positions.map(element, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(local_batch, drop_remainder=True).prefetch(PREFETCH_BATCHES).with_options(_options())


def eval_dataset(source: Sequence[dict], *, batch_size: int, pad_size: tuple[int, int] | None = None,
                 normalization: str = "caffe_bgr", process_index: int = 0, process_count: int = 1,
                 num_classes: int | tuple[int, ...] = VOC_NUM_CLASSES) -> tf.data.Dataset:
    """Every example once, whole, padded to `pad_size`; `batch_size` is per process.

    Yields {'image': float32 (b, H, W, 3), 'label': int32 (b, H, W), 'id': string (b,), 'height', 'width': int32 (b,)}.
    Global batch t is elements [t*b*P, (t+1)*b*P), process p takes its p-th b of them; the tail of the last batch
    is dummies (label all 255, image 0, id b"", height = width = 0), so every process yields the same batches.
    """
    _check_process(process_index, process_count)
    if batch_size <= 0:
        raise ValueError(f"eval batch_size must be positive, got {batch_size}")
    num_examples = _num_examples(source)
    pad_size = eval_pad_size(source) if pad_size is None else (int(pad_size[0]), int(pad_size[1]))
    normalize(tf.zeros([1, 1, 3]), normalization)
    num_batches = -(-num_examples // (batch_size * process_count))
    read = functools.partial(_read_eval, source, pad_size=pad_size, num_classes=num_classes)

    def element(position):
        k = stream_index(position, global_batch_size=batch_size * process_count, process_index=process_index,
                         process_count=process_count)
        image, label, example_id = tf.numpy_function(read, [k], [tf.uint8, tf.uint8, tf.string], stateful=False)
        label = tf.ensure_shape(label, [None, None, *label_dims(num_classes)])
        return {"image": _pad_to(normalize(tf.ensure_shape(image, [None, None, 3]), normalization), pad_size, 0.0),
                "label": _pad_to(tf.cast(label, tf.int32), pad_size, IGNORE_LABEL),
                "id": tf.ensure_shape(example_id, []),
                "height": tf.shape(label)[0], "width": tf.shape(label)[1]}

    dataset = tf.data.Dataset.range(num_batches * batch_size).map(element, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(PREFETCH_BATCHES).with_options(_options())


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True  # parallel map keeps order: batches are a function of the step
    # No autotuning: its background optimiser, starved of CPU by the training step, held every run's exit for
    # 30-60 s (the iterator's destructor waits for it). Parallelism is the core count, buffers are fixed.
    options.autotune.enabled = False
    return options
