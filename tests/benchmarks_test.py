"""The benchmarks' PyTorch reference computes what fcn_jax computes (only where torch is installed).

CI's venv has no torch: these tests skip there and run in the bench venv (pip install -e ".[train,bench]").
"""
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax.models import fcn, vgg, zoo

# benchmarks.torch_fcn and benchmarks.train_step import torch: skip (where it is missing) before importing them
torch = pytest.importorskip("torch")

from benchmarks import common, torch_fcn, train_step  # noqa: E402

WIDTH = 1 / 16


def _outputs(variant, geometry, images, dtype="fp32"):
    model = zoo.create_model(variant, geometry=geometry, width=WIDTH,
                                dtype={"fp32": jnp.float32, "bf16": jnp.bfloat16}[dtype])
    params = common.random_params(model, images.shape)
    ours = np.asarray(model.apply({"params": params}, images))
    reference = torch_fcn.TorchFCN(variant, geometry=geometry, width=WIDTH,
                                   dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
    reference = torch_fcn.load_fcn_jax_params(reference, params).eval()
    with torch.inference_mode():
        theirs = reference(torch.from_numpy(common.nchw(images))).numpy().transpose(0, 2, 3, 1)
    return ours, theirs


@pytest.mark.parametrize("geometry", vgg.GEOMETRIES)
@pytest.mark.parametrize("variant", fcn.VARIANTS)
def test_torch_reference_forward_equals_fcn_jax(variant, geometry):
    images = common.random_images((2, 45, 37, 3))  # odd sizes: ceil pools and crops matter
    ours, theirs = _outputs(variant, geometry, images)
    assert ours.shape == theirs.shape == (2, 45, 37, 21)
    assert np.abs(theirs).max() > 1e-2  # random score layers: a real comparison, not of zeros
    assert common.relative_error(ours, theirs) < 1e-4


def test_torch_reference_bfloat16_is_close_to_fcn_jax_bfloat16():
    ours, theirs = _outputs("fcn8s", "caffe", common.random_images((1, 40, 40, 3)), dtype="bf16")
    assert theirs.dtype == np.float32  # logits come back float32 in both
    assert common.relative_error(ours, theirs) < 5e-2


def test_torch_sgd_step_equals_fcn_jax_train_step():
    # Two steps, so momentum, weight decay, 2x bias lr and frozen upsampling all take part.
    assert train_step.check_equal_steps("fcn8s", "caffe", steps=2) < 1e-4


def test_loading_rejects_wrong_params():
    model = zoo.create_model("fcn8s", width=WIDTH)
    params = common.random_params(model, (1, 32, 32, 3))
    other = torch_fcn.TorchFCN("fcn8s", width=2 * WIDTH)
    with pytest.raises(ValueError, match="shape mismatch"):
        torch_fcn.load_fcn_jax_params(other, params)
    del params["score_pool3"]
    with pytest.raises(KeyError, match="score_pool3"):
        torch_fcn.load_fcn_jax_params(torch_fcn.TorchFCN("fcn8s", width=WIDTH), params)
