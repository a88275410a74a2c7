"""data/dataset_info.py: the three label encodings, id maps, the ignore label, descriptions read, written and
checked."""
import json

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fcn_jax.data import dataset_info, visualize
from fcn_jax.data.dataset_info import PRESETS
from fcn_jax.data.image_io import BadExampleError

SHAPES = {"name": "shapes", "classes": ["background", "red", "green"], "colors": [[0, 0, 0], [200, 0, 0], [0, 200, 0]],
          "encoding": "rgb", "ignore_color": [255, 255, 255]}


def test_palette_labels_are_their_indices_and_their_colours_are_checked(tmp_path):
    label = np.array([[0, 1, 20], [255, 7, 0]], np.uint8)
    visualize.save_mask(label, tmp_path / "l.png")
    np.testing.assert_array_equal(PRESETS["voc"].decode(tmp_path / "l.png"), label)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(BadExampleError, match=r"mode 'RGB', expected a palette .* need \"encoding\": \"rgb\""):
        PRESETS["voc"].decode(tmp_path / "rgb.png")
    wrong = Image.fromarray(label, mode="P")
    wrong.putpalette([9] * 768)
    wrong.save(tmp_path / "wrong.png")
    with pytest.raises(BadExampleError, match=r"palette colours of indices \[0, 1, 7, 20\] differ from the voc"):
        PRESETS["voc"].decode(tmp_path / "wrong.png")
    label[0, 0] = 21
    visualize.save_mask(label, tmp_path / "l.png")
    with pytest.raises(BadExampleError, match=r"l.png: label values \[21\] are not classes: expected 0..20 "
                                              r"\(background, aeroplane, .*\) or 255 \(ignore\)"):
        PRESETS["voc"].decode(tmp_path / "l.png")


