"""data/input_pipeline.py: the stream as a function of (seed, step) (resume, processes, epochs), the same stream as
the earlier tf.data pipeline, padding, augmentation, bad examples, eval batches, reader threads."""
import itertools
import threading

import numpy as np
import pytest

from fcn_jax.core import normalization
from fcn_jax.data import input_pipeline

SIZES = [(7, 12), (10, 5), (20, 9), (6, 6), (13, 17)]  # (H, W), none square but one


def make_source(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    source = []
    for i, (h, w) in enumerate(sizes):
        label = rng.integers(0, 21, (h, w), dtype=np.uint8)
        label[rng.random((h, w)) < 0.1] = 255
        source.append({"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "label": label, "id": f"img{i}"})
    return source


def take(batches, n):
    return list(itertools.islice(batches, n))


def caffe(image):
    return normalization.normalize(image, "caffe_bgr")


def raw_rgb(normalized):
    """Inverse of caffe_bgr normalisation (float RGB)."""
    return normalized[..., ::-1] + np.array(normalization.CAFFE_BGR_MEAN[::-1], np.float32)


def train(source, **kwargs):
    kwargs = {"global_batch_size": 4, "crop_size": (8, 10), "seed": 0, **kwargs}
    return input_pipeline.train_batches(source, **kwargs)


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_unknown_normalization_fails_when_called():
    with pytest.raises(ValueError, match="unknown normalization 'bgr'"):
        train(make_source(), normalization="bgr")


# ----------------------------------------------------------------------------- step-indexed stream


def test_stream_index_interleaves_processes():
    positions = np.arange(6)
    assert input_pipeline.stream_index(positions, global_batch_size=4, process_index=0, process_count=2).tolist() \
        == [0, 1, 4, 5, 8, 9]
    assert input_pipeline.stream_index(positions, global_batch_size=4, process_index=1, process_count=2).tolist() \
        == [2, 3, 6, 7, 10, 11]


def test_same_seed_same_batches_other_seed_differs():
    source = make_source()
    a, b, c = take(train(source, seed=3), 3), take(train(source, seed=3), 3), take(train(source, seed=4), 3)
    assert_batches_equal(a, b)
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_resume_from_step_is_exact():
    source = make_source()  # 5 examples, batch 4: epochs end mid-batch
    full = take(train(source), 8)
    resumed = take(train(source, start_step=3), 5)
    assert_batches_equal(resumed, full[3:])


def test_a_finite_stream_ends_after_num_steps_with_the_same_batches():
    source = make_source()
    full = take(train(source), 8)
    finite = list(train(source, start_step=3, num_steps=8))  # steps 4..8: five batches
    assert_batches_equal(finite, full[3:])
    assert list(train(source, start_step=8, num_steps=8)) == []


def test_processes_partition_the_global_batch():
    source = make_source()
    single = take(train(source, start_step=2), 3)
    local = [take(train(source, start_step=2, process_index=p, process_count=2), 3) for p in range(2)]
    assert local[0][0]["image"].shape == (2, 8, 10, 3)
    joined = [{k: np.concatenate([local[0][t][k], local[1][t][k]]) for k in single[t]} for t in range(3)]
    assert_batches_equal(joined, single)


def test_each_epoch_visits_every_example_once_in_a_new_order():
    source = make_source(sizes=[(5, 4)] * 6)
    for i, example in enumerate(source):
        example["label"][:] = i  # constant label identifies the example
    batches = take(train(source, global_batch_size=3, crop_size=(5, 4), scale_range=None, flip=False), 4)
    order = [int(label[0, 0]) for batch in batches for label in batch["label"]]
    assert sorted(order[:6]) == sorted(order[6:]) == list(range(6))
    assert order[:6] != order[6:]


def test_indivisible_global_batch_is_rejected():
    with pytest.raises(ValueError, match="global batch size 3 is not a positive multiple of the 2 processes"):
        train(make_source(), global_batch_size=3, process_count=2)


# ----------------------------------------------------------------------------- augmentation


def find_window(out_image, out_label, src_image, src_label, flips=(False, True)):
    """(top, left, flipped) of the source window that the (unpadded) output equals, or None."""
    h, w = out_label.shape
    for flipped in flips:
        image, label = (src_image[:, ::-1], src_label[:, ::-1]) if flipped else (src_image, src_label)
        for top in range(image.shape[0] - h + 1):
            for left in range(image.shape[1] - w + 1):
                if (np.array_equal(label[top:top + h, left:left + w], out_label)
                        and np.array_equal(caffe(image[top:top + h, left:left + w]), out_image)):
                    return top, left, flipped
    return None


def test_crop_pads_with_ignore_and_mean_when_image_is_smaller():
    source = make_source(sizes=[(7, 12)])
    (batch,) = take(train(source, global_batch_size=8, crop_size=(10, 8), scale_range=None, flip=False), 1)
    src = source[0]
    lefts = set()
    for image, label in zip(batch["image"], batch["label"]):
        assert np.all(label[7:] == 255) and np.all(image[7:] == 0)  # 3 padded rows at the bottom
        top, left, _ = find_window(image[:7], label[:7], src["image"], src["label"], flips=(False,))
        lefts.add(left)
    assert len(lefts) > 1  # the crop offset is random


def test_flip_moves_image_and_label_together():
    source = make_source(sizes=[(7, 12)])
    (batch,) = take(train(source, global_batch_size=16, crop_size=(6, 8), scale_range=None, flip=True), 1)
    windows = [find_window(image, label, source[0]["image"], source[0]["label"])
               for image, label in zip(batch["image"], batch["label"])]
    assert None not in windows  # each crop is the same window of image and label, flipped or not
    assert {flipped for _, _, flipped in windows} == {False, True}


@pytest.mark.parametrize("in_size,out_size,start,length", [(7, 23, 0, 23), (13, 6, 0, 6), (375, 719, 200, 500),
                                                         (500, 251, 3, 248), (11, 11, 2, 5)])
def test_nearest_indices_match_tf_resize_nearest(in_size, out_size, start, length):
    tf = pytest.importorskip("tensorflow")
    column = tf.constant(np.arange(in_size, dtype=np.int32)[:, None, None])
    resized = tf.image.resize(column, (out_size, 1), method="nearest").numpy()[:, 0, 0]
    np.testing.assert_array_equal(input_pipeline.nearest_indices(start, length, in_size, out_size),
                                  resized[start:start + length])


def test_scale_resizes_label_nearest_and_aligned_with_image():
    # 4x4 blocks: white image / class 1, black / class 2, gray / ignore 255.
    blocks = np.array([[1, 2, 255, 1], [2, 1, 2, 255], [255, 2, 1, 2]], np.uint8)
    label = np.kron(blocks, np.ones((4, 4), np.uint8))  # (12, 16)
    gray = np.select([label == 1, label == 2], [255, 0], 128).astype(np.uint8)
    source = [{"image": np.repeat(gray[..., None], 3, axis=2), "label": label, "id": "blocks"}]
    (batch,) = take(train(source, global_batch_size=16, crop_size=(20, 20), scale_range=(0.5, 2.0), seed=1), 1)
    valid_sizes = set()
    for image, out_label in zip(batch["image"], batch["label"]):
        assert set(np.unique(out_label).tolist()) <= {1, 2, 255}  # nearest: no blended label values
        padding = np.all(image == 0, axis=-1)
        assert np.all(out_label[padding] == 255)
        rows, cols = np.nonzero(~padding)
        h, w = rows.max() + 1, cols.max() + 1
        assert not padding[:h, :w].any()  # the image is a top-left rectangle, padding bottom/right
        valid_sizes.add((h, w))
        raw = raw_rgb(image)[..., 0]
        assert np.all(out_label[(raw > 254.5) & ~padding] == 1)  # pure white pixels lie in class-1 blocks
        assert np.all(out_label[(raw < 0.5) & ~padding] == 2)
    assert len(valid_sizes) > 2  # scales were drawn


# ----------------------------------------------------------------------------- bad examples


def test_bad_label_value_names_the_example():
    source = make_source()
    source[2]["label"][0, 0] = 30
    source[2]["id"] = "2007_000042"
    with pytest.raises(ValueError, match=r"^example '2007_000042': label values \[30\] outside 0..20 and 255$"):
        take(train(source, global_batch_size=5), 1)


def test_a_bad_example_is_its_one_line_and_num_classes_is_checked():
    source = make_source()
    for example in source:  # classes 0..3 only
        example["label"] = np.where(example["label"] == 255, 255, example["label"] % 4).astype(np.uint8)
    source[1]["label"][0, 0] = 4
    source[1]["id"] = "2007_000043"
    with pytest.raises(ValueError, match=r"^example '2007_000043': label values \[4\] outside 0..3 and 255$"):
        next(train(source, global_batch_size=5, num_classes=4))
    batches = list(train(source, global_batch_size=5, num_steps=2))  # 21 classes: fine
    assert len(batches) == 2


def test_image_label_size_mismatch_names_the_example():
    source = make_source()
    source[1]["label"] = source[1]["label"][:-1]
    with pytest.raises(ValueError,
                       match=r"^example 'img1': label must be uint8 \(10, 5\) like its image, got uint8 \(9, 5\)$"):
        take(input_pipeline.eval_batches(source, batch_size=5), 1)


# ----------------------------------------------------------------------------- eval


def eval_batches(source, **kwargs):
    return list(input_pipeline.eval_batches(source, **kwargs))


def test_eval_covers_every_example_once_across_processes():
    source = make_source()
    per_process = [eval_batches(source, batch_size=2, process_index=p, process_count=2) for p in range(2)]
    assert [len(b) for b in per_process] == [2, 2]  # 5 examples, global batch 4
    assert {b["image"].shape for batches in per_process for b in batches} == {(2, 32, 32, 3)}
    by_id, num_labelled = {}, 0
    for batch in [b for batches in per_process for b in batches]:
        for i, example_id in enumerate(batch["id"]):
            h, w = batch["height"][i], batch["width"][i]
            image, label = batch["image"][i], batch["label"][i]
            num_labelled += int(np.sum(label != 255))
            assert np.all(image[h:] == 0) and np.all(image[:, w:] == 0)
            assert np.all(label[h:] == 255) and np.all(label[:, w:] == 255)
            if example_id == b"":
                assert h == w == 0 and np.all(label == 255)
                continue
            assert example_id.decode() not in by_id
            by_id[example_id.decode()] = (image[:h, :w], label[:h, :w])
    assert sorted(by_id) == [f"img{i}" for i in range(5)]
    assert num_labelled == sum(int(np.sum(e["label"] != 255)) for e in source)
    for example in source:
        image, label = by_id[example["id"]]
        np.testing.assert_array_equal(label, example["label"])
        np.testing.assert_array_equal(image, caffe(example["image"]))


def test_eval_processes_partition_the_global_batch():
    source = make_source()
    single = eval_batches(source, batch_size=4)
    local = [eval_batches(source, batch_size=2, process_index=p, process_count=2) for p in range(2)]
    joined = [{k: np.concatenate([local[0][t][k], local[1][t][k]]) for k in single[t]} for t in range(len(single))]
    assert_batches_equal(joined, single)


def test_eval_default_pad_size_is_smallest_multiple_of_32():
    source = make_source(sizes=[(40, 17), (9, 70)])
    assert input_pipeline.eval_pad_size(source) == (64, 96)
    (batch,) = eval_batches(source, batch_size=2)
    assert batch["image"].shape == (2, 64, 96, 3) and batch["label"].shape == (2, 64, 96)
    assert batch["height"].tolist() == [40, 9] and batch["width"].tolist() == [17, 70]


def test_eval_image_larger_than_pad_size_names_the_example():
    source = make_source(sizes=[(20, 20), (40, 17)])
    source[1]["id"] = "big"
    with pytest.raises(ValueError, match=r"^example 'big': image 40x17 is larger than pad_size 32x32$"):
        eval_batches(source, batch_size=1, pad_size=(32, 32))


def test_reader_threads_end_with_the_iterator():
    source = make_source()
    before = threading.active_count()
    batches = train(source, workers=3)
    take(batches, 2)
    assert threading.active_count() > before  # readers are working ahead
    batches.close()  # what a loop that stops early does (also on garbage collection)
    assert threading.active_count() == before
    list(input_pipeline.eval_batches(source, batch_size=2, workers=3))  # run to the end
    assert threading.active_count() == before
    source[3]["label"][0, 0] = 99
    with pytest.raises(ValueError, match="label values"):  # a bad example mid-stream ends the readers too
        list(train(source, workers=3, num_steps=6))
    assert threading.active_count() == before
    with pytest.raises(ValueError, match=r"^reader threads must be >= 1 \(None: the host's cores\), got 0$"):
        train(source, workers=0)


# ----------------------------------------------------------------------------- the earlier tf.data stream


@pytest.mark.parametrize("process_count", [1, 2])
def test_train_stream_equals_the_tf_data_pipeline(process_count):
    """Example for example the stream the tf.data pipeline (benchmarks/tf_data_reference.py) gave: the same
    examples at the same steps, the same crops, scales and flips, bit for bit."""
    pytest.importorskip("tensorflow")
    from benchmarks import tf_data_reference

    source = make_source(sizes=SIZES + [(31, 24), (16, 40)])  # 7 examples, batch 4: epochs end mid-batch
    for example in source:  # a multi-head label checks the trailing dims too
        example["label"] = np.stack([example["label"], 255 - example["label"] % 3], axis=-1)
    kwargs = dict(global_batch_size=4, crop_size=(9, 11), seed=5, start_step=2, num_steps=9, scale_range=(0.5, 2.0),
                  flip=True, num_classes=(21, 256))
    for process_index in range(process_count):
        ours = list(train(source, process_index=process_index, process_count=process_count, **kwargs))
        theirs = list(tf_data_reference.numpy_batches(tf_data_reference.train_dataset(
            source, process_index=process_index, process_count=process_count, **kwargs)))
        assert len(ours) == len(theirs) == 7
        for mine, reference in zip(ours, theirs):
            np.testing.assert_array_equal(mine["label"], reference["label"])
            np.testing.assert_array_equal(mine["image"], reference["image"])


def test_eval_batches_equal_the_tf_data_pipeline():
    pytest.importorskip("tensorflow")
    from benchmarks import tf_data_reference

    source = make_source()
    kwargs = dict(batch_size=2, normalization="imagenet_rgb", process_index=1, process_count=2)
    ours = eval_batches(source, **kwargs)
    theirs = list(tf_data_reference.numpy_batches(tf_data_reference.eval_dataset(source, **kwargs)))
    assert len(ours) == len(theirs) == 2
    for mine, reference in zip(ours, theirs):
        assert mine["id"].tolist() == reference["id"].tolist()
        for key in ("label", "height", "width"):
            np.testing.assert_array_equal(mine[key], reference[key])
        np.testing.assert_array_equal(mine["image"], reference["image"])


@pytest.mark.parametrize("in_size,scaled,start,length", [((7, 12), (23, 5), (0, 0), (23, 5)),
                                                         ((13, 6), (6, 9), (2, 1), (3, 8)),
                                                         ((375, 500), (719, 251), (200, 3), (320, 248))])
def test_bilinear_window_is_the_window_of_tf_resize_bilinear(in_size, scaled, start, length):
    tf = pytest.importorskip("tensorflow")
    image = np.random.default_rng(0).integers(0, 256, (*in_size, 3), dtype=np.uint8)
    resized = tf.image.resize(image, scaled, method="bilinear").numpy()
    window = resized[start[0]:start[0] + length[0], start[1]:start[1] + length[1]]
    np.testing.assert_array_equal(input_pipeline.bilinear_window(image, scaled, *start, length), window)
