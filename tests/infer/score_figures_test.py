"""Tests for fcn_jax.infer.score_figures: the normalised rows the confusion figure draws, and the files written."""
import numpy as np
from PIL import Image

from fcn_jax.data import dataset_info
from fcn_jax.infer import score_figures


def test_rows_are_shares_of_each_labelled_class():
    confusion = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    np.testing.assert_allclose(score_figures.normalized_rows(confusion),
                               [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])


def test_figures_are_written(tmp_path):
    score_figures.confusion_figure(str(tmp_path / "c.png"), np.eye(3, dtype=int) * 5, ["a", "b", "c"])
    info = dataset_info.from_json({"classes": ["bg", "thing"]})
    image = np.zeros((8, 10, 3), np.uint8)
    label = np.zeros((8, 10), np.uint8)
    label[2:5, 3:6] = 1
    score_figures.comparison_figure(str(tmp_path / "p.png"), image, label, label, info, "x", marked=label == 1,
                                    marked_title="marked")
    assert Image.open(tmp_path / "c.png").size == (685, 535)  # (5.35 + 1.5) x 5.35 inches, 5.35 = 4 + 0.45 x 3
    width, height = Image.open(tmp_path / "p.png").size
    assert height == 360 and width == int(4 * 3.2 * 10 / 8 * 100)  # four panels
