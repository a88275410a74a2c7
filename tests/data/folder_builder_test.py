"""data/folder_builder.py (python -m fcn_jax.folder_dataset): tiny trees of every layout and label encoding through the
tfds builder, checked value by value."""
import json
import os
import signal

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fcn_jax import folder_dataset
from fcn_jax.data import folder_builder, layouts, visualize
from fcn_jax.data import synthetic as data_synthetic
from fcn_jax.data.image_io import BadExampleError


def _png(path, array, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette.tobytes())
    image.save(path)


def _image(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _by_id(source):
    return {source[i]["id"]: source[i] for i in range(len(source))}


def test_the_folder_example_colour_labels_become_class_ids(tmp_path):
    root = data_synthetic.write_synthetic_folder(str(tmp_path / "shapes"), num_train=6, num_val=3, seed=5)
    train = folder_builder.load_split(str(tmp_path / "tfds"), "train", root)
    val = folder_builder.load_split(str(tmp_path / "tfds"), "val", root)
    assert (len(train), len(val)) == (6, 3)
    to_class = np.zeros(256, np.uint8)
    to_class[255] = 255
    for k, (voc_id, _, _) in enumerate(data_synthetic.SHAPE_CLASSES, start=1):
        to_class[voc_id] = k
    for n, example in enumerate(train[i] for i in range(len(train))):  # shapes_00000 .. 00005, drawn in order
        image, classes = data_synthetic.scene(np.random.default_rng((5, 3, n)))
        assert example["id"] == f"shapes_{n:05d}"
        np.testing.assert_array_equal(example["label"], to_class[data_synthetic.with_borders(classes)])
        assert example["image"].shape == image.shape  # JPEG bytes kept as written
    assert set(np.unique(train[0]["label"])) <= {0, 1, 2, 3, 4, 5, 255} and 255 in train[0]["label"]
    prepared = folder_builder.prepare(str(tmp_path / "tfds"), root)
    assert folder_builder.prepared_heads(prepared)[0][1].classes == (
        "background", "triangle", "rectangle", "disc", "ring", "cross")


def test_palette_labels_with_own_colours_and_png_images_stored_losslessly(tmp_path):
    root, rng = tmp_path / "own", np.random.default_rng(0)
    colours = [[10, 10, 10], [250, 0, 0], [0, 0, 250]]
    (root).mkdir()
    (root / "classes.json").write_text(json.dumps({"classes": ["bg", "tumour", "vessel"], "colors": colours}))
    palette = visualize.voc_palette()
    palette[:3] = colours
    images, labels = {}, {}
    for split, stem in (("train", "a"), ("train", "b"), ("val", "c")):
        images[stem], labels[stem] = _image(rng, 9, 13), rng.integers(0, 3, (9, 13)).astype(np.uint8)
        labels[stem][0, 0] = 255
        _png(root / "images" / split / f"{stem}.png", images[stem])
        _png(root / "labels" / split / f"{stem}.png", labels[stem], palette)
    train = _by_id(folder_builder.load_split(str(tmp_path / "tfds"), "train", str(root)))
    val = _by_id(folder_builder.load_split(str(tmp_path / "tfds"), "val", str(root)))
    for stem, example in {**train, **val}.items():
        np.testing.assert_array_equal(example["image"], images[stem])  # PNG images: exact pixels
        np.testing.assert_array_equal(example["label"], labels[stem])
    _png(root / "labels" / "val" / "c.png", labels["c"], visualize.voc_palette())  # VOC's colours, not these
    with pytest.raises(BadExampleError, match=r"c.png: palette colours of indices \[0, 1, 2\] differ from the "):
        folder_builder.prepare(str(tmp_path / "tfds2"), str(root))


def test_index_labels_split_by_ratio_and_a_bad_value_names_file_value_and_classes(tmp_path):
    root, rng = tmp_path / "flat", np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"classes": ["soil", "crop"], "encoding": "index"}))
    for i in range(10):
        Image.fromarray(_image(rng, 8, 8)).save(root / "images" / f"f{i}.jpg")
        _png(root / "labels" / f"f{i}.png", rng.integers(0, 2, (8, 8)).astype(np.uint8))
    prepared = folder_builder.prepare(str(tmp_path / "tfds"), str(root), val_fraction=0.3, split_seed=1)
    assert {s: prepared.info.splits[s].num_examples for s in prepared.info.splits} == {"train": 7, "val": 3}
    _png(root / "labels" / "f4.png", np.full((8, 8), 7, np.uint8))
    with pytest.raises(BadExampleError, match=r"f4.png: label values \[7\] are not classes: "
                                              r"expected 0..1 \(soil, crop\) or 255 \(ignore\)"):
        folder_builder.prepare(str(tmp_path / "tfds2"), str(root), val_fraction=0.3)
    with pytest.raises(ValueError, match=r"files, classes or split settings of .* changed since it was prepared"):
        folder_builder.prepare(str(tmp_path / "tfds"), str(root), val_fraction=0.3, split_seed=1)
    with pytest.raises(ValueError, match=r"prepared from .*flat, not .*other; use another data_dir"):
        folder_builder.prepare(str(tmp_path / "tfds"), str(tmp_path / "other"), val_fraction=0.3, split_seed=1)


