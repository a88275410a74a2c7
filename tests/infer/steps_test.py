"""infer/steps.py, batching.py and runner.py: the per-shape compile cache, and batching by padded size."""
import numpy as np
import pytest
from evaluate_test import random_params, save_converted_weights

from fcn_jax.core import losses, metrics, parallel
from fcn_jax.infer import batching
from fcn_jax.infer import network as infer_network
from fcn_jax.infer import steps as infer_steps
from fcn_jax.infer.runner import Runner
from fcn_jax.models import zoo


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    params = random_params("fcn8s", seed=3)
    return params, save_converted_weights(tmp_path_factory.mktemp("w") / "converted", params)


def test_compiles_once_per_padded_shape(converted):
    network = infer_network.load_network(converted[1])
    rng = np.random.default_rng(0)
    images = [(i, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for i, (h, w) in enumerate(((37, 45), (50, 29), (60, 33), (40, 64)))]
    runner = Runner.of(network, batch_size=8, pad_multiple=32)
    results = list(runner.masks(network.params, images))
    assert runner.compilations == 2  # 64x64 for three of them, 64x32 for (50, 29)
    assert sorted(key for key, _, _ in results) == [0, 1, 2, 3]
    assert all(mask.shape == image.shape[:2] for _, image, mask in results)


def test_batches_by_shape_fills_groups_and_flushes_the_rest():
    items = ["a1", "b1", "a2", "a3", "b2", "c1", "a4"]
    groups = list(batching.batches_by_shape(items, lambda s: s[0], 2))
    assert groups == [["a1", "a2"], ["b1", "b2"], ["a3", "a4"], ["c1"]]
    out = batching.pad_stack([np.ones((1, 2), np.uint8), np.full((2, 1), 2, np.uint8)], (2, 3), 3, 255, np.int32)
    np.testing.assert_array_equal(out, [[[1, 1, 255], [255, 255, 255]], [[2, 255, 255], [2, 255, 255]],
                                        [[255] * 3] * 2])
    assert batching.padded_shape(37, 45, 32) == (64, 64) and batching.padded_shape(37, 45, 1) == (37, 45)


def test_bucket_shapes_bound_the_shapes_and_pad_least():
    sizes = [(100, 100)] * 10 + [(101, 101), (300, 300), (37, 45)]
    assert batching.bucket_shapes(sizes, 0) == {s: s for s in set(sizes)}  # no bound: every size exact
    assert batching.bucket_shapes(sizes, 4) == {s: s for s in set(sizes)}  # as many shapes as sizes: exact too
    assert batching.bucket_shapes(sizes, 1) == dict.fromkeys(set(sizes), (300, 300))
    assert batching.bucket_shapes(sizes, 2) == {(100, 100): (101, 101), (101, 101): (101, 101),
                                                 (37, 45): (101, 101), (300, 300): (300, 300)}
    assert batching.bucket_shapes([(37, 45), (50, 29)], 0, multiple=32) == {(37, 45): (64, 64), (50, 29): (64, 32)}
    assert batching.bucket_shapes([], 4) == {}
    rng = np.random.default_rng(0)
    many = [tuple(int(v) for v in rng.integers(200, 4000, 2)) for _ in range(2000)]  # beyond 256 distinct sizes:
    coarse = batching.bucket_shapes(many, 4)  # rounded to a coarser multiple first (seconds, not minutes)
    assert len(set(coarse.values())) == 4 and all(b[0] >= s[0] and b[1] >= s[1] for s, b in coarse.items())
    for k in (2, 3, 5):  # on random folders: k shapes that hold their sizes; no size fits a smaller shape, and
        sizes = [tuple(int(v) for v in rng.integers(16, 400, 2)) for _ in range(40)]  # no shape could shrink
        buckets = batching.bucket_shapes(sizes, k)
        shapes = set(buckets.values())
        assert len(shapes) == k and all(b[0] >= s[0] and b[1] >= s[1] for s, b in buckets.items())
        for size, shape in buckets.items():
            assert all(o[0] * o[1] >= shape[0] * shape[1] for o in shapes if o[0] >= size[0] and o[1] >= size[1])
        for shape in shapes:
            assert tuple(np.max([s for s, b in buckets.items() if b == shape], 0)) == shape


def test_prefetch_keeps_order_and_raises_where_the_producer_failed():
    def items():
        yield from range(5)
        raise ValueError("cannot read image 5.png")

    got = []
    with pytest.raises(ValueError, match="5.png"):
        for item in batching.prefetch(items(), depth=2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]
    stream = batching.prefetch(iter(range(1000)), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # a consumer that stops early ends the producer thread
    import threading
    import time
    deadline = time.monotonic() + 5
    while any(t.name == "prefetch" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "prefetch" for t in threading.enumerate())


def test_scores_sum_confusions_and_normalise_the_loss():
    scores = infer_steps.Scores((("", 3),))
    scores.add({"confusion": np.array([[2, 0, 0], [1, 1, 0], [0, 0, 0]]), "loss_sum": np.float32(3.0),
                "num_valid": np.int32(4), "image_iou": np.array([0.5, np.nan], np.float32)})  # (a padding image)
    scores.add({"confusion": np.array([[0, 0, 0], [0, 1, 0], [0, 0, 2]]), "loss_sum": np.float32(1.0),
                "num_valid": np.int32(3), "image_iou": np.array([1.0], np.float32)})
    np.testing.assert_array_equal(scores.confusion, [[2, 0, 0], [1, 2, 0], [0, 0, 2]])
    result = scores.result()
    assert result["loss"] == pytest.approx(4.0 / 7) and result["pixel_acc"] == pytest.approx(6 / 7)
    assert result["mean_iou"] == pytest.approx(np.mean([2 / 3, 2 / 3, 1.0]))
    assert result["per_image_mean_iou"] == pytest.approx(0.75)  # the images with a labelled pixel


def test_a_multi_head_eval_step_scores_each_head_against_its_own_labels():
    """Per-head confusion matrices, losses and stacked masks, against a direct computation per head."""
    import jax
    import jax.numpy as jnp
    from fcn_test import make_params

    heads = (("sem", 4), ("geo", 3))
    model = zoo.create_model("fcn16s", num_classes=4, width=1 / 16, geometry="same", heads=heads)
    params = make_params(model, seed=1)
    rng = np.random.default_rng(2)
    batch = {"image": rng.normal(size=(8, 32, 40, 3)).astype(np.float32),
             "label": np.stack([rng.integers(0, 4, (8, 32, 40)), rng.integers(0, 3, (8, 32, 40))], -1).astype(np.int32)}
    batch["label"][:, :4] = 255
    mesh = parallel.create_mesh()
    scores = Runner(model.apply, heads, mesh, normalization="caffe_bgr").score_batches(
        parallel.replicate(params, mesh), [batch])
    logits = np.asarray(model.apply({"params": params}, jnp.asarray(batch["image"])))
    result = scores.result()
    for index, ((name, k), channels) in enumerate(zip(heads, (slice(0, 4), slice(4, 7)))):
        suffix = "" if index == 0 else f"_{name}"
        labels = batch["label"][..., index]
        confusion = np.asarray(metrics.confusion_matrix(logits[..., channels].argmax(-1), labels, k))
        np.testing.assert_array_equal(scores.confusions[suffix], confusion)
        expected = metrics.segmentation_metrics(confusion)
        assert result[f"mean_iou{suffix}"] == pytest.approx(expected["mean_iou"], rel=1e-12)
        loss_sum, num_valid = losses.pixel_cross_entropy(jnp.asarray(logits[..., channels]), jnp.asarray(labels),
                                                         reduction="sum")
        assert result[f"loss{suffix}"] == pytest.approx(float(loss_sum) / int(num_valid), rel=1e-5)
    predict = jax.jit(lambda p, x: infer_steps.predict_step(p, {"image": x}, apply_fn=model.apply, heads=heads))
    masks = np.asarray(predict(params, batch["image"]))
    assert masks.shape == (8, 32, 40, 2) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks[..., 1], logits[..., 4:].argmax(-1))
