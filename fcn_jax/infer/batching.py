"""Host-side batching for inference: padded shapes, size buckets, grouping by shape, and a background prefetch.

Images are never resized: a batch holds images of one padded shape, each at the top-left of its row, padded
bottom/right (the mean pixel for images, the ignore label for labels), so padding is never scored.
"""
from __future__ import annotations

import collections
import queue
import threading
from typing import Any, Callable, Hashable, Iterable, Iterator

import numpy as np
from jax.sharding import Mesh

MAX_DISTINCT_SHAPES = 256  # bucket_shapes' merging works on at most this many padded sizes


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
    if max_shapes < 0:
        raise ValueError(f"buckets must be >= 0 (0: one shape per size), got {max_shapes}")
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
