"""Input normalisations: uint8 RGB pixels -> the network input the weights were trained on.

    caffe_bgr     BGR, 0..255 minus the Caffe mean: the reference FCN / VGG16 Caffe models, pytorch-fcn
    imagenet_rgb  RGB, (x / 255 - mean) / std: torchvision's VGG16 and ResNets
Both map the mean pixel to 0, which is what padding uses. The training input (data.input_pipeline) calls
`normalize`; weights.convert folds one normalisation into conv1_1 for the other (`affine`).
"""
from __future__ import annotations

import numpy as np

CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)  # B, G, R: the reference FCN/VGG16 Caffe mean
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # R, G, B on [0, 1] (torchvision)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("caffe_bgr", "imagenet_rgb")


def check_normalization(mode: str) -> str:
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {mode!r}; expected one of {', '.join(NORMALIZATIONS)}")
    return mode


def normalize(image, mode: str, out: np.ndarray | None = None):
    """uint8 RGB (..., 3) -> float32 network input; 0 afterwards means 'mean pixel' (what padding uses).

    Without `out`, one expression that works on NumPy and jax arrays alike (the exported models trace it); with
    `out` (a float32 NumPy array of image's shape: the input pipeline's batch rows), written in place channel by
    channel, strided 1-D loops several times faster than broadcasting over 3 channels, to the same values.
    """
    caffe = check_normalization(mode) == "caffe_bgr"
    if out is None:
        if caffe:
            return image[..., ::-1].astype(np.float32) - np.asarray(CAFFE_BGR_MEAN, np.float32)
        return ((image.astype(np.float32) / np.float32(255.0) - np.asarray(IMAGENET_MEAN, np.float32))
                / np.asarray(IMAGENET_STD, np.float32))
    for channel in range(3):
        source, target = image[..., 2 - channel if caffe else channel], out[..., channel]
        if caffe:
            np.subtract(source, np.float32(CAFFE_BGR_MEAN[channel]), out=target, dtype=np.float32)
        else:
            np.divide(source, np.float32(255.0), out=target, dtype=np.float32)
            target -= np.float32(IMAGENET_MEAN[channel])
            target /= np.float32(IMAGENET_STD[channel])
    return out


def affine(mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(A, c) with network input x = A @ rgb + c for an RGB pixel in 0..255 (float64)."""
    if check_normalization(mode) == "caffe_bgr":
        return np.eye(3)[::-1], -np.asarray(CAFFE_BGR_MEAN)
    std = np.asarray(IMAGENET_STD)
    return np.diag(1 / (255 * std)), -np.asarray(IMAGENET_MEAN) / std
