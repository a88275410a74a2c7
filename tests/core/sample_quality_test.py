"""Tests for fcn_jax.core.sample_quality: scores against direct computations, and the ranking they exist for."""
import math

import numpy as np
import pytest

from fcn_jax.core import sample_quality


def test_self_confidence_and_softmin_against_direct_computation():
    probs = np.array([[[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]]], np.float32)  # (1, 3, 2)
    label = np.array([[0, 0, 255]])
    confidence = sample_quality.self_confidence(probs, label)
    np.testing.assert_allclose(confidence[0, :2], [0.7, 0.2])
    assert math.isnan(confidence[0, 2])
    w = np.exp(-np.array([0.7, 0.2]) / 0.1)
    expected = float((np.array([0.7, 0.2]) * w).sum() / w.sum())
    assert sample_quality.image_label_quality(probs, label) == pytest.approx(expected, rel=1e-6)
    assert math.isnan(sample_quality.image_label_quality(probs, np.full((1, 3), 255)))
    assert sample_quality.softmin([0.3, 0.3, 0.3]) == pytest.approx(0.3)
    assert sample_quality.softmin([0.1, 0.9], temperature=1e-3) == pytest.approx(0.1)  # -> the minimum


def test_uncertainty_entropy_and_margin():
    uniform = np.full((2, 2, 4), 0.25, np.float32)
    sure = np.zeros((2, 2, 4), np.float32)
    sure[..., 1] = 1.0
    for kind in sample_quality.UNCERTAINTIES:
        assert sample_quality.image_uncertainty(uniform, kind) == pytest.approx(1.0)
        assert sample_quality.image_uncertainty(sure, kind) == pytest.approx(0.0, abs=1e-6)
    p = np.array([[[0.6, 0.3, 0.1]]], np.float32)
    assert sample_quality.pixel_uncertainty(p, "margin")[0, 0] == pytest.approx(0.7)
    assert sample_quality.pixel_uncertainty(p, "entropy")[0, 0] == pytest.approx(
        -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1)) / math.log(3), rel=1e-5)
    with pytest.raises(ValueError, match="uncertainty 'bald': expected one of entropy, margin"):
        sample_quality.pixel_uncertainty(p, "bald")


def test_suspect_pixels_are_the_labelled_ones_the_model_gives_to_another_class():
    probs = np.array([[[0.9, 0.1], [0.45, 0.55], [0.1, 0.9]]], np.float32)
    label = np.array([[1, 0, 255]])
    np.testing.assert_array_equal(sample_quality.suspect_pixels(probs, label), [[True, True, False]])


def test_corrupted_labels_rank_first():
    """A model that segments squares well; the images whose label lost its square or gave it another class score
    lowest."""
    rng = np.random.default_rng(0)
    scores, corrupted = [], set(rng.choice(20, 4, replace=False).tolist())
    for i in range(20):
        truth = np.zeros((16, 16), np.int64)
        y, x = rng.integers(0, 8, 2)
        truth[y:y + 6, x:x + 6] = rng.integers(1, 3)
        logits = 4.0 * np.eye(3)[truth] + rng.normal(0, 1.0, (16, 16, 3))  # a good model: 4 logits ahead, noisy
        label = truth.copy()
        if i in corrupted:
            label[truth > 0] = 0 if i % 2 else 3 - truth[truth > 0]  # object left unlabelled, or another class
        scores.append(sample_quality.image_label_quality(sample_quality.softmax(logits), label))
    assert set(np.argsort(scores)[:4].tolist()) == corrupted
