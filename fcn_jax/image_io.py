"""Image and label files: finding, decoding and checking them (PIL and NumPy only, no TensorFlow).

One place for what every reader needs (the tfds builder, evaluate on folders, predict, the pipeline),
so a bad file gets the same one-line error naming it wherever it is read.
"""
from __future__ import annotations

import io
import os
import pathlib
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps

from fcn_jax.constants import IGNORE_LABEL, VOC_NUM_CLASSES
from fcn_jax.visualize import voc_palette

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VOC_PALETTE = voc_palette()  # the devkit colour map


class BadExampleError(ValueError):
    """One example on disk is unusable; the message names the file."""


# ----------------------------------------------------------------------------- images


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
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ValueError(f"cannot read image {path}: the file is empty (0 bytes)")
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB as the image is displayed, fully decoded (a truncated file fails here, naming it)."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ValueError(f"cannot read image {path}: the file is empty (0 bytes)")
    try:
        with Image.open(path) as image:
            return to_rgb(image, path)
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def is_upright(image: Image.Image) -> bool:
    """True unless the EXIF orientation tag asks viewers to rotate or mirror the stored pixels."""
    return image.getexif().get(0x0112, 1) == 1


def to_rgb(image: Image.Image, path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded PIL image: EXIF orientation applied (pixels as displayed, so masks line
    up with what users see), 16-bit greyscale scaled to 8 bits (PIL's own convert would clip it to white)."""
    if not is_upright(image):
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"cannot read image {path}: {image.mode} pixel values outside 0..65535")
        grey = np.round(values / 257.0).astype(np.uint8) if image.mode != "I" or values.max() > 255 else \
            values.astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "F":
        raise ValueError(f"cannot read image {path}: floating-point ('F') images are not photos; save it as "
                         "8-bit RGB")
    return np.asarray(image.convert("RGB"))


def decode(data: bytes, path: pathlib.Path) -> Image.Image:
    """Decodes fully, so truncated files fail here, not in training; a decompression bomb is a bad example too."""
    if not data:
        raise BadExampleError(f"{path}: the file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadExampleError(f"{path}: cannot decode image ({e})") from e
    return image


# ----------------------------------------------------------------------------- labels


def check_label_values(label: np.ndarray, path, num_classes: int = VOC_NUM_CLASSES) -> np.ndarray:
    """The label as uint8, if every value is a class id or the ignore label."""
    values = np.unique(label)
    bad = values[(values < 0) | ((values >= num_classes) & (values != IGNORE_LABEL))]
    if bad.size:
        raise BadExampleError(f"{path}: label values {bad.tolist()} outside 0..{num_classes - 1} and {IGNORE_LABEL}")
    return label.astype(np.uint8)


def read_voc_label(path: pathlib.Path) -> np.ndarray:
    """(H, W) uint8 class ids: the raw palette indices of a VOC label PNG."""
    path = pathlib.Path(path)
    image = decode(path.read_bytes(), path)
    if image.mode != "P":
        hint = (" (colours, not class ids: map each colour to its index in the VOC palette and save as a palette "
                "PNG)" if image.mode in ("RGB", "RGBA") else "")
        raise BadExampleError(f"{path}: label PNG has mode {image.mode!r}, expected a palette ('P') PNG "
                              f"whose indices are VOC class ids{hint}")
    label = np.asarray(image, np.uint8)
    palette = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)
    used = np.unique(label)
    known = used[used < len(palette)]
    wrong = np.setdiff1d(used, known[(palette[known] == VOC_PALETTE[known]).all(axis=1)])
    if wrong.size:
        raise BadExampleError(f"{path}: palette colours of indices {wrong.tolist()} differ from the VOC palette,"
                              " so the indices may not be class ids")
    return check_label_values(label, path)


def check_example(example: dict, num_classes: int = VOC_NUM_CLASSES) -> tuple[np.ndarray, np.ndarray, bytes]:
    """A source's example as (image, label, id), checked: a bad one fails here with its id, not deep in training."""
    image, label, example_id = example["image"], example["label"], example["id"]
    example_id = example_id if isinstance(example_id, bytes) else str(example_id).encode()
    name = example_id.decode(errors="replace")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"example {name!r}: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if label.dtype != np.uint8 or label.shape != image.shape[:2]:
        raise ValueError(f"example {name!r}: label must be uint8 {image.shape[:2]} like its image, "
                         f"got {label.dtype} {label.shape}")
    bad = (label >= num_classes) & (label != IGNORE_LABEL)
    if bad.any():
        raise ValueError(f"example {name!r}: label values {np.unique(label[bad]).tolist()} "
                         f"outside 0..{num_classes - 1} and {IGNORE_LABEL}")
    return image, label, example_id
