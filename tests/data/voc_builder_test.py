"""data/voc_builder.py (python -m fcn_jax.voc_dataset): tfds build from tiny VOC + SBD trees, split rules, and bad-input
errors."""

import logging
import pathlib

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

from fcn_jax import voc_dataset as vd
from fcn_jax.data import image_io, layouts, voc_builder
from fcn_jax.data import synthetic as data_synthetic
from fcn_jax.data import voc as data_voc
from fcn_jax.data.dataset_info import PRESETS

VOC_TRAIN = ["2007_000032", "2007_000039"]
VOC_VAL = ["2007_000033", "2007_000042", "2008_000009", "2007_000061"]
SBD_TRAIN = ["2007_000032", "2008_000009", "2007_000042", "2009_000001"]
SBD_VAL = ["2007_000033", "2007_000061"]
# The first three ids of the official seg11valid list; 2008_000009 is not in it.
OFFICIAL_IN_VOC_VAL = ["2007_000033", "2007_000042", "2007_000061"]


def _rng_for(image_id):
    return np.random.default_rng(int(image_id.replace("_", "")))


def _image(image_id):
    """(H, W, 3) uint8; size varies with the id."""
    rng = _rng_for(image_id)
    height, width = 20 + int(image_id[-1]) * 3, 28 + int(image_id[-2]) * 2
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _label(image_id, border=True):
    """(H, W) uint8 with background, one class derived from the id, and a 255 border."""
    height, width = _image(image_id).shape[:2]
    label = np.zeros((height, width), np.uint8)
    label[4:14, 5:20] = 1 + int(image_id[-1]) % 20
    if border:
        label[4, 5:20] = 255
    return label


VOC_PALETTE = PRESETS["voc"].palette()


def _save_png(path, label, palette=VOC_PALETTE):
    image = Image.fromarray(label)
    image.putpalette(palette.tobytes())
    image.save(path)


def _save_jpeg(path, image):
    Image.fromarray(image).save(path, quality=95)


def _save_mat(path, label):
    scipy.io.savemat(path, {"GTcls": {"Segmentation": label, "CategoriesPresent": np.array([[1]])}})


