"""data/stream_random.py: TensorFlow's index_shuffle and stateless_uniform, bit for bit (golden values taken from
TensorFlow 2.21 on CPU; compared with TensorFlow itself where it is installed)."""
import numpy as np
import pytest

from fcn_jax.data import stream_random


def test_golden_orders_of_the_stream():
    # tf.random.experimental.index_shuffle(k % N, seed=[seed, k // N], max_index=N - 1)
    assert [stream_random.shuffled_index(k, num_examples=7, seed=0) for k in range(21)] == [
        0, 2, 1, 6, 4, 5, 3, 1, 0, 5, 4, 3, 2, 6, 2, 1, 6, 5, 4, 3, 0]
    assert [stream_random.shuffled_index(k, num_examples=300, seed=42) for k in range(16)] == [
        72, 63, 126, 253, 54, 225, 192, 98, 68, 15, 148, 1, 250, 29, 20, 155]


def test_golden_uniforms():
    # tf.random.stateless_uniform([4], seed=[seed, 5])
    np.testing.assert_array_equal(stream_random.uniform(0, 5), np.array(
        [0.5545409917831421, 0.2206728458404541, 0.20804059505462646, 0.030680418014526367], np.float32))
    np.testing.assert_array_equal(stream_random.uniform(42, 5), np.array(
        [0.031563758850097656, 0.6463605165481567, 0.6836347579956055, 0.9680259227752686], np.float32))


@pytest.mark.parametrize("num_examples", [1, 2, 5, 60, 8498, 65537, 70001])  # 65537: where TF's is not one
def test_every_epoch_is_a_permutation(num_examples):
    for epoch in (0, 1, 7):
        order = stream_random.epoch_permutation(3, epoch, num_examples)
        np.testing.assert_array_equal(np.sort(order), np.arange(num_examples))


@pytest.mark.parametrize("num_examples", [2, 7, 300, 8498, 70001])
@pytest.mark.parametrize("seed", [0, -3, 2**40 + 5])
def test_equal_to_tensorflow(num_examples, seed):
    tf = pytest.importorskip("tensorflow")
    indices = np.random.default_rng(0).integers(0, num_examples, 50)
    for epoch in (0, 4):
        theirs = tf.random.experimental.index_shuffle(
            tf.constant(indices, tf.int64), seed=tf.constant([seed, epoch], tf.int64),
            max_index=tf.constant(num_examples - 1, tf.int64)).numpy()
        np.testing.assert_array_equal(stream_random.epoch_permutation(seed, epoch, num_examples)[indices], theirs)
    for k in (0, 1, 999, 2**40 + 3):
        theirs = tf.random.stateless_uniform([4], seed=tf.constant([seed, k], tf.int64)).numpy()
        np.testing.assert_array_equal(stream_random.uniform(seed, k).view(np.uint32), theirs.view(np.uint32))
