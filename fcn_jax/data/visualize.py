"""The PASCAL VOC palette, palette PNGs and colour overlays.

One place for the colours, so labels written by the synthetic dataset, masks
saved during evaluation and the predict CLI all agree with the VOC devkit.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from fcn_jax.core.constants import IGNORE_LABEL


def voc_palette() -> np.ndarray:
    """(256, 3) uint8: the devkit's bit-interleaved colour map; 255 (ignore) is (224, 224, 192)."""
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        c, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


def mask_to_image(mask: np.ndarray, palette: np.ndarray | None = None) -> Image.Image:
    """(H, W) integer class ids -> palette ('P' mode) image whose indices are the ids, as in VOC.

    palette: (256, 3) uint8 colours (a dataset's DatasetInfo.palette()); default VOC's."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask values must lie in 0..255, got {mask.min()}..{mask.max()}")
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette((voc_palette() if palette is None else palette).reshape(-1).tolist())
    return image


def save_mask(mask: np.ndarray, path, palette: np.ndarray | None = None) -> None:
    mask_to_image(mask, palette).save(path)


def colorize(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8 RGB."""
    return (voc_palette() if palette is None else palette)[np.asarray(mask).astype(np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, palette: np.ndarray | None = None,
            background: int | None = 0) -> np.ndarray:
    """Blend the coloured mask over an RGB uint8 image; the `background` class and ignore (255) stay unblended."""
    image = np.asarray(image)
    if image.shape[:2] != np.asarray(mask).shape:
        raise ValueError(f"image {image.shape[:2]} and mask {np.asarray(mask).shape} differ in size")
    colours = colorize(mask, palette).astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colours
    foreground = ((mask != background) & (mask != IGNORE_LABEL))[..., None]
    return np.where(foreground, blend, image).round().astype(np.uint8)
