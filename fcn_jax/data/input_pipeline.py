"""Training and evaluation batches from a random-access source, in NumPy: augment, normalise, pad with ignore 255,
shard per host. No TensorFlow: a prepared tfds split is read through its data source (Pillow decodes).

A *source* is any random-access sequence of examples (data.examples): a Python list, or a prepared tfds split.
Decoding is the source's job; reads and augmentation run in a pool of threads sized to the host (decoding and the
NumPy work release the GIL), in stream order, a few batches ahead of the accelerator.

The stream is a pure function of (seed, step), so a checkpoint needs only the step:
  - Stream element k (k = 0, 1, 2, ...) is `source[perm_e(k % N)]` with e = k // N and perm_e a per-epoch
    permutation (data.stream_random.shuffled_index, seeded by (seed, e)): every epoch visits each example once.
  - Every random choice for element k (scale, crop offset, flip) comes from data.stream_random.uniform(seed, k).
  - Global batch t is elements [t*B, (t+1)*B); process p of P takes positions [p*B/P, (p+1)*B/P) of it.
So `train_batches(..., start_step=s)` yields exactly global batches s, s + 1, ... (training steps s + 1, s + 2, ...)
of an uninterrupted run, and P processes together see exactly what one process sees. Both draws are TensorFlow's
(index_shuffle, stateless_uniform) bit for bit, and the arithmetic is tf.image.resize's, so the stream is the one the
earlier tf.data pipeline gave (tests/data/input_pipeline_test.py checks it against benchmarks/tf_data_reference.py).

Padding (train crops smaller than crop_size, eval images) goes bottom/right: label 255, image 0 after normalisation.
A bad example (label value outside 0..K-1/255, image/label size mismatch, image larger than an eval pad_size) raises
a ValueError naming its id when its batch is taken.
"""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
from typing import Callable, Iterator, Sequence

import numpy as np

from fcn_jax.core.constants import IGNORE_LABEL, VOC_NUM_CLASSES
from fcn_jax.core.normalization import check_normalization, normalize
from fcn_jax.data import stream_random
from fcn_jax.data.examples import check_example, image_sizes, label_dims

EVAL_PAD_MULTIPLE = 32  # FCN output strides divide 32, so padded eval shapes stay aligned
PREFETCH_BATCHES = 2  # batches read ahead while the accelerator computes


