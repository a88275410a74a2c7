"""Seeded subsets of a training split: nested fractions (how many images a model needs: the learning curve) and
k folds (predictions on images a model did not train on: out-of-fold label checks).

Both come from one seeded permutation of the split's indices, so they are reproducible and consistent with each
other: the first round(f x N) images of the permutation form fraction f (fraction 1/8 lies inside 1/4, inside 1/2),
and fold i of k is every k-th image of it from the i-th on. config.data.train_fraction, .folds, .fold and
.subset_seed select them; the defaults keep the whole split.
"""
from __future__ import annotations

import collections.abc
from typing import Sequence

import numpy as np


def permutation(num_examples: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, num_examples]).permutation(num_examples)


def fraction_indices(num_examples: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the first max(1, round(fraction x N)) images of the seeded permutation."""
    check(fraction)
    count = max(1, round(fraction * num_examples))
    return np.sort(permutation(num_examples, seed)[:count])


def fold_indices(num_examples: int, folds: int, fold: int, seed: int) -> np.ndarray:
    """Sorted indices of fold `fold` of `folds` (every folds-th image of the seeded permutation)."""
    check(folds=folds, fold=fold, num_examples=num_examples)
    return np.sort(permutation(num_examples, seed)[fold::folds])


def check(fraction: float = 1.0, folds: int = 0, fold: int = 0, num_examples: int | None = None) -> None:
    """One-line ValueErrors for a subset no split has (num_examples None: before the split is read)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"config.data.train_fraction={fraction} must be in (0, 1]")
    if folds == 0:
        return
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"config.data.folds={folds}, config.data.fold={fold}: folds must be 0 (none) or >= 2, "
                         "fold in 0..folds-1")
    if num_examples is not None and num_examples < folds:
        raise ValueError(f"config.data.folds={folds} is more than the {num_examples} training images")


def train_indices(num_examples: int, *, fraction: float = 1.0, folds: int = 0, fold: int = 0,
                  seed: int = 0) -> np.ndarray | None:
    """The indices a run trains on: the fraction of the split, less fold `fold` where folds > 0; None for all."""
    check(fraction, folds, fold, num_examples)
    if fraction == 1 and folds == 0:
        return None
    keep = fraction_indices(num_examples, fraction, seed)
    if folds:
        keep = np.setdiff1d(keep, fold_indices(num_examples, folds, fold, seed))
    if not len(keep):
        raise ValueError(f"config.data.train_fraction={fraction} with fold {fold} of {folds} leaves no image of "
                         f"{num_examples} to train on")
    return keep


class Subset(collections.abc.Sequence):
    """The examples of `source` at `indices`, as a source."""

    def __init__(self, source: Sequence, indices):
        self._source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self._source[int(self.indices[range(len(self))[index]])]


def train_subset(source: Sequence, data) -> Sequence:
    """config.data's training subset of `source` (the source itself with the defaults)."""
    indices = train_indices(len(source), fraction=data.train_fraction, folds=data.folds, fold=data.fold,
                            seed=data.subset_seed)
    return source if indices is None else Subset(source, indices)
