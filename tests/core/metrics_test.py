"""Tests for fcn_jax.core.metrics: hand-computed scores, NaN convention, sharded accumulation."""
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fcn_jax.core import metrics


def _numpy_confusion(pred, gt, k, ignore_label=255):
    """Independent reference: count every (gt, pred) cell explicitly."""
    keep = (gt != ignore_label) & (gt < k)
    hist = np.zeros((k, k), np.int64)
    for i in range(k):
        for j in range(k):
            hist[i, j] = np.sum(keep & (gt == i) & (pred == j))
    return hist


def _reference_scores(hist):
    """The reference score.py formulas, verbatim (numpy warnings silenced)."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        acc = np.diag(hist).sum() / hist.sum()
        mean_acc = np.nanmean(np.diag(hist) / hist.sum(1))
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
        freq = hist.sum(1) / hist.sum()
        fw = (freq[freq > 0] * iu[freq > 0]).sum()
        return acc, mean_acc, np.nanmean(iu), fw, iu


# rows = ground truth, cols = prediction. Class 2 is predicted once but never in
# the ground truth; class 3 appears nowhere.
HAND = np.array([[3, 1, 0, 0],
                 [1, 4, 1, 0],
                 [0, 0, 0, 0],
                 [0, 0, 0, 0]], np.float64)


def test_segmentation_metrics_hand_computed():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warning spam
        m = metrics.segmentation_metrics(HAND)
    # total 10, trace 7
    assert m["pixel_acc"] == pytest.approx(0.7)
    # class acc: 3/4, 4/6, NaN (no gt), NaN (no gt)
    assert m["mean_acc"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    # IU: 3/(4+4-3), 4/(6+5-4), 0/(0+1-0), NaN (absent from gt and prediction)
    iou = m["per_class_iou"]
    assert iou[:3] == pytest.approx([3 / 5, 4 / 7, 0.0])
    assert math.isnan(iou[3])
    assert m["mean_iou"] == pytest.approx((3 / 5 + 4 / 7 + 0.0) / 3)
    # freq = (0.4, 0.6, 0, 0): fw IU = 0.4*3/5 + 0.6*4/7
    assert m["fw_iou"] == pytest.approx(0.4 * 3 / 5 + 0.6 * 4 / 7)
    assert all(type(m[key]) is float for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"))
    assert all(type(v) is float for v in iou)


def test_perfect_prediction_gives_one_everywhere():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (2, 6, 6)).astype(np.int32)
    gt[0, 0, :] = 255
    gt[gt == 4] = 3  # class 4 absent
    conf = np.asarray(metrics.confusion_matrix(jnp.where(gt == 255, 0, gt), gt, 5))
    m = metrics.segmentation_metrics(conf)
    assert m["pixel_acc"] == m["mean_acc"] == m["mean_iou"] == m["fw_iou"] == 1.0
    assert m["per_class_iou"][:4] == [1.0] * 4
    assert math.isnan(m["per_class_iou"][4])


def test_empty_matrix_is_all_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = metrics.segmentation_metrics(np.zeros((3, 3)))
    assert all(math.isnan(m[key]) for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"))
    assert all(math.isnan(v) for v in m["per_class_iou"])


def test_metrics_match_reference_formulas_on_random_matrices():
    rng = np.random.default_rng(1)
    for _ in range(5):
        hist = rng.integers(0, 50, (21, 21)).astype(np.float64)
        hist[rng.integers(0, 21, 3)] = 0  # some classes absent from gt
        hist[:, rng.integers(0, 21, 3)] = 0  # some never predicted
        acc, mean_acc, mean_iu, fw, iu = _reference_scores(hist)
        m = metrics.segmentation_metrics(hist.astype(np.int64))
        assert m["pixel_acc"] == pytest.approx(acc, rel=1e-12)
        assert m["mean_acc"] == pytest.approx(mean_acc, rel=1e-12)
        assert m["mean_iou"] == pytest.approx(mean_iu, rel=1e-12)
        assert m["fw_iou"] == pytest.approx(fw, rel=1e-12)
        np.testing.assert_allclose(m["per_class_iou"], iu, rtol=1e-12)


def test_confusion_matrix_hand_computed():
    gt = jnp.array([[0, 0, 1, 1, 2, 255, 3, 200]], jnp.int32)
    pred = jnp.array([[0, 1, 1, 1, 0, 2, 2, 0]], jnp.int32)
    conf = metrics.confusion_matrix(pred, gt, 3)  # 255 ignored; 3 and 200 are >= K
    assert conf.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(conf), [[1, 1, 0],
                                                     [0, 2, 0],
                                                     [1, 0, 0]])


def test_confusion_matrix_uint8_labels_and_custom_ignore():
    # uint8 labels must not overflow in gt*K (20*21 > 255).
    gt = jnp.array([20, 20, 0, 5], jnp.uint8)
    pred = jnp.array([20, 19, 0, 3], jnp.int32)
    conf = np.asarray(metrics.confusion_matrix(pred, gt, 21, ignore_label=5))
    assert conf[20, 20] == 1 and conf[20, 19] == 1 and conf[0, 0] == 1
    assert conf.sum() == 3


def test_confusion_matrix_drops_out_of_range_predictions():
    gt = jnp.array([0, 1, 1], jnp.int32)
    pred = jnp.array([3, -1, 1], jnp.int32)  # 0*3+3 would alias cell (1, 0) if not dropped
    np.testing.assert_array_equal(np.asarray(metrics.confusion_matrix(pred, gt, 3)),
                                  [[0, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_confusion_matrix_matches_numpy_reference_random():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 24, (4, 9, 11)).astype(np.int32)  # 21, 22, 23 are >= K
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, 21, gt.shape).astype(np.int32)
    conf = jax.jit(metrics.confusion_matrix, static_argnums=(2,))(pred, gt, 21)
    np.testing.assert_array_equal(np.asarray(conf), _numpy_confusion(pred, gt, 21))


def test_pixel_accuracy_is_the_confusion_matrix_trace_over_its_sum():
    rng = np.random.default_rng(5)
    gt = rng.integers(0, 24, (3, 13, 7)).astype(np.int32)  # 21, 22, 23 are >= K: not counted
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 21, gt.shape)).astype(np.int32)
    hist = _numpy_confusion(pred, gt, 21)
    accuracy = jax.jit(metrics.pixel_accuracy, static_argnums=(2,))(pred, gt, 21)
    assert 0.5 < float(accuracy) < 0.9
    np.testing.assert_allclose(float(accuracy), np.trace(hist) / hist.sum(), rtol=1e-6)
    assert float(metrics.pixel_accuracy(pred, np.full_like(gt, 255), 21)) == 0.0  # nothing counted


def test_confusion_matrices_accumulate_over_batches_and_devices():
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should provide 8 fake CPU devices"
    k = 21
    rng = np.random.default_rng(3)
    gt = rng.integers(0, k, (16, 12, 10)).astype(np.int32)
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, k, gt.shape).astype(np.int32)
    want = _numpy_confusion(pred, gt, k)

    mesh = Mesh(np.array(devices), ("data",))
    batch_sharding = NamedSharding(mesh, P("data"))
    gt_s = jax.device_put(gt, batch_sharding)
    pred_s = jax.device_put(pred, batch_sharding)
    conf_fn = jax.jit(metrics.confusion_matrix, static_argnums=(2,))

    # One jit over the batch-sharded global array (XLA adds the cross-device sum).
    np.testing.assert_array_equal(np.asarray(conf_fn(pred_s, gt_s, k)), want)

    # Per-device matrices, each computed on its own shard, summed on host in int64.
    per_shard = [conf_fn(p.data, g.data, k)
                 for p, g in zip(pred_s.addressable_shards, gt_s.addressable_shards)]
    assert len(per_shard) == 8
    assert {next(iter(c.devices())) for c in per_shard} == set(devices)
    np.testing.assert_array_equal(sum(np.asarray(c, np.int64) for c in per_shard), want)

    # Per-example matrices from a vmapped, batch-sharded jit also sum to the whole.
    per_example = jax.jit(jax.vmap(lambda p, g: metrics.confusion_matrix(p, g, k)))(pred_s, gt_s)
    assert per_example.shape == (16, k, k)
    np.testing.assert_array_equal(np.asarray(per_example).sum(axis=0), want)

    # Across batches: two halves add up to the whole.
    halves = conf_fn(pred[:8], gt[:8], k) + conf_fn(pred[8:], gt[8:], k)
    np.testing.assert_array_equal(np.asarray(halves), want)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="predictions shape"):
        metrics.confusion_matrix(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 4), jnp.int32), 3)
    with pytest.raises(ValueError, match="num_classes"):
        metrics.confusion_matrix(jnp.zeros((2,), jnp.int32), jnp.zeros((2,), jnp.int32), 0)
    with pytest.raises(ValueError, match="square"):
        metrics.segmentation_metrics(np.zeros((3, 4)))


def _direct_class_scores(pred, gt, k, ignore_label=255):
    """Precision, recall and F1 of each class counted straight from flattened pixels, no confusion matrix."""
    keep = gt != ignore_label
    pred, gt = pred[keep], gt[keep]
    out = {"precision": [], "recall": [], "f1": []}
    for c in range(k):
        tp, predicted, labelled = np.sum((pred == c) & (gt == c)), np.sum(pred == c), np.sum(gt == c)
        out["precision"].append(tp / predicted if predicted else math.nan)
        out["recall"].append(tp / labelled if labelled else math.nan)
        out["f1"].append(2 * tp / (predicted + labelled) if predicted + labelled else math.nan)
    return out


def test_precision_recall_f1_equal_a_direct_count_from_flattened_predictions():
    rng = np.random.default_rng(4)
    k = 5
    gt = rng.integers(0, k, (3, 9, 11))
    gt[gt == 4] = 255                       # class 4 never labelled: recall NaN, precision 0 where predicted
    pred = np.where(rng.random(gt.shape) < 0.6, np.where(gt == 255, 0, gt), rng.integers(0, k, gt.shape))
    pred[pred == 3] = 2                     # class 3 never predicted: precision NaN
    m = metrics.segmentation_metrics(metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(gt), k))
    direct = _direct_class_scores(pred, gt, k)
    for name in ("precision", "recall", "f1"):
        np.testing.assert_allclose(m[f"per_class_{name}"], direct[name], rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(m[f"mean_{name}"], np.nanmean(direct[name]), rtol=1e-12)
    assert math.isnan(m["per_class_precision"][3]) and math.isnan(m["per_class_recall"][4])
    assert m["per_class_precision"][4] == 0.0
    iou = np.asarray(m["per_class_iou"])
    f1 = np.asarray(m["per_class_f1"])
    np.testing.assert_allclose(f1[:4], 2 * iou[:4] / (1 + iou[:4]), rtol=1e-12)  # Dice = 2 IU / (1 + IU)
    assert m["mean_recall"] == m["mean_acc"]


def test_image_confusions_are_each_images_confusion_matrix():
    rng = np.random.default_rng(6)
    k = 4
    gt = rng.integers(0, k, (3, 6, 7))
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, k, gt.shape)
    per_image = np.asarray(metrics.image_confusions(jnp.asarray(pred), jnp.asarray(gt), k))
    assert per_image.shape == (3, k, k)
    for i in range(3):
        np.testing.assert_array_equal(per_image[i], _numpy_confusion(pred[i], gt[i], k))
    np.testing.assert_array_equal(per_image.sum(0), _numpy_confusion(pred, gt, k))


def test_image_mean_iou_is_the_mean_over_the_classes_in_each_image_nan_for_an_unlabelled_one():
    gt = np.array([[[0, 0, 1, 1]], [[0, 0, 0, 0]], [[255, 255, 255, 255]]])
    pred = np.array([[[0, 1, 1, 1]], [[0, 0, 0, 2]], [[0, 1, 2, 0]]])
    ious = np.asarray(metrics.image_mean_iou(metrics.image_confusions(jnp.asarray(pred), jnp.asarray(gt), 3)))
    # image 0: IU(0) = 1/2, IU(1) = 2/3; image 1: IU(0) = 3/4, class 2 only predicted: IU 0; image 2: none labelled
    np.testing.assert_allclose(ious[:2], [(1 / 2 + 2 / 3) / 2, (3 / 4 + 0) / 2], rtol=1e-6)
    assert math.isnan(ious[2])
    # The per-image mean differs from the dataset-level one (the paper's) on the same pixels:
    dataset = metrics.segmentation_metrics(metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(gt), 3))
    assert dataset["mean_iou"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)  # != the per-image mean of 0.6042