def default_workers() -> int:
    """Reader threads: the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def stream_index(position, *, global_batch_size: int, process_index: int, process_count: int):
    """Position in process p's local stream -> index k of the global stream (works on ints and arrays)."""
    local = global_batch_size // process_count
    return (position // local) * global_batch_size + process_index * local + position % local


def read_example(source: Sequence[dict], index: int, num_classes: int | tuple[int, ...] = VOC_NUM_CLASSES):
    """source[index] as (image, label, id), checked (data.examples.check_example)."""
    return check_example(source[int(index)], num_classes)


def bilinear_window(image: np.ndarray, scaled: tuple[int, int], top: int, left: int, size: tuple[int, int]
                    ) -> np.ndarray:
    """Rows [top, top + size[0]) and columns [left, left + size[1]) of `image` bilinearly resized to `scaled`, as
    float32: tf.image.resize(image, scaled, "bilinear") (half-pixel centres, no antialias) with its float32
    arithmetic, computing only the window."""
    (y0, y1, wy), (x0, x1, wx) = (_bilinear_weights(top, size[0], image.shape[0], scaled[0]),
                                  _bilinear_weights(left, size[1], image.shape[1], scaled[1]))
    # Columns first, as TF: left + (right - left) * wx on the source rows the window needs (about size[0] / scale
    # of them), then rows: upper + (lower - upper) * wy. In place, with gathers along the first axis (fast).
    rows = image[y0[0]:y1[-1] + 1, x0[0]:x1[-1] + 1].astype(np.float32)  # the source pixels the window reads
    right = np.take(rows, x1 - x0[0], axis=1)
    across = np.take(rows, x0 - x0[0], axis=1)  # (r, w, 3): left, then the columns' interpolation
    right -= across
    right *= wx[None, :, None]
    across += right
    lower = np.take(across, y1 - y0[0], axis=0)
    upper = np.take(across, y0 - y0[0], axis=0)
    lower -= upper
    lower *= wy[:, None, None]
    lower += upper
    return lower


def _bilinear_weights(start: int, length: int, in_size: int, out_size: int):
    """(lower index, upper index, weight of the upper) of output pixels [start, start + length), float32 like TF."""
    scale = np.float32(in_size) / np.float32(out_size)
    centres = (np.arange(start, start + length, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(centres)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(centres), in_size - 1).astype(np.int64)
    return lower, upper, (centres - floor).astype(np.float32)


def nearest_indices(start: int, length: int, in_size: int, out_size: int) -> np.ndarray:
    """Source indices of output pixels [start, start + length) when resizing in_size -> out_size by nearest, with
    the float32 arithmetic of TF's half-pixel-centre ResizeNearestNeighbor (what tf.image.resize uses)."""
    scale = np.float32(in_size) / np.float32(out_size)
    centres = np.arange(start, start + length, dtype=np.float32) + np.float32(0.5)
    return np.minimum(np.floor(centres * scale).astype(np.int64), in_size - 1)


def _offset(u: np.float32, slack: int) -> int:
    """Uniform integer in [0, max(slack, 0)] from u in [0, 1)."""
    slack = max(slack, 0)
    return min(int(u * np.float32(slack + 1)), slack)


def write_padded(image: np.ndarray, label: np.ndarray, image_row: np.ndarray, label_row: np.ndarray,
                 normalization: str) -> None:
    """A batch row: the image normalised into the top-left of `image_row`, 0 (the mean pixel) right and below; the
    label into `label_row`, 255 right and below."""
    height, width = label.shape[:2]
    normalize(image, normalization, out=image_row[:height, :width])
    label_row[:height, :width] = label
    image_row[height:], image_row[:height, width:] = 0.0, 0.0
    label_row[height:], label_row[:height, width:] = IGNORE_LABEL, IGNORE_LABEL


def augment(image: np.ndarray, label: np.ndarray, *, u: np.ndarray, crop_size: tuple[int, int],
            scale_range: tuple[float, float] | None, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """One training example's window: random scale, random crop (at most crop_size: smaller images stay smaller,
    write_padded pads them), flip.

    image uint8 (H, W, 3), label uint8 (H, W) or (H, W, heads) -> image float32 (scaled) or uint8, label uint8.
    u: four uniforms in [0, 1) (scale, crop y, crop x, flip). The image is resized bilinearly (only the crop is
    computed), the label by nearest.
    """
    size = label.shape[:2]
    if scale_range is not None:
        low = np.float32(scale_range[0])
        scale = low + u[0] * np.float32(scale_range[1] - scale_range[0])
        scaled = tuple(max(int(np.round(np.float32(n) * scale)), 1) for n in size)
    else:
        scaled = size
    top, left = _offset(u[1], scaled[0] - crop_size[0]), _offset(u[2], scaled[1] - crop_size[1])
    window = (min(crop_size[0], scaled[0] - top), min(crop_size[1], scaled[1] - left))
    if scale_range is not None:
        image = bilinear_window(image, scaled, top, left, window)
    else:
        image = image[top:top + window[0], left:left + window[1]]
    rows = nearest_indices(top, window[0], size[0], scaled[0])
    cols = nearest_indices(left, window[1], size[1], scaled[1])
    label = label[rows][:, cols]
    if flip and u[3] < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return image, label


def train_batches(source: Sequence[dict], *, global_batch_size: int, crop_size: tuple[int, int], seed: int,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  scale_range: tuple[float, float] | None = (0.5, 2.0), flip: bool = True,
                  normalization: str = "caffe_bgr", num_steps: int | None = None,
                  num_classes: int | tuple[int, ...] = VOC_NUM_CLASSES, workers: int | None = None
                  ) -> Iterator[dict]:
    """Host-local batches {'image': float32 (B/P, h, w, 3), 'label': int32 (B/P, h, w)} for steps start_step + 1 ..
    num_steps (None: without end)."""
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
    check_normalization(normalization)
    _check_workers(workers)

    dims = label_dims(num_classes)

    def new_batch() -> dict:
        return {"image": np.empty((local_batch, *crop_size, 3), np.float32),
                "label": np.empty((local_batch, *crop_size, *dims), np.int32)}

    def element(position: int, batch: dict, row: int) -> None:
        k = stream_index(position, global_batch_size=global_batch_size, process_index=process_index,
                         process_count=process_count)
        index = stream_random.shuffled_index(k, num_examples=num_examples, seed=seed)
        image, label, _ = read_example(source, index, num_classes)
        image, label = augment(image, label, u=stream_random.uniform(seed, k), crop_size=crop_size,
                               scale_range=scale_range, flip=flip)
        write_padded(image, label, batch["image"][row], batch["label"][row], normalization)

    stop = None if num_steps is None else max(num_steps, start_step) * local_batch
    positions = itertools.count(start_step * local_batch) if stop is None else range(start_step * local_batch, stop)
    return _ordered_batches(element, positions, local_batch, new_batch, workers)


def eval_pad_size(source: Sequence[dict]) -> tuple[int, int]:
    """Smallest multiple of 32 covering every image of the split (one pass over the source)."""
    _num_examples(source)  # an empty split is an error, not an empty max
    shapes = np.array(image_sizes(source))
    return tuple(int(-(-n // EVAL_PAD_MULTIPLE) * EVAL_PAD_MULTIPLE) for n in shapes.max(axis=0))


def oversized_image(source: Sequence[dict], pad_size: tuple[int, int]) -> str | None:
    """'<id> (HxW)' of the first image larger than pad_size, None if all fit: checked before training starts."""
    for index, (height, width) in enumerate(image_sizes(source)):
        if height > pad_size[0] or width > pad_size[1]:
            return f"{source[index]['id']} ({height}x{width})"
    return None


def eval_batches(source: Sequence[dict], *, batch_size: int, pad_size: tuple[int, int] | None = None,
                 normalization: str = "caffe_bgr", process_index: int = 0, process_count: int = 1,
                 num_classes: int | tuple[int, ...] = VOC_NUM_CLASSES, workers: int | None = None
                 ) -> Iterator[dict]:
    """Every example once, whole, padded to `pad_size`; `batch_size` is per process.

    Yields {'image': float32 (b, H, W, 3), 'label': int32 (b, H, W), 'id': bytes (b,), 'height', 'width': int32 (b,)}.
    Global batch t is elements [t*b*P, (t+1)*b*P), process p takes its p-th b of them; the tail of the last batch
    is dummies (label all 255, image 0, id b"", height = width = 0), so every process yields the same batches.
    """
    _check_process(process_index, process_count)
    if batch_size <= 0:
        raise ValueError(f"eval batch_size must be positive, got {batch_size}")
    num_examples = _num_examples(source)
    pad_size = eval_pad_size(source) if pad_size is None else (int(pad_size[0]), int(pad_size[1]))
    check_normalization(normalization)
    _check_workers(workers)
    num_batches = -(-num_examples // (batch_size * process_count))
    dims = label_dims(num_classes)

    def new_batch() -> dict:
        return {"image": np.empty((batch_size, *pad_size, 3), np.float32),
                "label": np.empty((batch_size, *pad_size, *dims), np.int32),
                "id": np.full(batch_size, b"", object), "height": np.zeros(batch_size, np.int32),
                "width": np.zeros(batch_size, np.int32)}

    def element(position: int, batch: dict, row: int) -> None:
        k = stream_index(position, global_batch_size=batch_size * process_count, process_index=process_index,
                         process_count=process_count)
        if k >= num_examples:  # a dummy: all padding, id b"", size 0 x 0
            batch["image"][row], batch["label"][row] = 0.0, IGNORE_LABEL
            return
        image, label, example_id = read_example(source, k, num_classes)
        if image.shape[0] > pad_size[0] or image.shape[1] > pad_size[1]:
            raise ValueError(f"example {example_id.decode(errors='replace')!r}: image {image.shape[0]}x"
                             f"{image.shape[1]} is larger than pad_size {pad_size[0]}x{pad_size[1]}")
        write_padded(image, label, batch["image"][row], batch["label"][row], normalization)
        batch["id"][row], (batch["height"][row], batch["width"][row]) = example_id, label.shape[:2]

    return _ordered_batches(element, range(num_batches * batch_size), batch_size, new_batch, workers)


def _ordered_batches(element: Callable[[int, dict, int], None], positions, batch_size: int,
                     new_batch: Callable[[], dict], workers: int | None) -> Iterator[dict]:
    """Batches of new_batch() whose row r element(position, batch, r) writes, for every batch_size positions, in
    order; a pool of threads works at most PREFETCH_BATCHES + 1 batches ahead. The arguments were checked by the
    caller: what the iterator raises is a read's error (a bad example's ValueError, a file's OSError), when its batch
    is taken. The pool stops when the consumer does (pending work is cancelled), so no thread outlives the iterator."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers if workers else default_workers(),
                                                 thread_name_prefix="fcn_jax-input")
    pending = collections.deque()  # (batch, its rows' futures)
    positions = iter(positions)
    try:
        while True:
            while len(pending) <= PREFETCH_BATCHES:
                chunk = list(itertools.islice(positions, batch_size))
                if len(chunk) < batch_size:
                    break
                batch = new_batch()
                pending.append((batch, [pool.submit(element, p, batch, row) for row, p in enumerate(chunk)]))
            if not pending:
                return
            batch, futures = pending.popleft()
            for future in futures:
                future.result()
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise ValueError(f"reader threads must be >= 1 (None: the host's cores), got {workers}")


def _check_process(process_index: int, process_count: int) -> None:
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")


def _num_examples(source: Sequence[dict]) -> int:
    if len(source) == 0:
        raise ValueError("the source is empty")
    return len(source)
