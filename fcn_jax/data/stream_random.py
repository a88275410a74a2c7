"""The training stream's two random draws, in NumPy, bit for bit TensorFlow's (CPU):

    shuffled_index(k, num_examples, seed)  which example stream element k is: element k % N of the epoch
                                           k // N's permutation, tf.random.experimental.index_shuffle(k % N,
                                           seed=[seed, epoch], max_index=N - 1)
    uniform(seed, k)                       element k's four augmentation uniforms (scale, crop y, crop x, flip),
                                           tf.random.stateless_uniform([4], seed=[seed, k]) in float32

So the stream the earlier tf.data pipeline gave stays the stream, with no TensorFlow in the process (but for
datasets of 4**n + 1 >= 65537 examples, where TF's index_shuffle is no permutation: it never gives max_index, which
this one does). They follow TensorFlow's sources: index_shuffle in python/ops/stateless_random_ops.py (the seed
padded to [498247692, s0, s1], 4 rounds) and core/kernels/random_index_shuffle.cc (a Simon block cipher on
max(16, even ceil(log2 N)) bits, cycle walking until the value is at most max_index); stateless_uniform through
StatelessRandomGetKeyCounter (core/kernels/stateless_random_ops.cc: one Philox call on the seed words under a fixed
key) and Philox4x32-10 (xla/tsl/lib/random/philox_random.h), 23 mantissa bits to a float in [0, 1).
"""
from __future__ import annotations

import functools
import math

import numpy as np

_MASK32 = np.uint64(0xFFFFFFFF)
_SEED_PAD = 498247692  # stateless_random_ops.index_shuffle pads the two seed words with it
_ROUNDS = 4  # index_shuffle's cipher rounds
_GET_KEY = (0x3EC8F720, 0x02461E29)  # the Philox key that turns a seed into (key, counter)


def shuffled_index(k: int, *, num_examples: int, seed: int) -> int:
    """Source index of stream element k: a fresh permutation of the source every epoch."""
    epoch, position = divmod(int(k), num_examples)
    return int(epoch_permutation(seed, epoch, num_examples)[position])


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """index_shuffle of 0 .. N-1 for one epoch (computed once: the stream reads an epoch in order; read-only, as
    the cache shares it)."""
    order = index_shuffle(np.arange(num_examples, dtype=np.uint64), (seed, epoch), num_examples - 1)
    order.flags.writeable = False
    return order


def index_shuffle(index: np.ndarray, seed: tuple[int, int], max_index: int) -> np.ndarray:
    """tf.random.experimental.index_shuffle(index, seed, max_index) for an array of indices in [0, max_index]."""
    if max_index == 0:
        return np.zeros(index.shape, np.int64)
    bits = max(16, math.ceil(math.log2(float(max_index))))
    bits += bits % 2
    if max_index >> bits:  # max_index = 4**n >= 2**16: TF's block leaves it out and is no permutation; ours is
        bits += 2
    keys = _simon_round_keys(bits // 2, (_SEED_PAD, seed[0] & 0xFFFFFFFF, seed[1] & 0xFFFFFFFF))
    half = bits // 2
    if bits == 16:  # small N: walks can be long; tabulate the cipher and follow every walk by pointer doubling
        table = _simon_encrypt(np.arange(1 << 16, dtype=np.uint64), keys, half)
        walk = np.where(np.arange(1 << 16) <= max_index, np.arange(1 << 16, dtype=np.uint64), table)
        for _ in range(16):  # a walk ends within 2**16 steps: it returns to where it started at the latest
            walk = walk[walk]
        return walk[table[index.astype(np.int64)]].astype(np.int64)
    out = _simon_encrypt(index.astype(np.uint64), keys, half)
    walking = np.flatnonzero(out > np.uint64(max_index))
    while walking.size:  # cycle walking: max_index > 2**(bits - 2), so each pass keeps under 3/4 of the walks
        out[walking] = _simon_encrypt(out[walking], keys, half)
        walking = walking[out[walking] > np.uint64(max_index)]
    return out.astype(np.int64)


def _simon_round_keys(half: int, key: tuple[int, int, int]) -> list[np.uint64]:
    """Simon's key schedule for `half`-bit words (three key words)."""
    mask = (1 << half) - 1
    rotate_right = lambda x, r: ((x >> r) | (x << (half - r))) & mask  # noqa: E731
    constant, z = 0xFFFFFFFC & mask, 0x7369F885192C0EF5 & mask
    keys = [word & mask for word in key]
    for i in range(3, _ROUNDS):
        keys.append(constant ^ (z & 1) ^ keys[i - 3] ^ rotate_right(keys[i - 1], 3) ^ rotate_right(keys[i - 1], 4))
        z >>= 1
    return [np.uint64(word) for word in keys]


def _simon_encrypt(block: np.ndarray, keys: list[np.uint64], half: int) -> np.ndarray:
    mask, half_u = np.uint64((1 << half) - 1), np.uint64(half)

    def rotate_left(x, r):
        return ((x << np.uint64(r)) | (x >> np.uint64(half - r))) & mask

    left, right = (block >> half_u) & mask, block & mask
    for i in range(0, len(keys), 2):
        left = left ^ (rotate_left(right, 1) & rotate_left(right, 8)) ^ rotate_left(right, 2) ^ keys[i]
        right = right ^ (rotate_left(left, 1) & rotate_left(left, 8)) ^ rotate_left(left, 2) ^ keys[i + 1]
    return (left << half_u) | right


def uniform(seed: int, k: int) -> np.ndarray:
    """tf.random.stateless_uniform([4], seed=[seed, k]): float32 (4,) in [0, 1)."""
    words = [np.uint64(int(v) & 0xFFFFFFFFFFFFFFFF) for v in (seed, k)]
    counter = (words[0] & _MASK32, words[0] >> np.uint64(32), words[1] & _MASK32, words[1] >> np.uint64(32))
    mixed = _philox(counter, tuple(np.uint64(v) for v in _GET_KEY))  # StatelessRandomGetKeyCounter
    bits = np.array(_philox((np.uint64(0), np.uint64(0), mixed[2], mixed[3]), (mixed[0], mixed[1])), np.uint64)
    mantissa = (bits & np.uint64(0x7FFFFF)) | np.uint64(127 << 23)  # a float in [1, 2)
    return mantissa.astype(np.uint32).view(np.float32) - np.float32(1.0)


def _philox(counter: tuple, key: tuple) -> tuple:
    """Philox4x32-10 on uint32 words held in uint64 (products fit)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_ in range(10):
        if round_:
            k0, k1 = (k0 + np.uint64(0x9E3779B9)) & _MASK32, (k1 + np.uint64(0xBB67AE85)) & _MASK32
        p0, p1 = np.uint64(0xD2511F53) * c0, np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & _MASK32, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _MASK32
    return c0, c1, c2, c3
