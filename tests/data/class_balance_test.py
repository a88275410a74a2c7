"""Tests for fcn_jax.data.class_balance: counts against a direct count, the weighting formulas, the spec parser."""
import numpy as np
import pytest

from fcn_jax.data import class_balance


def _labels(seed=0, k=4, n=6):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        label = rng.choice([0, 0, 0, 1, 2, 255], size=(rng.integers(3, 7), rng.integers(3, 7)))
        out.append(label.astype(np.uint8))
    return out, k  # class 3 never appears


def test_counts_equal_a_direct_count():
    labels, k = _labels()
    (counts,) = class_balance.count_labels(labels, (k,))
    for c in range(k):
        assert counts.pixels[c] == sum(int((y == c).sum()) for y in labels)
        assert counts.images[c] == sum(int((y == c).any()) for y in labels)
        assert counts.image_pixels[c] == sum(int((y != 255).sum()) for y in labels if (y == c).any())
    assert counts.ignored == sum(int((y == 255).sum()) for y in labels)
    assert counts.num_images == len(labels)
    assert class_balance.LabelCounts.from_json(counts.to_json()).to_json() == counts.to_json()


def test_multi_head_labels_are_counted_per_head():
    rng = np.random.default_rng(1)
    labels = [np.stack([rng.integers(0, 3, (4, 5)), rng.integers(0, 2, (4, 5))], -1) for _ in range(3)]
    a, b = class_balance.count_labels(labels, (3, 2))
    np.testing.assert_array_equal(a.pixels, np.bincount(np.concatenate([y[..., 0].ravel() for y in labels]), None, 3))
    np.testing.assert_array_equal(b.pixels, np.bincount(np.concatenate([y[..., 1].ravel() for y in labels]), None, 2))


def test_median_frequency_and_inverse_sqrt_follow_their_formulas():
    labels, k = _labels()
    (counts,) = class_balance.count_labels(labels, (k,))
    freq = counts.pixels[:3] / counts.image_pixels[:3]
    np.testing.assert_allclose(class_balance.median_frequency(counts), [*(np.median(freq) / freq), 1.0])
    share = counts.pixels[:3] / counts.pixels.sum()
    inverse = class_balance.inverse_sqrt(counts)
    np.testing.assert_allclose(inverse[:3] / inverse[0], np.sqrt(share[0] / share))
    assert inverse[3] == 1.0
    assert np.sum(share * inverse[:3]) == pytest.approx(1.0)  # a labelled pixel weighs 1 on average
    assert class_balance.class_weights("none", [counts]) == ()
    assert class_balance.class_weights("median_frequency", [counts]) == (tuple(class_balance.median_frequency(counts)),)


def test_a_rare_class_gets_the_larger_weight():
    labels = [np.array([[0] * 99 + [1]]), np.array([[0] * 100])]
    (counts,) = class_balance.count_labels(labels, (2,))
    for method in ("median_frequency", "inverse_sqrt"):
        (weights,) = class_balance.class_weights(method, [counts])
        assert weights[1] > 5 * weights[0], method


def test_parse():
    assert class_balance.parse(" median_frequency ", (3,)) == "median_frequency"
    assert class_balance.parse("1,10", (2,)) == ((1.0, 10.0),)
    assert class_balance.parse("1,10;1,1,2", (2, 3)) == ((1.0, 10.0), (1.0, 1.0, 2.0))


@pytest.mark.parametrize("spec,match", [
    ("median", "expected one of none, median_frequency, inverse_sqrt or numbers"),
    ("1,2,3", r"\[3\] weights per head for \[2\] classes"),
    ("1,-2", "finite and >= 0"),
    ("1,nan", "finite and >= 0"),
])
def test_parse_errors_are_one_line(spec, match):
    with pytest.raises(ValueError, match=match) as error:
        class_balance.parse(spec, (2,))
    assert "\n" not in str(error.value)
