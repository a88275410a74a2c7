"""Gaussian filtering in a d-dimensional feature space on the permutohedral lattice (Adams, Baek, Davis 2010).

    found = keys(features)               # features (N, d): each pixel's position / colour divided by the widths
    lattice = build(found, capacity)     # capacity: lattice points to make room for (default: all N (d + 1))
    filter_values(lattice, values)       # (N, C) -> (N, C): sum_j k(f_i, f_j) values_j, k ~ exp(-|f_i - f_j|^2 / 2)
Each point is splatted onto the d + 1 vertices of its enclosing lattice simplex (barycentric weights), the lattice
is blurred with [1/2, 1, 1/2] along each of its d + 1 axes, and the points read back (slice): O(N d^2) instead of
the O(N^2) of exact filtering, with the approximation error tests/models/permutohedral_test.py states. The
arithmetic is the reference dense CRF's (Krähenbühl & Koltun's permutohedral.cpp, which pydensecrf wraps), so the
two agree to float rounding.

In XLA the hash table becomes sorting: each vertex key is packed into an int32 code (two int32 words for narrow
widths: code_words), the codes sorted and made unique (the lattice points), and blur neighbours found by binary
search. Shapes are static: N (d + 1) lattice
slots of which the first M are used, or a capacity read on the host from keys().count, so a build compiles once
per point count and capacity.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_SENTINEL = np.iinfo(np.int32).max  # the code of an unused lattice slot, above every real code


class Lattice(NamedTuple):
    """A built lattice: where each point's d + 1 vertices are, and each lattice point's blur neighbours."""
    vertices: jax.Array    # (N, d + 1) int32: lattice slot of each point's vertices
    weights: jax.Array     # (N, d + 1) float32: their barycentric weights
    neighbours: jax.Array  # (d + 1, 2, slots) int32: along each axis, the slot below / above; `slots` if absent


def _elevation(d: int) -> np.ndarray:
    """(d + 1, d): features -> the hyperplane x . 1 = 0 of R^(d+1), scaled so the blur is a unit-variance Gaussian."""
    inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
    scale = np.array([inv_std / math.sqrt((k + 1) * (k + 2)) for k in range(d)])
    matrix = np.zeros((d + 1, d))
    for j in range(d + 1):
        matrix[j, j:] = scale[j:]
        if j:
            matrix[j, j - 1] = -j * scale[j - 1]
    return matrix


def _code_radices(feature_ranges: Sequence[float]) -> tuple[int, ...]:
    """Bounds of the code's radices: the lattice rows each key coordinate can span over features whose spans
    (max - min) are `feature_ranges`, with margin for rounding and blur neighbours."""
    d = len(feature_ranges)
    spans = np.abs(_elevation(d)) @ np.asarray(feature_ranges, np.float64)
    return tuple(int(math.ceil(span / (d + 1))) + 8 for span in spans[:d])


def _groups(d: int, words: int) -> list[range]:
    """The key coordinates each int32 word of a code packs (the remainder goes into the last word)."""
    return [range(d)] if words == 1 else [range((d + 1) // 2), range((d + 1) // 2, d)]


def code_words(feature_ranges: Sequence[float]) -> int:
    """int32 words a lattice code needs over features spanning `feature_ranges` (per dimension, after dividing by
    the widths; static): 1 when the features' box is small, 2 for narrow widths (a slower sort and search), and a
    ValueError when even 2 would overflow: widths far below a pixel or a colour level."""
    d, radices = len(feature_ranges), _code_radices(feature_ranges)
    for words in (1, 2):
        sizes = [math.prod(radices[k] for k in group) for group in _groups(d, words)]
        sizes[-1] *= d + 1
        if max(sizes) < _SENTINEL:
            return words
    raise ValueError(f"the lattice over features spanning {[round(r, 1) for r in feature_ranges]} widths needs "
                     f"{(d + 1) * math.prod(radices):.3g} codes, beyond two int32 words: use larger kernel widths")


def _round_half_away(x: jax.Array) -> jax.Array:
    return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)  # C's round(), as the reference


def _simplex(features: jax.Array):
    """Each point's enclosing simplex: rem0 (N, d + 1) the nearest remainder-0 lattice point, rank (N, d + 1) the
    order of the point's coordinates relative to it, and the barycentric weights (N, d + 1)."""
    n, d = features.shape
    elevated = features @ jnp.asarray(_elevation(d).T, features.dtype)  # (N, d + 1)
    rounded = _round_half_away(elevated / (d + 1))
    rem0 = rounded * (d + 1)
    total = rounded.sum(-1, keepdims=True).astype(jnp.int32)
    diff = elevated - rem0
    i, j = np.arange(d + 1)[:, None], np.arange(d + 1)[None, :]
    greater = diff[:, None, :] > diff[:, :, None]        # [n, i, j]: diff_j > diff_i
    at_least = diff[:, None, :] >= diff[:, :, None]
    rank = (jnp.where(j > i, greater, False) | jnp.where(j < i, at_least, False)).sum(-1).astype(jnp.int32)
    rank = rank + total
    rem0 = jnp.where(rank < 0, rem0 + (d + 1), jnp.where(rank > d, rem0 - (d + 1), rem0))
    rank = jnp.where(rank < 0, rank + (d + 1), jnp.where(rank > d, rank - (d + 1), rank))
    v = (elevated - rem0) / (d + 1)
    slots = jnp.arange(d + 2)
    barycentric = (v[..., None] * ((slots == (d - rank)[..., None]).astype(v.dtype)
                                   - (slots == (d - rank + 1)[..., None]).astype(v.dtype))).sum(1)  # (N, d + 2)
    barycentric = barycentric.at[:, 0].add(1.0 + barycentric[:, d + 1])
    return rem0.astype(jnp.int32), rank, barycentric[:, :d + 1]


