"""inference.py: the per-shape compile cache, batching by padded size, and a NumPy input normalisation that is
bit-identical to the tf.data pipeline's."""
import numpy as np
import pytest

from evaluate_test import random_params, save_converted_weights
from fcn_jax import inference


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    params = random_params("fcn8s", seed=3)
    return params, save_converted_weights(tmp_path_factory.mktemp("w") / "converted", params)


def test_compiles_once_per_padded_shape(converted):
    network = inference.load_network(converted[1])
    rng = np.random.default_rng(0)
    images = [(i, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for i, (h, w) in enumerate(((37, 45), (50, 29), (60, 33), (40, 64)))]
    steps = inference.predict_steps(network)
    results = list(inference.segment(network, images, batch_size=8, pad_multiple=32, steps=steps))
    assert steps.compilations == 2  # 64x64 for three of them, 64x32 for (50, 29)
    assert sorted(key for key, _, _ in results) == [0, 1, 2, 3]
    assert all(mask.shape == image.shape[:2] for _, image, mask in results)


def test_batches_by_shape_fills_groups_and_flushes_the_rest():
    items = ["a1", "b1", "a2", "a3", "b2", "c1", "a4"]
    groups = list(inference.batches_by_shape(items, lambda s: s[0], 2))
    assert groups == [["a1", "a2"], ["b1", "b2"], ["a3", "a4"], ["c1"]]
    out = inference.pad_stack([np.ones((1, 2), np.uint8), np.full((2, 1), 2, np.uint8)], (2, 3), 3, 255, np.int32)
    np.testing.assert_array_equal(out, [[[1, 1, 255], [255, 255, 255]], [[2, 255, 255], [2, 255, 255]],
                                        [[255] * 3] * 2])
    assert inference.padded_shape(37, 45, 32) == (64, 64) and inference.padded_shape(37, 45, 1) == (37, 45)


@pytest.mark.parametrize("mode", ["caffe_bgr", "imagenet_rgb"])
def test_numpy_normalize_is_bit_identical_to_the_tf_pipeline(mode):
    from fcn_jax import input_pipeline

    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    image[0, 0], image[0, 1] = 0, 255
    expected = input_pipeline.normalize(image, mode).numpy()
    out = inference.normalize(image, mode)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="unknown normalization 'bgr'; expected one of caffe_bgr, imagenet_rgb"):
        inference.normalize(image, "bgr")


def test_scores_sum_confusions_and_normalise_the_loss():
    scores = inference.Scores(3)
    scores.add({"confusion": np.array([[2, 0, 0], [1, 1, 0], [0, 0, 0]]), "loss_sum": np.float32(3.0),
                "num_valid": np.int32(4)})
    scores.add({"confusion": np.array([[0, 0, 0], [0, 1, 0], [0, 0, 2]]), "loss_sum": np.float32(1.0),
                "num_valid": np.int32(3)})
    np.testing.assert_array_equal(scores.confusion, [[2, 0, 0], [1, 2, 0], [0, 0, 2]])
    result = scores.result()
    assert result["loss"] == pytest.approx(4.0 / 7) and result["pixel_acc"] == pytest.approx(6 / 7)
    assert result["mean_iou"] == pytest.approx(np.mean([2 / 3, 2 / 3, 1.0]))