def test_skip_bad_examples_skips_bad_training_images_only(tmp_path):
    root = tmp_path / "own"
    (root).mkdir()
    (root / "classes.json").write_text(json.dumps({"classes": ["a", "b"], "encoding": "index"}))
    rng = np.random.default_rng(2)
    for split, stem in (("train", "good"), ("train", "bad"), ("val", "v")):
        Image.fromarray(_image(rng, 6, 6)).save(_mkdir(root / "images" / split) / f"{stem}.jpg")
        _png(root / "labels" / split / f"{stem}.png", np.zeros((6, 6) if stem != "bad" else (5, 6), np.uint8))
    source = folder_builder.load_split(str(tmp_path / "tfds"), "train", str(root), skip_bad_examples=True)
    assert [source[i]["id"] for i in range(len(source))] == ["good"]
    _png(root / "labels" / "train" / "good.png", np.zeros((5, 6), np.uint8))  # now every training example is bad
    with pytest.raises(BadExampleError, match=r"fcn_folder split 'train': all 2 examples are bad; "
                                              r"the first: .*bad.png: label is 5x6"):
        folder_builder.prepare(str(tmp_path / "tfds_all_bad"), str(root), skip_bad_examples=True)
    with pytest.raises(BadExampleError, match=r"bad.png: label is 5x6 but image .*bad.jpg is 6x6"):
        folder_builder.prepare(str(tmp_path / "strict"), str(root))


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_unknown_colour_names_the_file(tmp_path):
    root = tmp_path / "own"
    (root / "images").mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"classes": ["bg", "fg"], "colors": [[0, 0, 0], [255, 0, 0]],
                                                   "encoding": "rgb"}))
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / f"{stem}.jpg")
        _png(root / "labels" / f"{stem}.png", np.zeros((4, 4, 3), np.uint8))
    _png(root / "labels" / "b.png", np.full((4, 4, 3), 7, np.uint8))
    with pytest.raises(BadExampleError, match=r"b.png: colour\(s\) \(7, 7, 7\) are not classes of dataset"):
        folder_builder.prepare(str(tmp_path / "tfds"), str(root))


