"""infer/onnx_export.py: symbolic sizes become run-time arithmetic (floor division, crops, pads) equal to jax's on
every size; what it cannot lower is one line naming it. (The FCNs themselves: tests/infer/export_test.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest

from fcn_jax.infer import onnx_export


def _run(model, images):
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})


def test_symbolic_sizes_floor_division_crops_and_pads_equal_jax_on_every_size():
    def segment(params, images):  # (b, h, w, 3) uint8
        x = images.astype(jnp.float32) * params[0]
        h, w = x.shape[1], x.shape[2]
        x = x[:, 1:1 + (h + 1) // 2, :w - w // 3]  # crops whose sizes are floor divisions of the size
        x = jnp.pad(x, ((0, 0), (h % 3, 2), (1, (w + 1) // 2 % 2), (0, 0)), constant_values=-1.0)
        return x, jnp.argmax(x, axis=-1).astype(jnp.uint8)

    params = [np.float32(0.5)]
    model = onnx_export.to_onnx(segment, params)
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][:3] == ["B", "H", "W"]
    rng = np.random.default_rng(0)
    for shape in ((1, 2, 1), (2, 7, 5), (1, 12, 13), (3, 31, 2)):
        images = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        values, masks = _run(model, images)
        expected = segment(params, images)
        np.testing.assert_array_equal(values, expected[0])
        np.testing.assert_array_equal(masks, expected[1])


def test_what_it_cannot_lower_is_one_line_naming_it():
    with pytest.raises(NotImplementedError, match=r"^ONNX export: no lowering for primitive 'sort' \(inputs "
                                                  r"uint8\[b,h,w,3\]\)$"):
        onnx_export.to_onnx(lambda params, images: (jnp.sort(images, axis=-1),), [])
    with pytest.raises(ValueError, match=r"^ONNX export: no bfloat16 tensors; export a float32 model"):
        onnx_export.to_onnx(lambda params, images: (images.astype(jnp.bfloat16) * params[0],),
                            [jax.numpy.ones((), jnp.bfloat16)])
