"""Tests for fcn_jax.flows.learning_curve: the power-law fit recovers a known law; variants; one-line errors."""
import math

import numpy as np
import pytest

from fcn_jax.flows import ablation, learning_curve


def test_fit_recovers_an_exact_power_law_and_inverts_it():
    images = np.array([10, 20, 40, 80])
    mean_ious = 1 - 0.9 * images ** -0.5
    law = learning_curve.fit(images, mean_ious)
    assert math.exp(law.log_a) == pytest.approx(0.9) and law.b == pytest.approx(0.5)
    np.testing.assert_allclose(law.mean_iou(images), mean_ious)
    count, low, high = law.images_for(1 - 0.9 * 400 ** -0.5)
    assert count == pytest.approx(400)
    assert low == pytest.approx(400, rel=1e-6) and high == pytest.approx(400, rel=1e-6)  # no residual: no spread


def test_noisy_points_give_an_interval_around_the_count():
    rng = np.random.default_rng(0)
    images = np.array([12, 25, 50, 100, 200])
    mean_ious = 1 - 0.9 * images ** -0.4 * np.exp(rng.normal(0, 0.05, 5))
    law = learning_curve.fit(images, mean_ious)
    count, low, high = law.images_for(0.85)
    assert low < count < high
    assert learning_curve.fit(images[:2], mean_ious[:2]).images_for(0.85)[1] != learning_curve.fit(
        images[:2], mean_ious[:2]).images_for(0.85)[1]  # NaN: two points, no interval
    flat = learning_curve.fit([10, 20, 40], [0.5, 0.45, 0.4])  # falls with more images: b < 0
    assert flat.images_for(0.9)[0] == math.inf


@pytest.mark.parametrize("images,mean_ious,match", [
    ([10, 10], [0.5, 0.6], "at least two different numbers of images"),
    ([10, 20], [0.5, 1.0], "errors 1 - mean IU > 0 only"),
])
def test_bad_curves_are_one_line(images, mean_ious, match):
    with pytest.raises(ValueError, match=match):
        learning_curve.fit(images, mean_ious)


def test_parse_fractions():
    assert learning_curve.parse_fractions("1,0.25, 0.5") == (0.25, 0.5, 1.0)
    for bad, match in (("0,1", r"in \(0, 1\]"), ("0.5", "at least two"), ("a,b", "expected numbers")):
        with pytest.raises(ValueError, match=match):
            learning_curve.parse_fractions(bad)


def test_the_sweep_file_trains_each_fraction_with_the_same_recipe(tmp_path):
    base, overrides = ablation.load_sweep("experiments/learning_curve.py", num_steps=20)
    variants = ablation.build_variants(base, overrides, str(tmp_path))
    assert [name for name, _, _ in variants] == ["fraction_0.125", "fraction_0.25", "fraction_0.5", "fraction_1"]
    assert [c.data.train_fraction for _, _, c in variants] == [0.125, 0.25, 0.5, 1.0]
    assert {c.train.num_steps for _, _, c in variants} == {20}
