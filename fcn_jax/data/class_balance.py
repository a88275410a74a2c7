"""Class imbalance: what a split's labels hold of each class, and class weights for the loss from it.

A rare class (a small foreground, a thin structure) contributes few pixels to a cross entropy averaged over pixels,
so the net can ignore it at little cost. Weighting each pixel's loss by its class counters that:
  - median frequency balancing (Eigen & Fergus 2015, SegNet): freq(c) = pixels of c / pixels of the images that
    contain c; weight(c) = median over classes of freq / freq(c);
  - inverse square root: weight(c) = 1 / sqrt(share of c among labelled pixels), scaled so that the average weight
    of a labelled pixel is 1 (the loss keeps its scale).
A class without a labelled pixel gets weight 1 (no pixel carries it). The weights go to core.losses.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from fcn_jax.core.constants import IGNORE_LABEL

METHODS = ("none", "median_frequency", "inverse_sqrt")


@dataclasses.dataclass
class LabelCounts:
    """One head's label statistics over a split."""

    pixels: np.ndarray        # (K,) labelled pixels of each class
    images: np.ndarray        # (K,) images containing the class
    image_pixels: np.ndarray  # (K,) labelled pixels of the images containing the class
    ignored: int = 0          # pixels with the ignore label
    num_images: int = 0

    @classmethod
    def zeros(cls, num_classes: int) -> LabelCounts:
        return cls(*(np.zeros(num_classes, np.int64) for _ in range(3)))

    def add(self, label: np.ndarray) -> None:
        """Count one image's (H, W) label map."""
        k = len(self.pixels)
        counts = np.bincount(np.asarray(label, np.int64).ravel(), minlength=256)
        pixels = counts[:k]
        present = pixels > 0
        self.pixels += pixels
        self.images += present
        self.image_pixels += present * pixels.sum()
        self.ignored += int(counts[IGNORE_LABEL])
        self.num_images += 1

    def to_json(self) -> dict:
        return {"pixels": self.pixels.tolist(), "images": self.images.tolist(),
                "image_pixels": self.image_pixels.tolist(), "ignored": self.ignored, "num_images": self.num_images}

    @classmethod
    def from_json(cls, value: dict) -> LabelCounts:
        return cls(*(np.asarray(value[key], np.int64) for key in ("pixels", "images", "image_pixels")),
                   ignored=int(value["ignored"]), num_images=int(value["num_images"]))


def count_labels(labels: Iterable[np.ndarray], head_classes: tuple[int, ...]) -> list[LabelCounts]:
    """LabelCounts of each head over label maps, (H, W) for one head or (H, W, heads)."""
    counts = [LabelCounts.zeros(k) for k in head_classes]
    for label in labels:
        label = np.asarray(label).reshape(*np.shape(label)[:2], len(head_classes))
        for head, head_counts in enumerate(counts):
            head_counts.add(label[..., head])
    return counts


def count_source(source, head_classes: tuple[int, ...], desc: str, progress: bool = False) -> list[LabelCounts]:
    """count_labels over every example's label of a source (data.examples), with a progress bar."""
    from tqdm import tqdm

    indices = tqdm(range(len(source)), desc=desc, unit="image", disable=not progress, leave=False)
    return count_labels((source[i]["label"] for i in indices), head_classes)


def median_frequency(counts: LabelCounts) -> np.ndarray:
    """(K,) median frequency balancing weights; 1 for a class without pixels."""
    present = counts.pixels > 0
    if not present.any():
        return np.ones(len(counts.pixels))
    freq = counts.pixels[present] / counts.image_pixels[present]
    weights = np.ones(len(counts.pixels))
    weights[present] = np.median(freq) / freq
    return weights


def inverse_sqrt(counts: LabelCounts) -> np.ndarray:
    """(K,) 1 / sqrt(class share), scaled so that sum(share * weight) = 1; 1 for a class without pixels."""
    present = counts.pixels > 0
    if not present.any():
        return np.ones(len(counts.pixels))
    share = counts.pixels[present] / counts.pixels.sum()
    weights = np.ones(len(counts.pixels))
    weights[present] = 1 / np.sqrt(share) / np.sqrt(share).sum()
    return weights


def parse(spec: str, head_classes: tuple[int, ...]) -> str | tuple[tuple[float, ...], ...]:
    """config.loss.class_weights: a METHODS name, or explicit weights, comma-separated, one group a head separated
    by ';' ("1,10" or "1,10;1,1,2"). Raises ValueError in one line for anything else."""
    spec = spec.strip()
    if spec in METHODS:
        return spec
    groups = spec.split(";")
    try:
        weights = tuple(tuple(float(w) for w in group.split(",")) for group in groups)
    except ValueError:
        raise ValueError(f"config.loss.class_weights={spec!r}: expected one of {', '.join(METHODS)} or numbers "
                         "(\"1,10\"; heads separated by ';')") from None
    if tuple(len(w) for w in weights) != tuple(head_classes):
        raise ValueError(f"config.loss.class_weights={spec!r}: {[len(w) for w in weights]} weights per head for "
                         f"{list(head_classes)} classes")
    if any(not np.isfinite(w) or w < 0 for group in weights for w in group):
        raise ValueError(f"config.loss.class_weights={spec!r}: weights must be finite and >= 0")
    return weights


def class_weights(method: str, counts: list[LabelCounts]) -> tuple[tuple[float, ...], ...]:
    """Each head's weights by a METHODS name; () for "none"."""
    if method == "none":
        return ()
    compute = {"median_frequency": median_frequency, "inverse_sqrt": inverse_sqrt}[method]
    return tuple(tuple(float(w) for w in compute(c)) for c in counts)
