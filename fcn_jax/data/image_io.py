"""Image and label files: finding, decoding and checking them (PIL and NumPy only, no TensorFlow).

One place for what every reader needs (the tfds builders, folders of images, predict, the pipeline),
so a bad file gets the same one-line error naming it wherever it is read.
"""
from __future__ import annotations

import io
import os
import pathlib
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps

from fcn_jax.core.constants import IGNORE_LABEL, VOC_CLASSES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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
    """(height, width) as displayed (EXIF rotations swap them) from the file's header, or a one-line error."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ValueError(f"cannot read image {path}: the file is empty (0 bytes)")
    try:
        with Image.open(path) as image:
            turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # transpose, rotate 90/270, transverse
            return (image.width, image.height) if turned else (image.height, image.width)
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


def check_label_values(label: np.ndarray, path, classes: tuple[str, ...] = VOC_CLASSES) -> np.ndarray:
    """The label as uint8, if every value is a class id or the ignore label; else an error naming the file, the
    values and the classes it expected."""
    values = np.unique(label)
    bad = values[(values < 0) | ((values >= len(classes)) & (values != IGNORE_LABEL))]
    if bad.size:
        names = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
        raise BadExampleError(f"{path}: label values {bad.tolist()[:10]} are not classes: expected "
                              f"0..{len(classes) - 1} ({names}) or {IGNORE_LABEL} (ignore)")
    return label.astype(np.uint8)


def stored_image(path: pathlib.Path) -> tuple[bytes | np.ndarray, tuple[int, int]]:
    """What a tfds builder stores for an image file, and its (height, width).

    An upright RGB JPEG is stored as its own bytes (lossless, fast); anything else is converted to RGB as
    displayed (to_rgb) and encoded by tfds.
    """
    data = pathlib.Path(path).read_bytes()
    image = decode(data, path)
    if image.format == "JPEG" and image.mode == "RGB" and is_upright(image):
        return data, (image.height, image.width)
    try:
        rgb = to_rgb(image, path)
    except ValueError as error:
        raise BadExampleError(str(error)) from None
    return rgb, rgb.shape[:2]
