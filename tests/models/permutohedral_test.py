"""models/permutohedral.py: lattice filtering against exact (brute-force) Gaussian filtering on tiny images, within
the error it states (docs/crf.md), and its exact invariants."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax.models import permutohedral

# The stated error: filtering values in [0, 1] normalised by the filtered ones (k v / k 1, what a CRF's mean field
# sees), against exp(-|f_i - f_j|^2 / 2) filtered exactly.
MAX_ERROR, MEAN_ERROR = 0.15, 0.01


def _features(seed, height, width, sxy, srgb=None):
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width]
    parts = [xs[..., None] / sxy, ys[..., None] / sxy]
    spans = [width / sxy, height / sxy]
    if srgb:
        image = np.where(xs[..., None] < width // 2, 40.0, 200.0) + rng.normal(0, 12, (height, width, 3))
        parts.append(np.clip(image, 0, 255) / srgb)
        spans += [255 / srgb] * 3
    return np.concatenate(parts, -1).reshape(height * width, -1).astype(np.float32), tuple(spans)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _build(features, capacity, words):
    found = permutohedral.keys(features, words=words)
    return permutohedral.build(found, capacity), found.count


def _lattice(features, spans, capacity=None, words=None):
    lattice, count = _build(jnp.asarray(features), capacity, words or permutohedral.code_words(spans))
    return lattice, int(count)


_filter = jax.jit(permutohedral.filter_values)


BILATERAL = (12, 15, 6.0, 13.0)  # (height, width, sxy, srgb): odd sizes, shared by the tests to compile once


@pytest.mark.parametrize("height,width,sxy,srgb", [(7, 9, 2.0, None), BILATERAL])
def test_normalised_filtering_matches_exact_filtering_within_the_stated_error(height, width, sxy, srgb):
    features, spans = _features(0, height, width, sxy, srgb)
    lattice, _ = _lattice(features, spans)
    values = np.random.default_rng(1).random((height * width, 4)).astype(np.float32)
    approx = np.asarray(_filter(lattice, jnp.asarray(values))
                        / _filter(lattice, jnp.ones((height * width, 1))))
    kernel = np.exp(-0.5 * ((features[:, None] - features[None]) ** 2).sum(-1))
    exact = kernel @ values / kernel.sum(1, keepdims=True)
    error = np.abs(approx - exact)
    assert error.max() < MAX_ERROR and error.mean() < MEAN_ERROR, (error.max(), error.mean())
    assert np.abs(approx - values).mean() > 5 * error.mean()  # it does filter: far from the identity


def test_filtering_is_linear_and_keeps_constants_after_normalisation():
    features, spans = _features(2, *BILATERAL)
    lattice, _ = _lattice(features, spans)
    rng = np.random.default_rng(3)
    u, v = rng.random((180, 2)).astype(np.float32), rng.random((180, 2)).astype(np.float32)
    k = lambda x: np.asarray(_filter(lattice, jnp.asarray(x)))  # noqa: E731
    np.testing.assert_allclose(k(2 * u + v), 2 * k(u) + k(v), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k(np.full((180, 1), 0.3)) / k(np.ones((180, 1))), 0.3, rtol=1e-6)


def test_a_capacity_of_the_counted_points_gives_the_same_filtering_as_the_static_capacity():
    features, spans = _features(4, *BILATERAL)
    full, count = _lattice(features, spans)
    assert full.neighbours.shape[-1] == 180 * 6 > count
    small, _ = _lattice(features, spans, capacity=count)
    values = jnp.asarray(np.random.default_rng(5).random((180, 4)).astype(np.float32))
    np.testing.assert_array_equal(_filter(full, values),
                                  _filter(small, values))


def test_vertices_and_weights_are_the_reference_simplex():
    features, spans = _features(6, 5, 7, 1.5, 9.0)
    found = permutohedral.keys(jnp.asarray(features))
    np.testing.assert_allclose(np.asarray(found.weights).sum(1), 1.0, rtol=1e-5)  # barycentric
    assert (np.asarray(found.weights) >= -1e-6).all()
    assert int(found.count) == len(np.unique(np.asarray(found.codes)))
    codes = np.asarray(found.unique)[0, :int(found.count)]
    assert (np.diff(codes) > 0).all()


def test_narrow_widths_take_two_code_words_with_the_same_filtering_and_too_narrow_ones_are_one_error():
    assert permutohedral.code_words((500 / 80, 375 / 80, 255 / 13, 255 / 13, 255 / 13)) == 1  # the usual widths
    assert permutohedral.code_words((500 / 67, 375 / 67, 255 / 3, 255 / 3, 255 / 3)) == 2  # DeepLab v2's
    with pytest.raises(ValueError, match="use larger kernel widths"):
        permutohedral.code_words((5000.0, 3750.0, 2550.0, 2550.0, 2550.0))
    features, spans = _features(11, *BILATERAL)
    one, _ = _lattice(features, spans, words=1)
    two, _ = _lattice(features, spans, words=2)
    values = jnp.asarray(np.random.default_rng(12).random((180, 4)).astype(np.float32))
    np.testing.assert_array_equal(_filter(one, values), _filter(two, values))


def test_padding_points_with_zero_weight_change_nothing():
    features, spans = _features(9, *BILATERAL)
    lattice, count = _lattice(features, spans)
    padded_features = np.concatenate([features, np.repeat(features[:1], 20, 0)])
    valid = np.arange(200) < 180
    found = jax.jit(permutohedral.keys)(jnp.asarray(padded_features), jnp.asarray(valid))
    assert int(found.count) == count
    values = np.random.default_rng(10).random((200, 4)).astype(np.float32)
    padded = _filter(jax.jit(permutohedral.build)(found), jnp.asarray(values))
    np.testing.assert_allclose(padded[:180], _filter(lattice, jnp.asarray(values[:180])), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(padded[180:], 0.0)


def test_a_build_compiles_once_per_shape():
    sizes = _build._cache_size()
    first, _ = _lattice(*_features(7, *BILATERAL))
    second, _ = _lattice(*_features(8, *BILATERAL))
    assert _build._cache_size() <= sizes + 1
    assert not np.array_equal(first.vertices, second.vertices)