def test_cityscapes_ade20k_and_pascal_context_labels_are_mapped(tmp_path):
    rng = np.random.default_rng(3)
    city = tmp_path / "city"
    for split in ("train", "val"):
        _png(city / "leftImg8bit" / split / "ulm" / f"ulm_{split}_leftImg8bit.png", _image(rng, 4, 8))
        _png(city / "gtFine" / split / "ulm" / f"ulm_{split}_gtFine_labelIds.png",
             np.array([[7, 8, 26, 33, 0, 1, 23, 24]] * 4, np.uint8))
    label = folder_builder.load_split(str(tmp_path / "tfds_city"), "val", str(city), "cityscapes")[0]["label"]
    np.testing.assert_array_equal(label[0], [0, 1, 13, 18, 255, 255, 10, 11])

    ade = tmp_path / "ade" / "ADEChallengeData2016"
    for split in ("training", "validation"):
        Image.fromarray(_image(rng, 3, 4)).save(_mkdir(ade / "images" / split) / f"ADE_{split}.jpg")
        _png(ade / "annotations" / split / f"ADE_{split}.png", np.array([[0, 1, 2, 150]] * 3, np.uint8))
    label = folder_builder.load_split(str(tmp_path / "tfds_ade"), "train", str(tmp_path / "ade"), "ade20k")[0]["label"]
    np.testing.assert_array_equal(label[0], [255, 0, 1, 149])

    voc = tmp_path / "context" / "VOCdevkit" / "VOC2010"
    for split, image_id in (("train", "2008_000002"), ("val", "2008_000009")):
        Image.fromarray(_image(rng, 3, 3)).save(_mkdir(voc / "JPEGImages") / f"{image_id}.jpg")
        _png(voc / "SegmentationClassContext" / f"{image_id}.png", np.array([[0, 1, 59]] * 3, np.uint8))
        (_mkdir(voc / "ImageSets" / "SegmentationContext") / f"{split}.txt").write_text(image_id + "\n")
    source = folder_builder.load_split(str(tmp_path / "tfds_ctx"), "val", str(tmp_path / "context"), "pascal_context")
    np.testing.assert_array_equal(source[0]["label"][0], [255, 0, 58])
    assert source[0]["id"] == "2008_000009"


def test_sift_flow_stores_both_label_sets_as_two_heads(tmp_path):
    root, rng = tmp_path / "sift", np.random.default_rng(4)
    semantic, geometric = np.array([[0, 1, 17, 33]] * 2), np.array([[-1, 1, 2, 3]] * 2)
    for split, image_id in (("trainval", "coast_a"), ("test", "street_b")):
        (root / f"{split}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.txt").write_text(image_id + "\n")
        Image.fromarray(_image(rng, 2, 4)).save(_mkdir(root / "Images" / layouts.SIFT_FLOW_DIR) / f"{image_id}.jpg")
        scipy.io.savemat(_mkdir(root / "SemanticLabels" / layouts.SIFT_FLOW_DIR) / f"{image_id}.mat", {"S": semantic})
        scipy.io.savemat(_mkdir(root / "GeoLabels" / layouts.SIFT_FLOW_DIR) / f"{image_id}.mat", {"S": geometric})
    source = folder_builder.load_split(str(tmp_path / "tfds"), "test", str(root), "sift_flow")
    label = source[0]["label"]
    assert label.shape == (2, 4, 2) and label.dtype == np.uint8
    np.testing.assert_array_equal(label[0, :, 0], [255, 0, 16, 32])
    np.testing.assert_array_equal(label[0, :, 1], [255, 0, 1, 2])
    geometric_only = folder_builder.load_split(str(tmp_path / "tfds_geo"), "trainval", str(root), "sift_flow_geometric")
    np.testing.assert_array_equal(geometric_only[0]["label"][0], [255, 0, 1, 2])
    with pytest.raises(ValueError, match=r"split 'val' is not in .*sift \(its splits: "):
        folder_builder.load_split(str(tmp_path / "tfds"), "val", str(root), "sift_flow")


