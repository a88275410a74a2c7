"""Tests for fcn_jax.data.subsets: fractions nested and seeded, folds a partition, one-line errors."""
import numpy as np
import pytest

from fcn_jax.data import subsets


def test_fractions_are_nested_seeded_and_sized():
    n = 37
    nested = [subsets.fraction_indices(n, f, seed=3) for f in (1 / 8, 1 / 4, 1 / 2, 1.0)]
    assert [len(x) for x in nested] == [5, 9, 18, 37]  # round(f x 37), 4.625 -> 5
    for small, large in zip(nested, nested[1:]):
        assert set(small) <= set(large)
    np.testing.assert_array_equal(nested[1], subsets.fraction_indices(n, 1 / 4, seed=3))  # seeded
    assert set(subsets.fraction_indices(n, 1 / 4, seed=4)) != set(nested[1])
    assert len(subsets.fraction_indices(3, 0.01, seed=0)) == 1


def test_folds_partition_the_split_and_training_leaves_its_fold_out():
    n, k = 23, 4
    folds = [subsets.fold_indices(n, k, i, seed=1) for i in range(k)]
    np.testing.assert_array_equal(np.sort(np.concatenate(folds)), np.arange(n))
    assert sorted(map(len, folds)) == [5, 6, 6, 6]
    train = subsets.train_indices(n, folds=k, fold=2, seed=1)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, folds[2]])), np.arange(n))
    assert subsets.train_indices(n) is None


def test_subset_reads_the_source_at_its_indices():
    source = [{"id": str(i)} for i in range(10)]
    data = type("Data", (), dict(train_fraction=0.5, folds=0, fold=0, subset_seed=0))
    subset = subsets.train_subset(source, data)
    assert [x["id"] for x in subset] == [str(i) for i in subsets.fraction_indices(10, 0.5, 0)]
    assert subset[-1] == source[subset.indices[-1]]
    data.train_fraction = 1.0
    assert subsets.train_subset(source, data) is source


@pytest.mark.parametrize("kwargs,match", [
    (dict(fraction=0.0), r"config.data.train_fraction=0.0 must be in \(0, 1\]"),
    (dict(fraction=1.5), r"must be in \(0, 1\]"),
    (dict(folds=1), "folds must be 0 .none. or >= 2"),
    (dict(folds=3, fold=3), "fold in 0..folds-1"),
    (dict(folds=5, num_examples=4), "config.data.folds=5 is more than the 4 training images"),
])
def test_bad_subsets_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match):
        subsets.check(**kwargs)
