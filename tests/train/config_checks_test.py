"""train/config_checks.py: config.loss becomes a checked LossSpec; bad settings end in one ConfigError line."""
import pytest

from experiments import demo
from fcn_jax.core import losses
from fcn_jax.train import config_checks
from fcn_jax.train.step import ConfigError


def test_the_default_loss_is_plain_cross_entropy():
    assert config_checks.loss_spec(demo.get_config()) == losses.PLAIN


def test_loss_fields_reach_the_spec_and_counted_weights_fill_a_named_method():
    config = demo.get_config()
    k = config.model.num_classes
    config.loss.update(name="ohem", ohem_threshold=0.5, ohem_min_kept=7, dice_weight=0.25)
    assert config_checks.loss_spec(config) == losses.LossSpec(name="ohem", ohem_threshold=0.5, ohem_min_kept=7,
                                                              dice_weight=0.25)
    config.loss.class_weights = ",".join(["1"] * (k - 1) + ["10"])
    assert config_checks.loss_spec(config).class_weights == ((1.0,) * (k - 1) + (10.0,),)
    config.loss.class_weights = "median_frequency"
    counted = ((2.0,) * k,)
    assert config_checks.loss_spec(config, counted).class_weights == counted
    assert config_checks.loss_spec(config, ()).class_weights == ()  # validate_config: before the count


@pytest.mark.parametrize("field,value,match", [
    ("name", "lovasz", "config.loss.name='lovasz': expected one of cross_entropy, focal, ohem"),
    ("class_weights", "1,2", r"config.loss.class_weights='1,2': \[2\] weights per head for \[\d+\] classes"),
    ("class_weights", "median", "expected one of none, median_frequency, inverse_sqrt"),
    ("focal_gamma", -1.0, "must be >= 0"),
    ("ohem_threshold", 1.5, r"must be in \(0, 1\]"),
])
def test_bad_loss_settings_fail_validation_in_one_line(field, value, match):
    config = demo.get_config()
    config.loss[field] = value
    with pytest.raises(ConfigError, match=match) as error:
        config_checks.validate_config(config)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("field,value,match", [
    ("train_fraction", 0.0, r"config.data.train_fraction=0.0 must be in \(0, 1\]"),
    ("folds", 1, "folds must be 0 .none. or >= 2"),
])
def test_bad_subsets_fail_validation_in_one_line(field, value, match):
    config = demo.get_config()
    config.data[field] = value
    with pytest.raises(ConfigError, match=match):
        config_checks.validate_config(config)