def _encode(remainder, rows, low, radices, words: int) -> jax.Array:
    """(words, ...) int32 code of the lattice key (remainder, rows): key coordinate k is remainder + (d + 1) row_k."""
    d = radices.shape[0]
    codes = []
    for group in _groups(d, words):
        code = jnp.zeros_like(remainder)
        for k in group:
            code = code * radices[k] + (rows[..., k] - low[k])
        codes.append(code)
    codes[-1] = codes[-1] * (d + 1) + remainder
    return jnp.stack(codes)


def _decode(codes, low, radices):
    d, words = radices.shape[0], codes.shape[0]
    remainder, rows = codes[-1] % (d + 1), [None] * d
    for word, group in enumerate(_groups(d, words)):
        rest = codes[word] // (d + 1) if word == words - 1 else codes[word]
        for k in reversed(group):
            rows[k] = rest % radices[k] + low[k]
            rest = rest // radices[k]
    return remainder, jnp.stack(rows, -1)


def _search(unique: jax.Array, query: jax.Array) -> jax.Array:
    """Index of each (words, ...) query code in the sorted (words, slots) codes, or where it would go."""
    if unique.shape[0] == 1:
        return jnp.searchsorted(unique[0], query[0], method="scan")
    first, second = unique
    low, high = jnp.zeros(query.shape[1:], jnp.int32), jnp.full(query.shape[1:], first.shape[0], jnp.int32)

    def halve(_, bounds):  # lower bound in lexicographic order of (first, second)
        low, high = bounds
        middle = (low + high) // 2
        less = (first[middle] < query[0]) | ((first[middle] == query[0]) & (second[middle] < query[1]))
        searching = low < high
        return jnp.where(searching & less, middle + 1, low), jnp.where(searching & ~less, middle, high)

    return jax.lax.fori_loop(0, int(first.shape[0]).bit_length(), halve, (low, high))[0]


class Keys(NamedTuple):
    """The first half of a build: every point's vertex codes and weights, and the lattice points' codes."""
    codes: jax.Array    # (words, N, d + 1) int32: the code of each point's vertices
    weights: jax.Array  # (N, d + 1) float32: their barycentric weights (0 for a point that is only padding)
    unique: jax.Array   # (words, N (d + 1)) int32: the lattice points' codes in order, then _SENTINEL
    low: jax.Array      # (d,) int32: the codes' origin ...
    radices: jax.Array  # (d,) int32: ... and radices (the rows each key coordinate spans, with margin)
    count: jax.Array    # () int32: the number of lattice points M