def test_cli_prints_split_sizes_and_pixels_per_class(tmp_path, capsys):
    root = tmp_path / "own"
    (root).mkdir()
    (root / "classes.json").write_text(json.dumps({"classes": ["bg", "leaf"], "encoding": "index"}))
    rng = np.random.default_rng(5)
    for split, stem, label in (("train", "a", [[0, 1], [1, 255]]), ("train", "b", [[1, 1], [1, 1]]),
                               ("val", "c", [[0, 0], [0, 1]])):
        Image.fromarray(_image(rng, 2, 2)).save(_mkdir(root / "images" / split) / f"{stem}.png")
        _png(root / "labels" / split / f"{stem}.png", np.array(label, np.uint8))
    assert folder_dataset.main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "tfds")]) == 0
    out = capsys.readouterr().out.splitlines()
    table = [line.split() for line in out if line.split() and line.split()[0] in ("images", "bg", "leaf", "(ignored)")]
    # pixels, then the images holding each class, then the train split's weights:
    # median frequency: freq(bg) = 1 / 3 (image a's labelled pixels), freq(leaf) = 6 / 7, each median / freq;
    # inverse sqrt: 1 / sqrt(share) over sum(sqrt(share)), shares 1/7 and 6/7
    assert table == [["images", "2", "1"], ["bg", "1", "3"], ["leaf", "6", "1"], ["(ignored)", "1", "0"],
                     ["bg", "1", "1"], ["leaf", "2", "1"], ["bg", "1.786", "2.029"], ["leaf", "0.694", "0.828"]]
    assert "class weights from train (config.loss.class_weights)" in out
    assert folder_dataset.main(["--manual_dir", str(tmp_path / "missing"), "--data_dir", str(tmp_path / "t2")]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def _binary_masks(root, rng):
    """A folder of 0/255 masks (255 = the object) whose classes.json keeps the default ignore label 255."""
    root.mkdir()
    (root / "classes.json").write_text(json.dumps({"classes": ["background", "object"], "encoding": "index"}))
    mask = np.array([[0, 255], [255, 255]], np.uint8)
    for split, stem in (("train", "a"), ("train", "b"), ("val", "c")):
        Image.fromarray(_image(rng, 2, 2)).save(_mkdir(root / "images" / split) / f"{stem}.png")
        _png(root / "labels" / split / f"{stem}.png", mask)


def test_0_255_masks_under_ignore_label_255_are_a_warning_naming_the_form_and_its_fix(tmp_path, capsys, caplog):
    root, data_dir = tmp_path / "masks", tmp_path / "tfds"
    _binary_masks(root, np.random.default_rng(3))
    assert folder_dataset.main(["--manual_dir", str(root), "--data_dir", str(data_dir)]) == 0
    version_dir = str(data_dir / "fcn_folder" / "folder" / "1.0.0")
    expected = (f"warning: {version_dir}: no labelled pixel of class object in any split (train, val): no score "
                "measures it (its IU is n/a, or 0 where predicted); the labels hold only 0 and 255, and 255 is the "
                f'ignore label: for 0/255 masks (255 = object) add "id_map": {{"0": 0, "255": 1}} to '
                f"{root}/classes.json (then delete {version_dir} and build again)")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("fcn_jax")] == [expected]
    table = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("object", "(ign"))]
    assert table[:2] == [["object", "0", "0"], ["(ignored)", "6", "3"]]
    caplog.clear()
    folder_builder.load_split(str(data_dir), "val", str(root))  # said again whenever the data is read
    assert [r.getMessage() for r in caplog.records if r.name.startswith("fcn_jax")] == [expected]

    # the fix as the warning gives it: 255 is the object, nothing is ignored, no warning
    (root / "classes.json").write_text(json.dumps({"classes": ["background", "object"], "encoding": "index",
                                                   "id_map": {"0": 0, "255": 1}}))
    caplog.clear()
    fixed = folder_builder.prepare(str(tmp_path / "tfds_fixed"), str(root))
    assert not [r for r in caplog.records if r.name.startswith("fcn_jax")]
    np.testing.assert_array_equal(folder_builder.load_split(str(tmp_path / "tfds_fixed"), "val", str(root))[0]["label"],
                                  [[0, 1], [1, 1]])
    (train,) = folder_builder.split_counts(fixed)["train"]
    assert (train.pixels.tolist(), train.images.tolist(), train.ignored) == ([2, 6], [2, 2], 0)


