"""data/layouts.py: the split -> files lists of the folder layout (lists, subfolders, seeded ratio) and the
benchmarks'."""
import os
import signal

import pytest

from fcn_jax.data import layouts
from fcn_jax.data.image_io import BadExampleError


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def _folder(root, stems, sub=""):
    for stem in stems:
        touch(root / "images" / sub / f"{stem}.jpg")
        touch(root / "labels" / sub / f"{stem}.png")


def _ids(splits):
    return {split: [e.image_id for e in files] for split, files in splits.items()}


def test_split_lists_name_the_stems(tmp_path):
    _folder(tmp_path, ["a", "b", "c"])
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("c\na\n")
    (tmp_path / "splits" / "test.txt").write_text("b\n")
    splits, rule = layouts.split_files("folder", tmp_path)
    assert _ids(splits) == {"test": ["b"], "train": ["c", "a"]} and rule == "lists in splits/"
    assert splits["train"][0].label == tmp_path / "labels" / "c.png"
    (tmp_path / "splits" / "test.txt").write_text("b\nz\n")
    with pytest.raises(BadExampleError, match=r"test.txt: id 'z' has no image in .*images"):
        layouts.split_files("folder", tmp_path)
    (tmp_path / "splits" / "test.txt").write_text("b\nb\n")
    with pytest.raises(BadExampleError, match=r"test.txt: id 'b' is listed twice \(entries 1 and 2\)"):
        layouts.split_files("folder", tmp_path)


def test_subfolders_are_splits(tmp_path):
    _folder(tmp_path, ["a", "b"], "train")
    _folder(tmp_path, ["c"], "val")
    splits, rule = layouts.split_files("folder", tmp_path)
    assert _ids(splits) == {"train": ["a", "b"], "val": ["c"]} and rule == "subfolders train, val"
    os.remove(tmp_path / "labels" / "val" / "c.png")
    with pytest.raises(BadExampleError, match=r"labels/val/c.png: missing, but id 'c' is in .*images/val"):
        layouts.split_files("folder", tmp_path)


def test_loose_images_next_to_split_folders_and_hidden_folders(tmp_path):
    _folder(tmp_path, ["a"], "train")
    (tmp_path / "images" / ".ipynb_checkpoints").mkdir()  # hidden: not a split
    assert _ids(layouts.split_files("folder", tmp_path)[0]) == {"train": ["a"]}
    _folder(tmp_path, ["b", "c"])
    with pytest.raises(BadExampleError, match=r"holds split folders \(train\) and images next to them \(b.jpg, "
                                              r"c.jpg\), which no split would read"):
        layouts.split_files("folder", tmp_path)


def test_training_and_validation_splits_must_not_share_images(tmp_path):
    _folder(tmp_path, ["a", "b", "c"])
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("a\nb\n")
    (tmp_path / "splits" / "val.txt").write_text("b\nc\n")
    (tmp_path / "splits" / "trainval.txt").write_text("a\nb\nc\n")
    splits, _ = layouts.split_files("folder", tmp_path)
    with pytest.raises(BadExampleError, match=r"splits 'train' and 'val' share 1 image\(s\) \(b.jpg\); validation"):
        layouts.check_disjoint(splits, "train", "val")
    layouts.check_disjoint(splits, "trainval", "trainval")  # the same split, asked for on purpose
    other = tmp_path / "sub"
    _folder(other, ["0001"], "train")
    _folder(other, ["0001"], "val")  # numbered files: the same stem, different images
    layouts.check_disjoint(layouts.split_files("folder", other)[0], "train", "val")


def test_a_flat_folder_is_split_by_a_seeded_ratio(tmp_path):
    stems = [f"im{i:02d}" for i in range(20)]
    _folder(tmp_path, stems)
    splits, rule = layouts.split_files("folder", tmp_path, val_fraction=0.25, split_seed=3)
    ids = _ids(splits)
    assert len(ids["val"]) == 5 and len(ids["train"]) == 15 and sorted(ids["train"] + ids["val"]) == stems
    assert "5 of 20 images in val" in rule
    assert _ids(layouts.split_files("folder", tmp_path, val_fraction=0.25, split_seed=3)[0]) == ids  # seeded
    assert _ids(layouts.split_files("folder", tmp_path, val_fraction=0.25, split_seed=4)[0]) != ids
    with pytest.raises(ValueError, match=r"val_fraction=1.0 must be in \(0, 1\)"):
        layouts.split_files("folder", tmp_path, val_fraction=1.0)
    touch(tmp_path / "images" / "im00.png")
    with pytest.raises(BadExampleError, match=r"im00.jpg and .*im00.png have the same stem"):
        layouts.split_files("folder", tmp_path)


def test_a_folder_without_images_or_labels_says_what_it_needs(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"labels: not found; a folder dataset holds images/, labels/ and "
                                                r"classes.json"):
        layouts.split_files("folder", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"classes.json: not found"):
        layouts.describe("folder", str(tmp_path))


