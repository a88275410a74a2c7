"""visualize.py: palette colours, overlays and figures drawn with the dataset's names and colours."""
import numpy as np
import pytest

from fcn_jax.data import visualize


def test_voc_palette_golden():
    palette = visualize.voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[255].tolist() == [224, 224, 192]  # ignore / border
    assert len({tuple(c) for c in palette[:21]}) == 21


def test_mask_png_round_trip_keeps_class_ids(tmp_path):
    mask = np.array([[0, 1, 20], [255, 15, 0]], np.uint8)
    visualize.save_mask(mask, tmp_path / "m.png")
    from PIL import Image

    image = Image.open(tmp_path / "m.png")
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), mask)
    assert np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)[15].tolist() == [192, 128, 128]


def test_mask_errors():
    with pytest.raises(ValueError, match="must be \\(H, W\\)"):
        visualize.mask_to_image(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="0..255"):
        visualize.mask_to_image(np.full((2, 2), 300))


def test_overlay_blends_foreground_only():
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[0, 1], [255, 15]])
    out = visualize.overlay(image, mask, alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100]  # background untouched
    assert out[1, 0].tolist() == [100, 100, 100]  # ignore untouched
    assert out[0, 1].tolist() == [114, 50, 50]  # (100 + (128, 0, 0)) / 2
    assert out[1, 1].tolist() == [146, 114, 114]  # (100 + (192, 128, 128)) / 2
    with pytest.raises(ValueError, match="differ in size"):
        visualize.overlay(image, np.zeros((3, 3)))