def test_a_class_no_split_labels_is_named_without_the_binary_hint_where_it_does_not_apply(tmp_path, caplog):
    root = tmp_path / "own"
    root.mkdir()
    (root / "classes.json").write_text(json.dumps({"classes": ["bg", "leaf", "stem"], "encoding": "index"}))
    rng = np.random.default_rng(4)
    for split, stem in (("train", "a"), ("val", "b")):
        Image.fromarray(_image(rng, 2, 2)).save(_mkdir(root / "images" / split) / f"{stem}.png")
        _png(root / "labels" / split / f"{stem}.png", np.array([[0, 1], [1, 255]], np.uint8))
    prepared = folder_builder.prepare(str(tmp_path / "tfds"), str(root))
    assert folder_builder.label_warnings(prepared) == [
        f"{prepared.data_dir}: no labelled pixel of class stem in any split (train, val): no score measures it "
        "(its IU is n/a, or 0 where predicted)"]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("fcn_jax")] == [
        "warning: " + folder_builder.label_warnings(prepared)[0]]


@pytest.fixture
def default_sigterm():
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_build_stopped_by_sigterm_leaves_no_incomplete_folder_and_says_so(tmp_path, capsys, monkeypatch,
                                                                            default_sigterm):
    root, data_dir = tmp_path / "masks", tmp_path / "tfds"
    _binary_masks(root, np.random.default_rng(3))
    read = folder_builder.read_example

    def read_then_sigterm(files, heads):  # SIGTERM arrives while tfds writes the first split
        os.kill(os.getpid(), signal.SIGTERM)
        return read(files, heads)

    monkeypatch.setattr(folder_builder, "read_example", read_then_sigterm)
    assert folder_dataset.main(["--manual_dir", str(root), "--data_dir", str(data_dir)]) == layouts.BUILD_STOPPED
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"stopped: an unfinished build leaves nothing in {data_dir}; run the same command again")
    assert os.listdir(data_dir / "fcn_folder" / "folder") == []  # no incomplete.* folder
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_build_after_a_killed_one_removes_its_incomplete_folder(tmp_path, caplog):
    root, data_dir = tmp_path / "masks", tmp_path / "tfds"
    _binary_masks(root, np.random.default_rng(3))
    left = data_dir / "fcn_folder" / "folder" / "incomplete.Q7W2ZK_1.0.0"  # as a kill -9 mid-build leaves it
    _mkdir(left)
    (left / "fcn_folder-train.array_record-00000-of-00001").write_bytes(b"half")
    prepared = folder_builder.prepare(str(data_dir), str(root))
    assert sorted(os.listdir(data_dir / "fcn_folder" / "folder")) == ["1.0.0"]
    assert f"removed {left}, left by an interrupted build" in [r.getMessage() for r in caplog.records]
    assert prepared.info.splits["train"].num_examples == 2


def test_without_tensorflow_preparing_is_one_error_line_and_a_prepared_dataset_reads(tmp_path):
    """The GPU / TPU images: `.[train]` without TensorFlow reads what was prepared where TensorFlow was."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    manual = data_synthetic.write_synthetic_folder(str(tmp_path / "shapes"), num_train=4, num_val=2)
    command = [sys.executable, "-m", "tests.no_tensorflow", "fcn_jax.folder_dataset", "--manual_dir", manual,
               "--data_dir", str(tmp_path / "tfds")]
    env = {**os.environ, "PYTHONPATH": str(root)}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        'error: preparing a dataset needs TensorFlow: pip install ".[prepare]" (training from an already prepared '
        'data_dir does not)')
    assert "Traceback" not in refused.stderr
    folder_builder.prepare(str(tmp_path / "tfds"), manual)  # here TensorFlow is importable
    read = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert read.returncode == 0, read.stderr[-2000:]
    assert ["images", "4", "2"] in [line.split() for line in read.stdout.splitlines()]  # the train and val counts
