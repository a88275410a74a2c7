"""What a model's class probabilities say about each sample: how likely its label is wrong, and how much an
unlabelled image would teach.

Label quality (cleanlab's segmentation scores, Lad & Mueller 2023): a labelled pixel's self-confidence is the
probability the model gives its label; an image's score is the softmin of its pixels' self-confidences, a mean
weighted towards the lowest, so a small wrongly labelled region lowers it while one uncertain border pixel
does not. Low scores first: the labels to look at. Only predictions of a model that did not train on the image say
this (out of fold): a model that trained on a wrong label has learned it.

Uncertainty (for choosing images to annotate): a pixel's entropy over the classes, divided by log K (0 = sure,
1 = uniform), or its margin uncertainty 1 - (p_top - p_second); an image's score is the mean over its pixels.
All functions take one image's (H, W, K) probabilities on the host (NumPy).
"""
from __future__ import annotations

import numpy as np

from fcn_jax.core.constants import IGNORE_LABEL

UNCERTAINTIES = ("entropy", "margin")
SOFTMIN_TEMPERATURE = 0.1  # cleanlab's default for the softmin over pixels


def softmax(logits: np.ndarray) -> np.ndarray:
    """(..., K) float32 probabilities of logits."""
    shifted = np.asarray(logits, np.float32) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


def self_confidence(probs: np.ndarray, label: np.ndarray, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """(H, W) probability of each pixel's label; NaN where the pixel is unlabelled."""
    labelled = label != ignore_label
    safe = np.where(labelled, label, 0).astype(np.int64)
    picked = np.take_along_axis(probs, safe[..., None], -1)[..., 0]
    return np.where(labelled, picked, np.nan)


def softmin(scores: np.ndarray, temperature: float = SOFTMIN_TEMPERATURE) -> float:
    """sum(s x softmax(-s / temperature)) over the finite entries; NaN with none."""
    s = np.asarray(scores, np.float64).ravel()
    s = s[np.isfinite(s)]
    if not s.size:
        return float("nan")
    weights = np.exp(-(s - s.min()) / temperature)
    return float(np.sum(s * weights) / np.sum(weights))


def image_label_quality(probs: np.ndarray, label: np.ndarray, ignore_label: int = IGNORE_LABEL) -> float:
    """An image's label quality in [0, 1] (lower: its label is more likely wrong); NaN without labelled pixels."""
    return softmin(self_confidence(probs, label, ignore_label))


def suspect_pixels(probs: np.ndarray, label: np.ndarray, threshold: float = 0.5,
                   ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """(H, W) bool: labelled pixels whose label the model finds less likely than `threshold` while it prefers
    another class (the regions a study draws over a suspect image)."""
    confidence = self_confidence(probs, label, ignore_label)
    return np.nan_to_num(confidence, nan=1.0) < np.minimum(threshold, probs.max(-1))


def pixel_uncertainty(probs: np.ndarray, kind: str = "entropy") -> np.ndarray:
    """(H, W) uncertainty in [0, 1] of each pixel: normalised entropy or 1 - margin."""
    if kind == "entropy":
        k = probs.shape[-1]
        entropy = -np.sum(probs * np.log(np.clip(probs, 1e-12, 1.0)), -1)
        return entropy / np.log(k) if k > 1 else np.zeros(probs.shape[:-1], np.float32)
    if kind == "margin":
        top2 = np.sort(probs, -1)[..., -2:] if probs.shape[-1] > 1 else np.concatenate(
            [np.zeros_like(probs), probs], -1)
        return 1.0 - (top2[..., 1] - top2[..., 0])
    raise ValueError(f"uncertainty {kind!r}: expected one of {', '.join(UNCERTAINTIES)}")


def image_uncertainty(probs: np.ndarray, kind: str = "entropy") -> float:
    return float(np.mean(pixel_uncertainty(probs, kind)))
