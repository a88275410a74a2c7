"""models/resnet.py: output strides, batch norm frozen or synchronised over the data mesh (8 fake devices = 1 device),
the aux loss, running statistics, one-line errors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fcn_test import count_macs

from experiments import resnet_demo
from fcn_jax.core import parallel
from fcn_jax.models import resnet, zoo
from fcn_jax.train import config_checks
from fcn_jax.train import step as step_module

TINY = {"layers": (1, 1, 1, 1), "width_per_group": 8, "expansion": 1}


def _model(**options):
    return zoo.create_model("fcn_resnet50", num_classes=4, resnet={**TINY, **options})


def _random(params, seed=0):
    rs = np.random.RandomState(seed)

    def leaf(path, x):
        name = path[-1].key
        if name == "var":
            return rs.uniform(0.5, 1.5, x.shape).astype(np.float32)
        return (x + 0.1 * rs.randn(*x.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, jax.device_get(params))


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_sets_the_feature_map_and_logits_keep_the_image_size(output_stride):
    model = _model(output_stride=output_stride)
    params = zoo.param_template(model, jax.random.PRNGKey(0))
    images = jnp.ones((1, 65, 97, 3))
    (_, state) = model.apply({"params": params}, images, capture_intermediates=True, mutable=["intermediates"])
    layer4 = state["intermediates"]["backbone"]["layer4_0"]["__call__"][0]
    assert layer4.shape[1:3] == (-(-65 // output_stride), -(-97 // output_stride))
    assert model.apply({"params": params}, images).shape == (1, 65, 97, 4)


def _step_on(devices, config, state, batch):
    mesh = parallel.create_mesh(devices)
    step = functools.partial(step_module.train_step, loss_reduction="mean", num_classes=4,
                             aux_loss_weight=config.aux_loss_weight)
    state = parallel.replicate(jax.device_get(state), mesh)
    new_state, metrics = jax.jit(step, out_shardings=parallel.replicated(mesh))(
        state, parallel.host_to_global(batch, mesh), parallel.replicate(jax.random.PRNGKey(1), mesh))
    return jax.device_get(new_state.params), float(metrics["loss"])


@pytest.mark.parametrize("batch_norm", ["frozen", "sync"])
def test_batch_norm_on_8_devices_equals_1_device_and_moves_the_statistics_only_when_synchronised(batch_norm):
    config = resnet_demo.get_config()
    config.model.num_classes = 4
    config.model.resnet.update(TINY, batch_norm=batch_norm)
    config.optim.update(optimizer="sgd", learning_rate=1e-2, momentum=0.9, warmup_steps=0, schedule="constant")
    model = zoo.from_settings(config.model)
    params = _random(zoo.param_template(model, jax.random.PRNGKey(0)))
    state = step_module.TrainState.create(apply_fn=model.apply, params=params,
                                          tx=step_module.create_optimizer(config, params))
    rs = np.random.RandomState(2)
    batch = {"image": rs.randn(8, 32, 32, 3).astype(np.float32),
             "label": rs.randint(0, 4, (8, 32, 32)).astype(np.int32)}
    params_8, loss_8 = _step_on(jax.devices(), config, state, batch)
    params_1, loss_1 = _step_on(jax.devices()[:1], config, state, batch)
    assert loss_8 == pytest.approx(loss_1, rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params_8, params_1)
    old, new = params["backbone"]["bn1"], params_8["backbone"]["bn1"]
    if batch_norm == "frozen":
        np.testing.assert_array_equal(new["mean"], old["mean"])
        np.testing.assert_array_equal(new["var"], old["var"])
    else:  # running = 0.9 running + 0.1 statistic of conv1's output over the global batch (unbiased variance)
        conv1 = jax.lax.conv_general_dilated(batch["image"], params["backbone"]["conv1"]["kernel"], (2, 2),
                                             ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        conv1 = np.asarray(conv1, np.float64).reshape(-1, conv1.shape[-1])
        np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * conv1.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * conv1.var(0, ddof=1), rtol=1e-4, atol=1e-5)
    assert np.abs(params_8["backbone"]["conv1"]["kernel"] - params["backbone"]["conv1"]["kernel"]).max() > 0


def test_the_aux_loss_is_added_with_its_weight():
    model = _model()
    params = _random(zoo.param_template(model, jax.random.PRNGKey(0)))
    rs = np.random.RandomState(3)
    images, labels = rs.randn(2, 40, 40, 3).astype(np.float32), rs.randint(0, 4, (2, 40, 40)).astype(np.int32)
    out, sown = model.apply({"params": params}, images, mutable=["aux"])

    def mean_loss(logits):
        logp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
        return -np.take_along_axis(np.asarray(logp), labels[..., None], -1).mean()

    config = resnet_demo.get_config()
    config.optim.update(learning_rate=0.0, warmup_steps=0)
    state = step_module.TrainState.create(apply_fn=model.apply, params=params,
                                          tx=step_module.create_optimizer(config, params))
    model_no_dropout = zoo.create_model("fcn_resnet50", num_classes=4, resnet=TINY, dropout_rate=0.0)
    state = state.replace(apply_fn=model_no_dropout.apply)  # training's dropout off: the eval logits' loss
    _, metrics = jax.jit(functools.partial(step_module.train_step, loss_reduction="mean", num_classes=4,
                                           aux_loss_weight=0.5))(state, {"image": images, "label": labels},
                                                                 jax.random.PRNGKey(0))
    expected = mean_loss(out) + 0.5 * mean_loss(sown["aux"]["logits"][0])
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)


def test_macs_are_torchvisions_documented_operations():
    """torchvision documents 152.717 / 232.738 GFLOPS for fcn_resnet50 / 101 (aux head included) at 520x520."""
    for variant, documented, at_500 in (("fcn_resnet50", 152.72, 143.4), ("fcn_resnet101", 232.74, 218.6)):
        model = zoo.create_model(variant, num_classes=21)
        assert round(count_macs(model, 520, mutable=("aux",)) / 1e9, 2) == documented
        assert round(count_macs(model, 500, mutable=("aux",)) / 1e9, 1) == at_500  # the model zoo's column


def test_statistics_are_frozen_params_and_bad_settings_are_one_line():
    labels = step_module.param_labels(zoo.param_template(_model()), learnable_upsample=False)
    assert labels["backbone"]["bn1"]["mean"] == labels["classifier"]["bn"]["var"] == "frozen"
    assert labels["backbone"]["bn1"]["scale"] == "weight" and labels["classifier"]["bn"]["bias"] == "bias"
    with pytest.raises(ValueError, match="output_stride 4"):
        _model(output_stride=4)
    with pytest.raises(ValueError, match="batch_norm 'local'"):
        _model(batch_norm="local")
    with pytest.raises(ValueError, match=r"layers \(1, 1\): blocks of the four stages"):
        _model(layers=(1, 1))
    with pytest.raises(ValueError, match="width_per_group 0 and expansion 1 must be >= 1"):
        _model(width_per_group=0)
    with pytest.raises(ValueError, match="width scales VGG16"):
        zoo.create_model("fcn_resnet50", num_classes=4, width=0.5)
    with pytest.raises(ValueError, match="one score head"):
        zoo.create_model("fcn_resnet50", num_classes=0, heads=(("sem", 3), ("geo", 2)))
    config = resnet_demo.get_config()
    config.model.resnet.aux = False
    with pytest.raises(step_module.ConfigError, match="needs an aux head"):
        config_checks.validate_model(config)
    assert resnet.running_statistics({"bn": {"mean": np.ones(2)}}, {"bn": {"mean": (np.zeros(2),)}})["bn"]["mean"] \
        .tolist() == [0.9, 0.9]