def test_cityscapes_ade20k_pascal_context_and_sift_flow_trees(tmp_path):
    city = tmp_path / "city"
    for split, names in (("train", ["aachen_000000_000019", "bochum_000000_000313"]),
                         ("val", ["lindau_000000_000019"])):
        for name in names:
            touch(city / "leftImg8bit" / split / name.split("_")[0] / f"{name}_leftImg8bit.png")
            touch(city / "gtFine" / split / name.split("_")[0] / f"{name}_gtFine_labelIds.png")
    splits, _ = layouts.split_files("cityscapes", city)
    assert _ids(splits) == {"train": ["aachen_000000_000019", "bochum_000000_000313"], "val": ["lindau_000000_000019"]}
    assert splits["val"][0].label.name == "lindau_000000_000019_gtFine_labelIds.png"

    ade = tmp_path / "ade" / "ADEChallengeData2016"
    for split, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        touch(ade / "images" / split / f"{stem}.jpg")
        touch(ade / "annotations" / split / f"{stem}.png")
    assert _ids(layouts.split_files("ade20k", tmp_path / "ade")[0]) == {"train": ["ADE_train_00000001"],
                                                                          "val": ["ADE_val_00000001"]}

    voc = tmp_path / "context" / "VOCdevkit" / "VOC2010"
    for split, image_id in (("train", "2008_000002"), ("val", "2008_000009")):
        touch(voc / "JPEGImages" / f"{image_id}.jpg")
        touch(voc / "SegmentationClassContext" / f"{image_id}.png")
        touch(voc / "ImageSets" / "SegmentationContext" / f"{split}.txt")
        (voc / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text(image_id + "\n")
    assert _ids(layouts.split_files("pascal_context", tmp_path / "context")[0]) == {
        "train": ["2008_000002"], "val": ["2008_000009"]}

    sift = tmp_path / "sift"
    for split, image_id in (("trainval", "coast_arnat59"), ("test", "street_urb1")):
        (sift / f"{split}.txt").parent.mkdir(parents=True, exist_ok=True)
        (sift / f"{split}.txt").write_text(image_id + "\n")
        for tree, ext in (("Images", "jpg"), ("SemanticLabels", "mat"), ("GeoLabels", "mat")):
            touch(sift / tree / layouts.SIFT_FLOW_DIR / f"{image_id}.{ext}")
    both, _ = layouts.split_files("sift_flow", sift)
    assert both["test"][0].label.parent.parent.name == "SemanticLabels"
    assert [p.parent.parent.name for p in both["test"][0].extra_labels] == ["GeoLabels"]
    geo, _ = layouts.split_files("sift_flow_geometric", sift)
    assert geo["test"][0].label.parent.parent.name == "GeoLabels" and geo["test"][0].extra_labels == ()
    assert [name for name, _ in layouts.describe_heads("sift_flow", str(sift))] == ["sem", "geo"]
    os.remove(sift / "GeoLabels" / layouts.SIFT_FLOW_DIR / "street_urb1.mat")
    with pytest.raises(BadExampleError, match=r"GeoLabels/.*street_urb1.mat: missing"):
        layouts.split_files("sift_flow", sift)


def test_the_fingerprint_changes_with_a_file_or_the_description(tmp_path):
    _folder(tmp_path, ["a", "b"], "train")
    splits, _ = layouts.split_files("folder", tmp_path)
    before = layouts.fingerprint(splits, {"classes": ["x"]})
    assert layouts.fingerprint(splits, {"classes": ["x"]}) == before
    assert layouts.fingerprint(splits, {"classes": ["y"]}) != before
    (tmp_path / "labels" / "train" / "a.png").write_bytes(b"changed")
    assert layouts.fingerprint(splits, {"classes": ["x"]}) != before


def test_labels_match_their_images_whatever_the_case_of_the_extension(tmp_path):
    touch(tmp_path / "images" / "a.jpg")
    touch(tmp_path / "labels" / "a.PNG")  # saved by a tool that writes upper-case extensions
    touch(tmp_path / "images" / "b.JPG")
    touch(tmp_path / "labels" / "b.png")
    splits, _ = layouts.split_files("folder", tmp_path, val_fraction=0.5)
    labels = {e.image_id: e.label for files in splits.values() for e in files}
    assert labels == {"a": tmp_path / "labels" / "a.PNG", "b": tmp_path / "labels" / "b.png"}
    touch(tmp_path / "labels" / "a.png")
    with pytest.raises(BadExampleError, match=r"labels/a.PNG and .*labels/a.png have the same stem; rename one"):
        layouts.split_files("folder", tmp_path, val_fraction=0.5)


def _incomplete(version_dir):
    """What a tfds build killed half-way leaves beside its version folder (tfds' utils.incomplete_dir)."""
    left = version_dir.parent / f"incomplete.AB12CD_{version_dir.name}"
    touch(left / "fcn_folder-train.array_record-00000-of-00001")
    return left


def test_a_build_removes_what_a_killed_one_left_and_says_so(tmp_path, caplog):
    version_dir = tmp_path / "fcn_folder" / "folder" / "1.0.0"
    left, config_file = _incomplete(version_dir), tmp_path / "fcn_folder" / ".config" / "incomplete.0f.metadata.json"
    touch(config_file)
    touch(tmp_path / "fcn_folder" / "folder_skip_bad_examples" / "incomplete.XY34ZW_1.0.0" / "x")  # another config's
    with layouts.tfds_build(str(version_dir)):
        pass
    assert not left.exists() and not config_file.exists()
    assert (tmp_path / "fcn_folder" / "folder_skip_bad_examples" / "incomplete.XY34ZW_1.0.0").exists()
    assert [r.getMessage() for r in caplog.records] == [f"removed {p}, left by an interrupted build"
                                                        for p in sorted([config_file, left])]


@pytest.fixture
def default_sigterm():
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_during_a_build_is_a_keyboard_interrupt_so_tfds_cleans_up(tmp_path, default_sigterm):
    with pytest.raises(KeyboardInterrupt):
        with layouts.tfds_build(str(tmp_path / "d" / "c" / "1.0.0")):
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not interrupt the build")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored after the build
    handler = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # someone else's handler is left alone
    with layouts.tfds_build(str(tmp_path / "d" / "c" / "1.0.0")):
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    signal.signal(signal.SIGTERM, handler)