def write_tree(root, voc_train=VOC_TRAIN, voc_val=VOC_VAL, sbd_train=SBD_TRAIN, sbd_val=SBD_VAL):
    voc, sbd = root / data_voc.VOC_DIR, root / data_voc.SBD_DIR
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    for folder in ("img", "cls"):
        (sbd / folder).mkdir(parents=True)
    for image_id in voc_train + voc_val:
        _save_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", _image(image_id))
        _save_png(voc / "SegmentationClass" / f"{image_id}.png", _label(image_id))
    for image_id in sbd_train + sbd_val:
        _save_jpeg(sbd / "img" / f"{image_id}.jpg", _image(image_id))
        _save_mat(sbd / "cls" / f"{image_id}.mat", _label(image_id, border=False))
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(voc_train) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(voc_val) + "\n")
    (sbd / "train.txt").write_text("\n".join(sbd_train) + "\n")
    (sbd / "val.txt").write_text("\n".join(sbd_val) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(manual_dir, data_dir) with one prepared tiny dataset shared by the tests."""
    manual_dir = write_tree(tmp_path_factory.mktemp("raw"))
    data_dir = tmp_path_factory.mktemp("tfds")
    voc_builder.prepare(str(data_dir), str(manual_dir))
    return manual_dir, data_dir


def _ids(source):
    return [example["id"] for example in source]


def test_split_sizes_and_order(tiny):
    manual_dir, data_dir = tiny
    sources = {split: voc_builder.load_split(str(data_dir), split) for split in data_voc.SPLITS}
    assert {split: _ids(s) for split, s in sources.items()} == {
        "voc_train": VOC_TRAIN,
        "voc_val": VOC_VAL,
        "sbd_train": SBD_TRAIN,
        "sbd_val": SBD_VAL,
        "seg11valid": OFFICIAL_IN_VOC_VAL,
        # 2007_000042 is official seg11valid, so it leaves the training set.
        "sbd_train_no_seg11valid": ["2007_000032", "2008_000009", "2009_000001"],
    }
    info = voc_builder.VocSbd(data_dir=str(data_dir), config="strict").info
    assert info.metadata["seg11valid_rule"].startswith("official list (3 of 736")
    assert info.metadata["manual_dir"] == str(manual_dir.resolve())


def test_examples_match_files(tiny):
    manual_dir, data_dir = tiny
    image_folder = {"voc": manual_dir / data_voc.VOC_DIR / "JPEGImages", "sbd": manual_dir / data_voc.SBD_DIR / "img"}
    for split, kind, border in (("voc_val", "voc", True), ("sbd_train", "sbd", False), ("seg11valid", "voc", True)):
        builder = voc_builder.VocSbd(data_dir=str(data_dir), config="strict")
        raw = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
        for index, example in enumerate(voc_builder.load_split(str(data_dir), split)):
            image_id = example["id"]
            assert isinstance(image_id, str)
            assert example["image"].dtype == np.uint8 and example["label"].dtype == np.uint8
            # An RGB JPEG is stored as its own bytes, so nothing is lost.
            original = image_folder[kind] / f"{image_id}.jpg"
            assert raw[index]["image"] == original.read_bytes()
            assert example["image"].shape == np.asarray(Image.open(original)).shape
            np.testing.assert_array_equal(example["label"], _label(image_id, border=border))
    assert set(np.unique(voc_builder.load_split(str(data_dir), "voc_val")[0]["label"])) == {0, 4, 255}


def test_non_rgb_image_is_converted(tree):
    """A greyscale JPEG becomes RGB (tfds re-encodes it) instead of failing or keeping one channel."""
    files = _voc_files(tree)
    grey = _image("2007_000033")[:, :, 0]
    Image.fromarray(grey).save(files.image, quality=95)
    example = data_voc.read_example(files)
    assert example["image"].shape == grey.shape + (3,)
    np.testing.assert_array_equal(example["image"][:, :, 0], np.asarray(Image.open(files.image)))
    np.testing.assert_array_equal(example["image"][:, :, 0], example["image"][:, :, 2])


def test_source_indexing(tiny):
    source = voc_builder.load_split(str(tiny[1]), "voc_val")
    assert len(source) == 4
    assert source[-1]["id"] == VOC_VAL[-1]
    with pytest.raises(IndexError):
        source[4]


def test_derived_seg11valid_from_synthetic(tmp_path):
    """Synthetic ids are not in the official list: VOC val not in SBD train, year <= 2011."""
    manual_dir = data_synthetic.write_synthetic_voc(str(tmp_path / "raw"), num_train=4, num_val=12, num_sbd_only=2,
                                                    seed=3)
    voc_val = layouts.read_id_list(pathlib.Path(manual_dir) / data_voc.VOC_DIR / "ImageSets/Segmentation/val.txt")
    sbd_train = layouts.read_id_list(pathlib.Path(manual_dir) / data_voc.SBD_DIR / "train.txt")
    expected = [i for i in voc_val if i not in sbd_train and int(i[:4]) <= 2011]
    assert 0 < len(expected) < len(voc_val)  # the rule removes something
    source = voc_builder.load_split(str(tmp_path / "tfds"), "seg11valid", manual_dir)
    assert _ids(source) == expected
    train = _ids(voc_builder.load_split(str(tmp_path / "tfds"), "sbd_train_no_seg11valid"))
    assert train == sbd_train and not set(train) & set(expected)


def test_load_split_errors(tiny, tmp_path):
    manual_dir, data_dir = tiny
    with pytest.raises(ValueError, match="unknown voc_sbd split 'train'"):
        voc_builder.load_split(str(data_dir), "train")
    with pytest.raises(FileNotFoundError, match="not prepared there; pass manual_dir"):
        voc_builder.load_split(str(tmp_path), "voc_val")
    with pytest.raises(ValueError, match=f"prepared from manual_dir {manual_dir.resolve()}, not {tmp_path}"):
        voc_builder.load_split(str(data_dir), "voc_val", str(tmp_path))


# ---------------------------------------------------------------- bad input


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "raw")


def _voc_files(root, image_id="2007_000033"):
    voc = root / data_voc.VOC_DIR
    return layouts.ExampleFiles(image_id, voc / "JPEGImages" / f"{image_id}.jpg",
                           voc / "SegmentationClass" / f"{image_id}.png", voc / "ImageSets/Segmentation/val.txt")


def _sbd_files(root, image_id="2007_000033"):
    sbd = root / data_voc.SBD_DIR
    return layouts.ExampleFiles(image_id, sbd / "img" / f"{image_id}.jpg", sbd / "cls" / f"{image_id}.mat",
                                sbd / "val.txt")


def test_missing_folder_names_it_and_layout(tree, tmp_path):
    (tree / data_voc.SBD_DIR / "cls").rename(tree / "elsewhere")
    with pytest.raises(FileNotFoundError, match=rf"^{tree / data_voc.SBD_DIR / 'cls'}: not found; "
                                                r"manual_dir must contain VOCdevkit/VOC2012/\{JPEGImages"):
        data_voc.split_files(tree)
    (tree / "VOCdevkit").rename(tree / "elsewhere2")
    with pytest.raises(FileNotFoundError,
                       match=rf"^{tree / data_voc.VOC_DIR}, {tree / data_voc.SBD_DIR / 'cls'}: not found"):
        voc_builder.prepare(str(tmp_path / "tfds"), str(tree))
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / 'nowhere'}: manual_dir not found; it must contain"):
        voc_builder.prepare(str(tmp_path / "tfds"), str(tmp_path / "nowhere"))


def test_listed_id_without_label(tree):
    files = _voc_files(tree)
    files.label.unlink()
    with pytest.raises(image_io.BadExampleError,
                       match=f"{files.label}: missing, but id '2007_000033' is listed in .*val.txt"):
        data_voc.read_example(files)


def test_label_value_out_of_range(tree):
    files = _voc_files(tree)
    label = _label("2007_000033")
    label[0, 0], label[1, 1] = 21, 100
    _save_png(files.label, label)
    with pytest.raises(image_io.BadExampleError,
                       match=rf"{files.label}: label values \[21, 100\] are not classes: expected 0..20"):
        data_voc.read_example(files)


def test_sbd_label_value_out_of_range(tree):
    files = _sbd_files(tree)
    label = _label("2007_000033", border=False).astype(np.int32)
    label[0, 0], label[1, 1] = -1, 300
    _save_mat(files.label, label)
    with pytest.raises(image_io.BadExampleError,
                       match=rf"{files.label}: label values \[-1, 300\] are not classes: expected 0..20"):
        data_voc.read_example(files)


@pytest.mark.parametrize("which", ["image", "label"])
def test_corrupt_file(tree, which):
    files = _voc_files(tree)
    path = getattr(files, which)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated
    with pytest.raises(image_io.BadExampleError, match=f"{path}: cannot decode image"):
        data_voc.read_example(files)


def test_corrupt_mat(tree):
    files = _sbd_files(tree)
    files.label.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(image_io.BadExampleError, match=f"{files.label}: cannot read .mat file"):
        data_voc.read_example(files)


def test_mat_without_segmentation(tree):
    files = _sbd_files(tree)
    scipy.io.savemat(files.label, {"GTinst": {"Segmentation": _label("2007_000033", border=False)}})
    with pytest.raises(image_io.BadExampleError, match=f"{files.label}: no struct GTcls with field Segmentation"):
        data_voc.read_example(files)


def test_rgb_label_refused_with_hint(tree):
    files = _voc_files(tree)
    Image.open(files.label).convert("RGB").save(files.label)
    with pytest.raises(image_io.BadExampleError,
                       match=rf"{files.label}: label PNG has mode 'RGB', expected a palette "
                             r"\('P'\) PNG whose indices are class ids; "
                             r"colour-coded labels need \"encoding\": \"rgb\""):
        data_voc.read_example(files)


def test_wrong_palette_refused(tree):
    files = _voc_files(tree)
    grey = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    _save_png(files.label, _label("2007_000033"), palette=grey)
    with pytest.raises(image_io.BadExampleError,
                       match=rf"{files.label}: palette colours of indices \[4\] differ from the voc colours"):
        data_voc.read_example(files)


def test_size_mismatch(tree):
    files = _voc_files(tree)
    _save_png(files.label, _label("2007_000033")[:-2])
    with pytest.raises(image_io.BadExampleError,
                       match=f"{files.label}: label is 27x34 but image {files.image} is 29x34"):
        data_voc.read_example(files)


def test_prepare_strict_fails_and_skip_counts(tmp_path, caplog):
    """A bad training image fails the strict build; skip_bad_examples drops it; bad eval data always fails."""
    manual_dir = write_tree(tmp_path / "raw")
    bad = manual_dir / data_voc.VOC_DIR / "JPEGImages/2007_000039.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(image_io.BadExampleError, match=f"{bad}: cannot decode image"):
        voc_builder.prepare(str(tmp_path / "strict"), str(manual_dir))
    with caplog.at_level(logging.WARNING, logger=vd.__name__):
        voc_builder.prepare(str(tmp_path / "skip"), str(manual_dir), skip_bad_examples=True)
    source = voc_builder.load_split(str(tmp_path / "skip"), "voc_train", skip_bad_examples=True)
    assert _ids(source) == ["2007_000032"]
    assert "voc_sbd voc_train: skipped 1 of 2 bad examples" in caplog.text
    # The same kind of damage in an evaluation split is never skipped.
    (manual_dir / data_voc.SBD_DIR / "cls/2007_000061.mat").unlink()
    with pytest.raises(image_io.BadExampleError, match="2007_000061.mat: missing, but id '2007_000061' is listed in"):
        voc_builder.prepare(str(tmp_path / "skip2"), str(manual_dir), skip_bad_examples=True)


def test_an_id_listed_twice_is_refused_naming_the_list(tmp_path):
    root = write_tree(tmp_path / "raw")
    listed = root / data_voc.VOC_DIR / "ImageSets/Segmentation/train.txt"
    ids = listed.read_text().split()
    listed.write_text("\n".join(ids + ids[:1]) + "\n")
    with pytest.raises(image_io.BadExampleError, match=rf"{listed}: id '{ids[0]}' is listed twice \(entries 1 and "
                                                 rf"{len(ids) + 1}\)"):
        data_voc.split_files(root)


def test_an_empty_split_list_names_the_list_not_no_examples_yielded(tmp_path):
    root = write_tree(tmp_path / "raw")
    listed = root / data_voc.SBD_DIR / "val.txt"
    listed.write_text("\n")
    with pytest.raises(image_io.BadExampleError, match=rf"{listed}: split sbd_val would be empty"):
        voc_builder.prepare(str(tmp_path / "tfds"), str(root))


def test_editing_a_split_list_after_the_build_is_noticed(tmp_path):
    root = write_tree(tmp_path / "raw")
    voc_builder.prepare(str(tmp_path / "tfds"), str(root))
    voc_builder.prepare(str(tmp_path / "tfds"), str(root))  # unchanged lists: reused
    listed = root / data_voc.VOC_DIR / "ImageSets/Segmentation/train.txt"
    listed.write_text("\n".join(listed.read_text().split()[:-1]) + "\n")
    with pytest.raises(ValueError, match="the split lists in .* changed since it was prepared; delete "):
        voc_builder.prepare(str(tmp_path / "tfds"), str(root))