def keys(features: jax.Array, valid: jax.Array | None = None, words: int = 1) -> Keys:
    """Vertices of (N, d) float32 features; `words` (static): code_words of their spans. `valid`
    (N,) bool: False for padding points, which must repeat a real point's features (they add no lattice point) and
    get zero weights (they splat nothing), so padded point counts compile once."""
    n, d = features.shape
    rem0, rank, weights = _simplex(features)
    if valid is not None:
        weights = weights * valid[:, None].astype(weights.dtype)
    remainders = jnp.arange(d + 1, dtype=jnp.int32)
    # the vertex of remainder r: key_i = rem0_i + r - (d + 1) [rank_i > d - r], in rows of d + 1
    rows = rem0[:, None, :d] // (d + 1) - (rank[:, None, :d] > d - remainders[None, :, None]).astype(jnp.int32)
    low = rows.reshape(-1, d).min(0) - 2  # neighbours step one row either way
    radices = rows.reshape(-1, d).max(0) + 3 - low
    codes = _encode(jnp.broadcast_to(remainders, (n, d + 1)), rows, low, radices, words)
    flat = codes.reshape(words, -1)
    # a plain sort of one word: XLA:CPU sorts several operands several times slower
    ordered = jnp.sort(flat, axis=1) if words == 1 else jnp.stack(jax.lax.sort(tuple(flat), num_keys=words))
    first = jnp.concatenate([jnp.ones((1,), bool), (ordered[:, 1:] != ordered[:, :-1]).any(0)])
    slot_of_sorted = jnp.cumsum(first.astype(jnp.int32)) - 1
    unique = jnp.full(ordered.shape, _SENTINEL, jnp.int32).at[:, slot_of_sorted].set(ordered)
    return Keys(codes, weights.astype(features.dtype), unique, low, radices, slot_of_sorted[-1] + 1)


def build(found: Keys, capacity: int | None = None) -> Lattice:
    """The lattice of keys() with room for `capacity` lattice points (static; None: N (d + 1), always enough). A
    smaller capacity (keys().count rounded up, read on the host) makes every filtering proportionally cheaper;
    lattice points beyond it would be dropped, so it must be at least the count."""
    words, n, d1 = found.codes.shape
    d = d1 - 1
    capacity = min(capacity or n * d1, n * d1)
    unique = found.unique[:, :capacity]
    used = unique[0] != _SENTINEL
    remainder, key_rows = _decode(jnp.where(used, unique, 0), found.low, found.radices)
    # axis j < d: key + 1 - (d + 1) e_j; axis d: key + 1 (remainder d wraps to 0 one row up)
    wrap = (remainder == d).astype(jnp.int32)
    up_remainder, up_rows = jnp.where(wrap == 1, 0, remainder + 1), key_rows + wrap[:, None]
    neighbours = []
    for axis in range(d + 1):
        query = _encode(up_remainder, up_rows - (jnp.arange(d) == axis).astype(jnp.int32), found.low,
                        found.radices, words)
        found_at = jnp.clip(_search(unique, query), 0, capacity - 1)
        below = jnp.where(used & (unique[:, found_at] == query).all(0), found_at, capacity)  # the reference's n1
        above = jnp.full((capacity + 1,), capacity, jnp.int32).at[below].set(
            jnp.arange(capacity, dtype=jnp.int32))[:capacity]
        neighbours.append(jnp.stack([below, above]))
    at = jnp.clip(_search(unique, found.codes), 0, capacity - 1)
    vertices = jnp.where((unique[:, at] == found.codes).all(0), at, capacity)  # beyond the capacity: the zero row
    return Lattice(vertices.astype(jnp.int32), found.weights, jnp.stack(neighbours).astype(jnp.int32))


def filter_values(lattice: Lattice, values: jax.Array) -> jax.Array:
    """(N, C) values filtered: splat, blur along every axis, slice; unnormalised (the reference's scale).
    Gathers go one vertex column at a time: XLA:CPU runs those several times faster than one (N, d + 1) gather."""
    n, d1 = lattice.vertices.shape
    slots = lattice.neighbours.shape[-1]
    splat = jax.ops.segment_sum((lattice.weights.T[..., None] * values[None]).reshape(n * d1, -1),
                                lattice.vertices.T.reshape(-1), num_segments=slots + 1)  # the last row stays 0
    for axis in range(d1):
        below, above = lattice.neighbours[axis]
        blurred = splat[:slots] + 0.5 * (splat[below] + splat[above])
        splat = jnp.concatenate([blurred, jnp.zeros_like(splat[:1])])
    alpha = 1.0 / (1.0 + 2.0 ** -(d1 - 1))
    return alpha * sum(lattice.weights[:, k:k + 1] * splat[lattice.vertices[:, k]] for k in range(d1))
