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


def normalize(image: np.ndarray, mode: str, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 network input; 0 afterwards means 'mean pixel' (what padding uses).

    out: a float32 array of image's shape to write into (the input pipeline's batch rows), else a new one.
    """
    if out is None:
        out = np.empty(image.shape, np.float32)
    if check_normalization(mode) == "caffe_bgr":
        return np.subtract(image[..., ::-1], np.asarray(CAFFE_BGR_MEAN, np.float32), out=out, dtype=np.float32)
    np.divide(image, np.float32(255.0), out=out, dtype=np.float32)
    out -= np.asarray(IMAGENET_MEAN, np.float32)
    out /= np.asarray(IMAGENET_STD, np.float32)
    return out


def affine(mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(A, c) with network input x = A @ rgb + c for an RGB pixel in 0..255 (float64)."""
    if check_normalization(mode) == "caffe_bgr":
        return np.eye(3)[::-1], -np.asarray(CAFFE_BGR_MEAN)
    std = np.asarray(IMAGENET_STD)
    return np.diag(1 / (255 * std)), -np.asarray(IMAGENET_MEAN) / std