def test_rgb_labels_map_each_colour_to_its_class_and_refuse_unknown_colours(tmp_path):
    info = dataset_info.from_json(SHAPES)
    rgb = np.array([[[0, 0, 0], [200, 0, 0]], [[255, 255, 255], [0, 200, 0]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "l.png")
    np.testing.assert_array_equal(info.decode(tmp_path / "l.png"), [[0, 1], [255, 2]])
    rgb[1, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "l.png")
    with pytest.raises(BadExampleError, match=r"l.png: colour\(s\) \(1, 2, 3\) are not classes of shapes \(first at "
                                              r"row 1, column 0\); known colours: \(0, 0, 0\) background"):
        info.decode(tmp_path / "l.png")


def test_index_labels_take_values_and_the_raw_ignore_value(tmp_path):
    info = dataset_info.from_json({"classes": ["a", "b", "c"], "encoding": "index", "ignore_label": 9})
    Image.fromarray(np.array([[0, 2, 9]], np.uint8)).save(tmp_path / "l.png")
    np.testing.assert_array_equal(info.decode(tmp_path / "l.png"), [[0, 2, 255]])
    Image.fromarray(np.array([[0, 3]], np.uint16)).save(tmp_path / "wide.png")  # 16-bit PNG
    with pytest.raises(BadExampleError, match=r"wide.png: label values \[3\] are not classes: expected 0..2"):
        info.decode(tmp_path / "wide.png")
    Image.fromarray(np.zeros((1, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(BadExampleError, match=r"is RGB, but the dataset's encoding is 'index'"):
        info.decode(tmp_path / "rgb.png")


def test_cityscapes_label_ids_become_train_ids_and_the_rest_is_ignored(tmp_path):
    raw = np.array([[7, 8, 26, 33], [0, 1, 6, 30]], np.uint8)  # road, sidewalk, car, bicycle; void ids
    Image.fromarray(raw).save(tmp_path / "x_gtFine_labelIds.png")
    np.testing.assert_array_equal(PRESETS["cityscapes"].decode(tmp_path / "x_gtFine_labelIds.png"),
                                  [[0, 1, 13, 18], [255, 255, 255, 255]])
    assert PRESETS["cityscapes"].num_classes == 19 and PRESETS["cityscapes"].classes[13] == "car"
    Image.fromarray(np.array([[7, 40]], np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(BadExampleError, match=r"bad.png: label values \[40\] are not in the cityscapes id map"):
        PRESETS["cityscapes"].decode(tmp_path / "bad.png")


def test_ade20k_and_pascal_context_shift_ids_and_ignore_zero(tmp_path):
    Image.fromarray(np.array([[0, 1, 150]], np.uint8)).save(tmp_path / "ade.png")
    np.testing.assert_array_equal(PRESETS["ade20k"].decode(tmp_path / "ade.png"), [[255, 0, 149]])
    assert PRESETS["ade20k"].num_classes == 150 and PRESETS["ade20k"].classes[:3] == ("wall", "building", "sky")
    assert PRESETS["pascal_context"].classes[:4] == ("aeroplane", "bag", "bed", "bedclothes")  # 1..59 alphabetical
    assert list(PRESETS["pascal_context"].classes) == sorted(PRESETS["pascal_context"].classes)
    Image.fromarray(np.array([[0, 59, 60]], np.uint8)).save(tmp_path / "context.png")
    with pytest.raises(BadExampleError, match=r"label values \[60\] are not in the pascal_context id map"):
        PRESETS["pascal_context"].decode(tmp_path / "context.png")
    assert PRESETS["pascal_context"].num_classes == 59


def test_sift_flow_mat_labels_as_the_reference_reads_them(tmp_path):
    scipy.io.savemat(tmp_path / "sem.mat", {"S": np.array([[0, 1, 33]], np.int32)})
    scipy.io.savemat(tmp_path / "geo.mat", {"S": np.array([[-1, 0, 1, 3]], np.int32)})
    np.testing.assert_array_equal(PRESETS["sift_flow_semantic"].decode(tmp_path / "sem.mat"), [[255, 0, 32]])
    np.testing.assert_array_equal(PRESETS["sift_flow_geometric"].decode(tmp_path / "geo.mat"), [[255, 255, 0, 2]])
    scipy.io.savemat(tmp_path / "other.mat", {"T": np.zeros((2, 2))})
    with pytest.raises(BadExampleError, match=r"other.mat: no \(H, W\) numeric variable 'S'"):
        PRESETS["sift_flow_semantic"].decode(tmp_path / "other.mat")


@pytest.mark.parametrize("change, message", [
    ({"clases": []}, "unknown field"),
    ({"classes": []}, "'classes' must be a non-empty list"),
    ({"classes": ["a", "a", "b"]}, "distinct names"),
    ({"colors": [[0, 0, 0]]}, "one \\[r, g, b\\] \\(0..255\\) per class \\(3\\)"),
    ({"colors": [[0, 0, 0], [0, 0, 0], [1, 1, 1]]}, "share a colour"),
    ({"ignore_color": [0, 0, 0]}, "share a colour"),
    ({"encoding": "jpeg"}, "'encoding' is 'jpeg'"),
    ({"id_map": {"3": 7}}, "'id_map' maps to values outside 0..2"),
    ({"background": 5}, "'background' must be a class index"),
    ({"background": True}, "'background' must be a class index"),
    ({"encoding": "index", "ignore_label": 1}, "'ignore_label' 1 is class 'red', which could then never be labelled"),
    ({"ignore_label": 7}, "'ignore_label' is for palette / index labels; colour-coded ones mark unlabelled pixels"),
    ({"name": ""}, "'name' must be a non-empty string"),
    ({"colors": []}, "'colors' must be one"),
    ({"colors": [[0, 0, 0], [True, 0, 0], [0, 200, 0]]}, "'colors' must be one"),
    ({"ignore_label": -1}, "'ignore_label' must be a non-negative integer"),
])
def test_bad_descriptions_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        dataset_info.from_json({**SHAPES, **change}, "classes.json")


def test_a_classes_file_that_is_not_utf8_json_is_named(tmp_path):
    (tmp_path / "classes.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match=r"classes.json: not valid UTF-8 JSON"):
        dataset_info.read(tmp_path / "classes.json")


def test_every_preset_round_trips_through_json_and_defaults_fill_in():
    for name, info in PRESETS.items():
        assert dataset_info.from_json(json.loads(json.dumps(info.to_json())), name) == info
        assert len(info.colors) == info.num_classes
    info = dataset_info.from_json({"classes": ["background", "cat"]})
    assert info.encoding == "palette" and info.background == 0 and info.colors == ((0, 0, 0), (128, 0, 0))
    assert dataset_info.from_json({"classes": ["sky", "road"]}).background is None
    assert PRESETS["synthetic"].classes[:3] == ("background", "triangle", "unused (bicycle)")
    assert PRESETS["synthetic"].background == 0


def test_stored_descriptions_name_the_classes_of_weights(tmp_path):
    shapes = dataset_info.from_json(SHAPES)
    dataset_info.write((("", shapes),), str(tmp_path / "run"))
    (tmp_path / "run" / "checkpoints").mkdir()
    assert dataset_info.for_weights(str(tmp_path / "run"), 3) == (("", shapes),)
    assert dataset_info.for_weights(str(tmp_path / "run" / "checkpoints"), 3) == (("", shapes),)
    with pytest.raises(ValueError, match="the shapes description has 3 classes but the weights 4"):
        dataset_info.for_weights(str(tmp_path / "run"), 4)
    assert dataset_info.for_weights(str(tmp_path / "none"), 21)[0][1] == PRESETS["voc"]
    assert dataset_info.for_weights(None, 2)[0][1].classes == ("class_0", "class_1")
    assert dataset_info.for_weights(str(tmp_path / "run"), 19, "cityscapes")[0][1] == PRESETS["cityscapes"]
    heads = (("sem", PRESETS["sift_flow_semantic"]), ("geo", PRESETS["sift_flow_geometric"]))
    dataset_info.write(heads, str(tmp_path / "sift"))
    specs = (("sem", 33), ("geo", 3))
    assert dataset_info.for_weights(str(tmp_path / "sift"), specs) == heads
    assert dataset_info.for_weights(None, specs, "sift_flow") == heads  # the multi-head preset
    assert [(n, i.classes[0]) for n, i in dataset_info.for_weights(None, (("a", 2), ("b", 3)))] == [
        ("a", "class_0"), ("b", "class_0")]  # no description: generic names under the network's head names
    with pytest.raises(ValueError, match=r"has 33\+3 classes but the weights 33\+4"):
        dataset_info.for_weights(str(tmp_path / "sift"), (("sem", 33), ("geo", 4)))


def test_a_palette_keeps_voc_colours_beyond_the_classes():
    palette = dataset_info.from_json(SHAPES).palette()
    assert palette.shape == (256, 3) and palette[1].tolist() == [200, 0, 0]
    np.testing.assert_array_equal(palette[3:], visualize.voc_palette()[3:])
