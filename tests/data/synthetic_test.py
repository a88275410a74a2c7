"""data/synthetic.py: deterministic VOC/SBD look-alike on disk, in the formats voc_dataset reads."""

import colorsys
import hashlib
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from fcn_jax import synthetic
from fcn_jax.data import layouts
from fcn_jax.data import synthetic as data_synthetic
from fcn_jax.data import voc as data_voc
from fcn_jax.data.dataset_info import PRESETS

SMALL = dict(num_train=10, num_val=12, num_sbd_only=4)
CLASS_IDS = {class_id for class_id, _, _ in data_synthetic.SHAPE_CLASSES}


def _digest(root):
    """{relative path: sha256} of every file under root."""
    root = pathlib.Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _jpeg_hashes(digest):
    return {h for path, h in digest.items() if path.endswith(".jpg")}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return pathlib.Path(data_synthetic.write_synthetic_voc(str(tmp_path_factory.mktemp("syn")), seed=0, **SMALL))


def _lists(root):
    voc, sbd = root / data_voc.VOC_DIR, root / data_voc.SBD_DIR
    return {name: layouts.read_id_list(path) for name, path in {
        "voc_train": voc / "ImageSets/Segmentation/train.txt", "voc_val": voc / "ImageSets/Segmentation/val.txt",
        "sbd_train": sbd / "train.txt", "sbd_val": sbd / "val.txt"}.items()}


def test_same_seed_same_bytes_other_seed_differs(tree, tmp_path):
    again = data_synthetic.write_synthetic_voc(str(tmp_path / "again"), seed=0, **SMALL)
    other = data_synthetic.write_synthetic_voc(str(tmp_path / "other"), seed=1, **SMALL)
    digest = _digest(tree)
    assert len(digest) == 2 * 22 + 2 * len(_lists(tree)["sbd_train"] + _lists(tree)["sbd_val"]) + 4 + 1
    assert _digest(again) == digest
    assert not _jpeg_hashes(_digest(other)) & _jpeg_hashes(digest)


def test_idempotent_and_refuses_other_params(tree):
    marker = tree / data_synthetic.MARKER
    assert json.loads(marker.read_text()) == {**SMALL, "seed": 0}
    before = {p: p.stat().st_mtime_ns for p in tree.rglob("*") if p.is_file()}
    assert data_synthetic.write_synthetic_voc(str(tree), seed=0, **SMALL) == str(tree)
    assert {p: p.stat().st_mtime_ns for p in tree.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match=f"{marker}: synthetic data written with"):
        data_synthetic.write_synthetic_voc(str(tree), seed=0, num_train=11, num_val=12, num_sbd_only=4)


def test_split_structure_mimics_voc_and_sbd(tree):
    lists = _lists(tree)
    assert (len(lists["voc_train"]), len(lists["voc_val"])) == (10, 12)
    voc_ids = set(lists["voc_train"] + lists["voc_val"])
    sbd_ids = set(lists["sbd_train"] + lists["sbd_val"])
    assert not set(lists["sbd_train"]) & set(lists["sbd_val"])
    # SBD covers exactly the VOC ids up to 2011, plus its own images.
    assert {i for i in voc_ids if int(i[:4]) <= 2011} <= sbd_ids
    assert all(int(i[:4]) <= 2011 for i in sbd_ids)
    assert len(sbd_ids - voc_ids) == 4
    # Some VOC val ids are in SBD train: what seg11valid exists to exclude.
    assert set(lists["voc_val"]) & set(lists["sbd_train"])
    # No id can be a real VOC id, so the official seg11valid list never applies.
    assert not (voc_ids | sbd_ids) & set(data_voc.official_seg11valid())


