"""image_io.py: label PNGs read as class ids with their palette checked, examples checked, images found."""
import numpy as np
import pytest
from PIL import Image

from fcn_jax import image_io, visualize


def test_voc_label_png_round_trips_the_class_ids(tmp_path):
    label = np.array([[0, 1, 20], [255, 7, 0]], np.uint8)
    visualize.save_mask(label, tmp_path / "l.png")
    np.testing.assert_array_equal(image_io.read_voc_label(tmp_path / "l.png"), label)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(image_io.BadExampleError, match="mode 'RGB', expected a palette .* map each colour"):
        image_io.read_voc_label(tmp_path / "rgb.png")
    wrong = Image.fromarray(label, mode="P")
    wrong.putpalette([9] * 768)
    wrong.save(tmp_path / "wrong.png")
    with pytest.raises(image_io.BadExampleError, match=r"palette colours of indices \[0, 1, 7, 20, 255\] differ"):
        image_io.read_voc_label(tmp_path / "wrong.png")


def test_check_label_values_names_the_file_and_the_bad_values():
    assert image_io.check_label_values(np.array([[0, 2, 255]]), "x.png", num_classes=3).dtype == np.uint8
    with pytest.raises(image_io.BadExampleError, match=r"^x.png: label values \[3, 7\] outside 0..2 and 255$"):
        image_io.check_label_values(np.array([[0, 3, 7, 255]]), "x.png", num_classes=3)


def test_check_example_returns_bytes_ids_and_refuses_bad_examples():
    image, label = np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3), np.uint8)
    assert image_io.check_example({"image": image, "label": label, "id": "a"})[2] == b"a"
    with pytest.raises(ValueError, match=r"example 'a': label must be uint8 \(2, 3\) like its image"):
        image_io.check_example({"image": image, "label": label[:1], "id": "a"})
    with pytest.raises(ValueError, match=r"example 'a': label values \[21\] outside 0..20 and 255"):
        image_io.check_example({"image": image, "label": label + 21, "id": "a"})


def test_find_images_takes_folders_in_name_order_and_refuses_clashing_stems(tmp_path):
    for name in ("b.jpg", "a.png"):
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("no image")
    assert image_io.find_images([str(tmp_path)]) == [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]
    assert image_io.image_size(str(tmp_path / "b.jpg")) == (4, 5)
    assert image_io.read_rgb(str(tmp_path / "a.png")).shape == (4, 5, 3)
    (tmp_path / "other").mkdir()
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "other" / "a.jpg")
    with pytest.raises(ValueError, match="would both write a.png"):
        image_io.find_images([str(tmp_path), str(tmp_path / "other")])
