"""data/image_io.py: label values checked, examples checked, images found and read as displayed."""
import numpy as np
import pytest
from PIL import Image

from fcn_jax.data import examples, image_io


def test_check_label_values_names_the_file_and_the_bad_values():
    classes = ("sky", "road", "car")
    assert image_io.check_label_values(np.array([[0, 2, 255]]), "x.png", classes).dtype == np.uint8
    with pytest.raises(image_io.BadExampleError, match=r"^x.png: label values \[3, 7\] are not classes: expected "
                                                       r"0..2 \(sky, road, car\) or 255 \(ignore\)$"):
        image_io.check_label_values(np.array([[0, 3, 7, 255]]), "x.png", classes)


def test_check_example_returns_bytes_ids_and_refuses_bad_examples():
    image, label = np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3), np.uint8)
    assert examples.check_example({"image": image, "label": label, "id": "a"})[2] == b"a"
    with pytest.raises(ValueError, match=r"example 'a': label must be uint8 \(2, 3\) like its image"):
        examples.check_example({"image": image, "label": label[:1], "id": "a"})
    with pytest.raises(ValueError, match=r"example 'a': label values \[21\] outside 0..20 and 255"):
        examples.check_example({"image": image, "label": label + 21, "id": "a"})


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


def test_16_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path):
    values = np.array([[0, 257 * 100], [65535, 257 * 3]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgb = image_io.read_rgb(str(tmp_path / "deep.png"))
    np.testing.assert_array_equal(rgb[..., 0], [[0, 100], [255, 3]])
    assert rgb.shape == (2, 2, 3) and (rgb[..., 0] == rgb[..., 2]).all()


def test_exif_orientation_gives_the_pixels_as_displayed(tmp_path):
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[0, 0] = 255  # a white top-left corner, stored landscape
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "phone.png", exif=exif.tobytes())
    shown = image_io.read_rgb(str(tmp_path / "phone.png"))
    assert shown.shape == (6, 4, 3) and shown[0, -1].tolist() == [255, 255, 255]
    assert image_io.image_size(str(tmp_path / "phone.png")) == (6, 4)  # the header's size as displayed too
    assert examples.image_sizes([{"image": shown}]) == [(6, 4)]
    assert not image_io.is_upright(Image.open(tmp_path / "phone.png"))


def test_empty_files_and_decompression_bombs_get_one_line_naming_them(tmp_path, monkeypatch):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.jpg: the file is empty \(0 bytes\)"):
        image_io.read_rgb(str(tmp_path / "empty.jpg"))
    with pytest.raises(ValueError, match=r"empty.jpg: the file is empty"):
        image_io.find_images([str(tmp_path / "empty.jpg")])
    with pytest.raises(image_io.BadExampleError, match=r"empty.jpg: the file is empty"):
        image_io.decode(b"", tmp_path / "empty.jpg")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2 x 1000: a "bomb"
    with pytest.raises(ValueError, match=r"cannot read image .*bomb.png: .*decompression bomb"):
        image_io.find_images([str(tmp_path / "bomb.png")])
    with pytest.raises(image_io.BadExampleError, match=r"bomb.png: cannot decode image"):
        image_io.decode((tmp_path / "bomb.png").read_bytes(), tmp_path / "bomb.png")
