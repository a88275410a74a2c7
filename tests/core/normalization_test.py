"""core/normalization.py: known pixels of both normalisations, one error line for an unknown one, `affine` as the
same map."""
import numpy as np
import pytest

from fcn_jax.core import normalization


def test_caffe_bgr_known_pixel():
    out = normalization.normalize(np.array([[[10, 20, 30]]], np.uint8), "caffe_bgr")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434], atol=1e-5)


def test_imagenet_rgb_known_pixel():
    out = normalization.normalize(np.array([[[255, 0, 128]]], np.uint8), "imagenet_rgb")
    np.testing.assert_allclose(out[0, 0], [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225],
                               rtol=1e-6)


@pytest.mark.parametrize("mode", normalization.NORMALIZATIONS)
def test_affine_is_the_same_map(mode):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 3), dtype=np.uint8)
    matrix, offset = normalization.affine(mode)
    np.testing.assert_allclose(pixels @ matrix.T + offset, normalization.normalize(pixels, mode), atol=1e-4)


@pytest.mark.parametrize("mode", normalization.NORMALIZATIONS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_in_place_equals_the_expression_bit_for_bit_and_jax_traces_the_expression(mode, dtype):
    image = np.random.default_rng(1).uniform(0, 255, (4, 7, 3)).astype(dtype)
    out = np.full((6, 9, 3), np.nan, np.float32)[1:5, :7]  # a strided view, as a batch row's window is
    written = normalization.normalize(image[:, ::-1], mode, out=out)
    assert written is out
    np.testing.assert_array_equal(out, normalization.normalize(image[:, ::-1], mode))
    import jax
    import jax.numpy as jnp

    traced = jax.jit(lambda x: normalization.normalize(x, mode))(jnp.asarray(image[:, ::-1]))
    np.testing.assert_allclose(np.asarray(traced), out, rtol=1e-6, atol=1e-5)


def test_unknown_normalization_is_one_line():
    with pytest.raises(ValueError, match="^unknown normalization 'bgr'; expected one of caffe_bgr, imagenet_rgb$"):
        normalization.normalize(np.zeros((1, 1, 3), np.uint8), "bgr")
