"""data/label_checks.py: classes without a labelled pixel named, and 0/255 masks under ignore label 255 told apart
from other datasets, with the id_map that declares them."""
from fcn_jax.data import dataset_info, label_checks

BINARY = dataset_info.from_json({"classes": ["background", "object"], "encoding": "index"})


def test_every_class_labelled_is_no_warning():
    assert label_checks.unlabelled_warning(BINARY, [5, 3], "in val") == ""


def test_0_255_masks_are_named_with_the_id_map_that_declares_them():
    assert label_checks.unlabelled_classes(BINARY, [5, 0]) == ["object"]
    assert label_checks.unlabelled_warning(BINARY, [5, 0], "in any split (train, val)", ignored=9,
                                           fix_in="data/masks/classes.json") == (
        "no labelled pixel of class object in any split (train, val): no score measures it (its IU is n/a, or 0 "
        "where predicted); the labels hold only 0 and 255, and 255 is the ignore label: for 0/255 masks (255 = "
        'object) add "id_map": {"0": 0, "255": 1} to data/masks/classes.json')
    fixed = dataset_info.from_json({"classes": ["background", "object"], "encoding": "index",
                                    "id_map": {"0": 0, "255": 1}})
    assert dict(fixed.id_map) == {0: 0, 255: 1}  # the fix is a valid description


def test_the_binary_hint_only_where_the_labels_can_be_0_255_masks():
    assert label_checks.looks_like_binary_masks(BINARY, [5, 0], ignored=None)  # evaluate: ignored pixels uncounted
    assert not label_checks.looks_like_binary_masks(BINARY, [5, 0], ignored=0)  # nothing ignored: no 255 at all
    assert not label_checks.looks_like_binary_masks(BINARY, [0, 4], ignored=3)  # class 0 is the one missing
    colours = dataset_info.from_json({"classes": ["bg", "fg"], "encoding": "rgb", "colors": [[0, 0, 0], [9, 9, 9]]})
    assert not label_checks.looks_like_binary_masks(colours, [5, 0], ignored=2)  # colour-coded: no raw 255
    other_ignore = dataset_info.from_json({"classes": ["bg", "fg"], "encoding": "index", "ignore_label": 100})
    assert not label_checks.looks_like_binary_masks(other_ignore, [5, 0], ignored=2)


def test_several_classes_are_listed_and_a_long_list_cut():
    three = dataset_info.from_json({"classes": ["bg", "leaf", "stem"], "encoding": "index"})
    assert label_checks.unlabelled_warning(three, [4, 0, 0], "in val", ignored=0) == (
        "no labelled pixel of classes leaf, stem in val: no score measures them (their IU is n/a, or 0 where "
        "predicted)")
    many = dataset_info.generic(12)
    assert label_checks.unlabelled_warning(many, [1, 1] + [0] * 10, "in val", ignored=0).startswith(
        "no labelled pixel of classes class_2, class_3, class_4, class_5, class_6, class_7, class_8, class_9 and 2 "
        "more in val: ")


def test_classes_a_description_declares_unused_are_not_reported():
    synthetic = dataset_info.PRESETS["synthetic"]  # VOC's 21 ids, 15 of them "unused (...)"
    labelled = [1 if not name.startswith("unused") else 0 for name in synthetic.classes]
    assert label_checks.unlabelled_warning(synthetic, labelled, "in voc_val") == ""
    labelled[synthetic.classes.index("disc")] = 0
    assert label_checks.unlabelled_classes(synthetic, labelled) == ["disc"]