def test_files_in_voc_formats(tree):
    voc, sbd = tree / data_voc.VOC_DIR, tree / data_voc.SBD_DIR
    lists = _lists(tree)
    sizes, borders = set(), 0
    for image_id in lists["voc_train"] + lists["voc_val"]:
        image = Image.open(voc / "JPEGImages" / f"{image_id}.jpg")
        png = Image.open(voc / "SegmentationClass" / f"{image_id}.png")
        assert (image.format, image.mode, png.mode) == ("JPEG", "RGB", "P")
        label = PRESETS["voc"].decode(voc / "SegmentationClass" / f"{image_id}.png")  # checks palette + values
        assert set(np.unique(label)) <= CLASS_IDS | {0, 255} and set(np.unique(label)) & CLASS_IDS
        assert label.shape == (image.height, image.width)
        sizes.add(label.shape)
        borders += int((label == 255).any())
        if image_id in lists["sbd_train"] + lists["sbd_val"]:
            sbd_label = data_voc.read_sbd_label(sbd / "cls" / f"{image_id}.mat")
            assert 255 not in sbd_label  # SBD has no borders ...
            np.testing.assert_array_equal(sbd_label[label != 255], label[label != 255])  # ... same classes
            sbd_jpeg = (sbd / "img" / f"{image_id}.jpg").read_bytes()
            assert sbd_jpeg == (voc / "JPEGImages" / f"{image_id}.jpg").read_bytes()
    assert borders == 22
    assert all(data_synthetic.MIN_SIDE <= s <= data_synthetic.MAX_SIDE for shape in sizes for s in shape)
    assert len(sizes) > 15 and any(h != w for h, w in sizes)


def test_each_class_has_its_colour_family(tree):
    """Median hue of a class's pixels sits at its family's hue: learnable from colour alone."""
    voc = tree / data_voc.VOC_DIR
    hue_of = {class_id: hue for class_id, _, hue in data_synthetic.SHAPE_CLASSES}
    checked = 0
    for path in sorted((voc / "JPEGImages").iterdir()):
        image = np.asarray(Image.open(path), np.float32) / 255
        label = np.asarray(Image.open(voc / "SegmentationClass" / f"{path.stem}.png"))
        for class_id in set(np.unique(label)) & set(hue_of):
            pixels = image[label == class_id]
            hue = colorsys.rgb_to_hsv(*np.median(pixels, axis=0))[0]
            distance = min(abs(hue - hue_of[class_id]), 1 - abs(hue - hue_of[class_id]))
            assert distance < 0.07, (path, class_id, hue)
            checked += 1
    assert checked >= 22


def test_with_borders_golden():
    """A 3 px band of 255 across every class change, nowhere else."""
    classes = np.zeros((12, 14), np.uint8)
    classes[3:9, 4:10] = 8
    label = data_synthetic.with_borders(classes)
    # Edge between columns 3|4 and 9|10: pixels 2..4 and 8..10 of a middle row.
    assert np.flatnonzero(label[6] == 255).tolist() == [2, 3, 4, 8, 9, 10]
    assert np.flatnonzero(label[:, 6] == 255).tolist() == [1, 2, 3, 7, 8, 9]
    assert set(np.unique(label[label != 255])) == {0, 8}
    np.testing.assert_array_equal(label[label != 255], classes[label != 255])


def test_mat_header_is_fixed_and_loadable(tree):
    mat = next((tree / data_voc.SBD_DIR / "cls").iterdir()).read_bytes()
    assert mat.startswith(b"MATLAB 5.0 MAT-file, written by fcn_jax.synthetic")
    assert b"Created on" not in mat[:128]


@pytest.mark.parametrize("counts, message", [
    ({"num_train": 0}, "num_train=0 must be at least 1"), ({"num_val": -3}, "num_val=-3 must be at least 1"),
    ({"num_sbd_only": -1}, "num_sbd_only=-1 must be at least 0")])
def test_image_counts_that_leave_a_split_empty_are_refused(tmp_path, counts, message):
    with pytest.raises(ValueError, match=message):
        data_synthetic.write_synthetic_voc(str(tmp_path), **counts)
    with pytest.raises(SystemExit, match=f"error: synthetic data: {message}"):
        synthetic.main(["--out", str(tmp_path)] + [f"--{k}={v}" for k, v in counts.items()])
    assert not any(tmp_path.iterdir())  # nothing written
