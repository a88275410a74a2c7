"""Examples and the sources that hold them: the contract between the data and everything that reads it.

An example is {'image': uint8 (H, W, 3) RGB, 'label': uint8 (H, W) class ids, 255 = ignore ((H, W, heads), one map a
head, for a multi-head dataset), 'id': str}. A source is any random-access sequence of examples (len(), source[i]):
a Python list, a prepared tfds split (`SplitSource`), or a folder of images with a folder of labels
(`FolderSource`). Decoding is the source's job; `check_example` checks what a reader gets.
"""
from __future__ import annotations

import collections.abc
import os
import pathlib
from typing import Iterator

import numpy as np

from fcn_jax.core.constants import IGNORE_LABEL, VOC_NUM_CLASSES
from fcn_jax.data import dataset_info, image_io, layouts


def head_counts(num_classes: int | tuple[int, ...]) -> tuple[int, ...]:
    """The class count of each score head: one count, or a sequence of them."""
    return (int(num_classes),) if isinstance(num_classes, (int, np.integer)) else tuple(num_classes)


def label_dims(num_classes: int | tuple[int, ...]) -> tuple[int, ...]:
    """A label's dims after (H, W): none for one head, (heads,) for several (one map a head)."""
    counts = head_counts(num_classes)
    return (len(counts),) if len(counts) > 1 else ()


def check_example(example: dict, num_classes: int | tuple[int, ...] = VOC_NUM_CLASSES
                  ) -> tuple[np.ndarray, np.ndarray, bytes]:
    """A source's example as (image, label, id), checked: a bad one fails here with its id, not deep in training.

    num_classes: one count, or a count per score head, whose labels are then (H, W, heads), one map a head.
    """
    counts = head_counts(num_classes)
    image, label, example_id = example["image"], example["label"], example["id"]
    example_id = example_id if isinstance(example_id, bytes) else str(example_id).encode()
    name = example_id.decode(errors="replace")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"example {name!r}: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    shape = image.shape[:2] + label_dims(counts)
    if label.dtype != np.uint8 or label.shape != shape:
        raise ValueError(f"example {name!r}: label must be uint8 {shape} like its image, "
                         f"got {label.dtype} {label.shape}")
    for head, count in enumerate(counts):
        values = label if len(counts) == 1 else label[..., head]
        bad = (values >= count) & (values != IGNORE_LABEL)
        if bad.any():
            raise ValueError(f"example {name!r}: label values {np.unique(values[bad]).tolist()} "
                             f"outside 0..{count - 1} and {IGNORE_LABEL}" + (f" (head {head})" if head else ""))
    return image, label, example_id


def checked_examples(source, head_classes: tuple[int, ...]) -> Iterator[tuple[np.ndarray, np.ndarray, bytes]]:
    """check_example of every example of `source`, in order (labels (H, W, heads) when there are several heads)."""
    num_classes = head_classes if len(head_classes) > 1 else head_classes[0]
    return (check_example(source[i], num_classes) for i in range(len(source)))


def image_sizes(source) -> list[tuple[int, int]]:
    """(H, W) of every image of a source (input_pipeline's contract): its sizes() where it reads them from file
    headers, else from the decoded images (one pass)."""
    if hasattr(source, "sizes"):
        return source.sizes()
    return [tuple(source[i]["image"].shape[:2]) for i in range(len(source))]


class SplitSource(collections.abc.Sequence):
    """A prepared split as the data contract's source: label (H, W) uint8 ((H, W, heads) for several), id str."""

    def __init__(self, data_source):
        self._source = data_source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        example = self._source[range(len(self))[index]]
        return {
            "image": example["image"],
            "label": example["label"][:, :, 0] if example["label"].shape[2] == 1 else example["label"],
            "id": example["id"].decode() if isinstance(example["id"], bytes) else example["id"],
        }


class FolderSource(collections.abc.Sequence):
    """Images of a folder with their labels `<labels_dir>/<stem>.png` (data.layouts.folder_pairs), decoded as `info`
    says.

    Every pair is checked when the source is made (label present, same size, from the file headers), so a bad
    folder fails before anything is compiled; pixels are decoded on access.
    """

    def __init__(self, images_dir: str, labels_dir: str, info: dataset_info.DatasetInfo):
        self.heads = (("", info),)
        for flag, directory in (("--images", images_dir), ("--labels", labels_dir)):
            if not os.path.isdir(directory):
                raise FileNotFoundError(f"{flag} folder {directory} does not exist")
        self.files = layouts.folder_pairs(pathlib.Path(images_dir), pathlib.Path(labels_dir))
        if not self.files:
            raise ValueError(f"input folder {images_dir} holds no images ({', '.join(image_io.IMAGE_EXTENSIONS)})")
        self._sizes = []
        for files in self.files:
            if not files.label.is_file():
                raise FileNotFoundError(f"no label {files.label} for image {files.image}")
            image_size, label_size = image_io.image_size(str(files.image)), image_io.image_size(str(files.label))
            if image_size != label_size:
                raise ValueError(f"label {files.label} is {label_size[0]}x{label_size[1]} but image {files.image} "
                                 f"is {image_size[0]}x{image_size[1]}")
            self._sizes.append(image_size)

    def sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image, from the headers read when the source was made."""
        return list(self._sizes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        files = self.files[index]
        image = image_io.read_rgb(str(files.image))
        return {"image": image, "label": layouts.read_labels(files, self.heads, image.shape[:2])[..., 0],
                "id": files.image_id}
