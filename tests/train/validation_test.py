"""train/validation.py: a class the eval split never labels (0/255 masks under ignore label 255) is a warning at every
evaluation, not a silent mean IU of 1.0."""
import logging
import types

import numpy as np

from fcn_jax.data import dataset_info
from fcn_jax.infer import steps
from fcn_jax.train import validation

BINARY = dataset_info.from_json({"classes": ["background", "object"], "encoding": "index"})


class ScoredRunner:
    """A runner in a non-plain mode whose scores are a given confusion matrix: validate's reporting alone."""

    mode = types.SimpleNamespace(plain=False)
    compilations = 1

    def __init__(self, confusion):
        self.confusion = np.asarray(confusion, np.int64)

    def scores(self, params, batches):
        list(batches)  # the examples are checked as they are read
        scores = steps.Scores((("", 2),))
        scores.confusions[""] += self.confusion
        return scores


def _validate(confusion):
    config = types.SimpleNamespace(model=types.SimpleNamespace(num_classes=2, heads=()),
                                   eval=types.SimpleNamespace(num_samples=0),
                                   data=types.SimpleNamespace(eval_split="val"))
    example = {"image": np.zeros((2, 2, 3), np.uint8), "label": np.array([[0, 255], [255, 255]], np.uint8), "id": "a"}
    return validation.validate({}, 40, config=config, eval_source=[example], runner=ScoredRunner(confusion),
                               workdir="unused", info=(("", BINARY),))


def test_a_class_without_labelled_pixels_in_the_eval_split_is_a_warning_naming_it_and_the_fix(caplog):
    caplog.set_level(logging.INFO)
    result = _validate([[1, 0], [0, 0]])
    assert result["mean_iou"] == 1.0 and result["per_class_iou"]["object"] != result["per_class_iou"]["object"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "step 40: no labelled pixel of class object in val: no score measures it (its IU is n/a, or 0 where "
        "predicted); the labels hold only 0 and 255, and 255 is the ignore label: for 0/255 masks (255 = object) "
        'add "id_map": {"0": 0, "255": 1} to the dataset\'s classes.json']


def test_every_class_labelled_is_no_warning(caplog):
    _validate([[3, 1], [0, 2]])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
