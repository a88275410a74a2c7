"""Tests for fcn_jax.models.fcn and zoo: geometry, parameter counts, initialisation, upsampling exactness."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax.core import losses
from fcn_jax.models import fcn, layers, vgg, zoo

K = 21
WIDTH = 1 / 16  # 4..32 conv channels, 256 fc channels


def naive_transposed_conv(x, kernel, stride):
    """Definition by scatter: out[s*i+u, s*j+v] += x[i, j] @ kernel[u, v]."""
    n, h, w, _ = x.shape
    k, cout = kernel.shape[0], kernel.shape[3]
    out = np.zeros((n, (h - 1) * stride + k, (w - 1) * stride + k, cout))
    for u in range(k):
        for v in range(k):
            out[:, u:u + stride * h:stride, v:v + stride * w:stride] += np.einsum(
                "nhwc,cd->nhwd", x, kernel[u, v])
    return out


def make_params(model, seed=0):
    """He-normal kernels, small random biases, random score layers, bilinear upscore kernels.

    Built with NumPy from eval_shape: a jitted model.init spends ~10 s compiling the threefry RNG
    on a 2-core CPU, and random score layers make the logits non-zero (they are zero at init).
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, 1, 3)))["params"]
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        if zoo.is_upsample_param(path):
            return jnp.asarray(layers.bilinear_kernel(x.shape[0], x.shape[2]))
        fan_in = np.prod(x.shape[:-1]) if len(x.shape) > 1 else 1
        scale = np.sqrt(2 / fan_in) if path[-1] == "kernel" else 0.01
        return jnp.asarray(rng.normal(size=x.shape) * scale, jnp.float32)

    flat = flax.traverse_util.flatten_dict(shapes)
    return flax.traverse_util.unflatten_dict({k: leaf(k, v) for k, v in flat.items()})


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("variant,expected", [
    ("fcn32s", 136_152_917), ("fcn16s", 134_815_994),
    ("fcn8s", 134_489_759), ("fcn8s_atonce", 134_489_759)])
def test_parameter_counts_match_reference(variant, expected):
    shapes = jax.eval_shape(zoo.create_model(variant).init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, 3)))
    assert count(shapes) == expected


def test_parameter_tree_matches_reference_names_and_shapes():
    shapes = jax.eval_shape(fcn.FCN8s().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    flat = {"/".join(k): v.shape for k, v in
            flax.traverse_util.flatten_dict(shapes["params"]).items()}
    assert flat["backbone/conv1_1/kernel"] == (3, 3, 3, 64)
    assert flat["backbone/conv3_3/bias"] == (256,)
    assert flat["backbone/conv5_3/kernel"] == (3, 3, 512, 512)
    assert flat["backbone/fc6/kernel"] == (7, 7, 512, 4096)
    assert flat["backbone/fc7/kernel"] == (1, 1, 4096, 4096)
    assert flat["score_fr/kernel"] == (1, 1, 4096, K) and flat["score_fr/bias"] == (K,)
    assert flat["score_pool4/kernel"] == (1, 1, 512, K)
    assert flat["score_pool3/kernel"] == (1, 1, 256, K)
    for name, k in (("upscore2", 4), ("upscore_pool4", 4), ("upscore8", 16)):
        assert flat[f"{name}/kernel"] == (k, k, K, K)
        assert f"{name}/bias" not in flat
    assert len([k for k in flat if k.startswith("backbone/")]) == 2 * 15
    assert len(flat) == 30 + 6 + 3


@pytest.mark.parametrize("geometry", vgg.GEOMETRIES)
@pytest.mark.parametrize("variant", fcn.VARIANTS)
def test_output_size_equals_input_size(geometry, variant):
    model = zoo.create_model(variant, geometry=geometry, width=WIDTH)
    for size in ((1, 1), (3, 5), (227, 311), (500, 375)):
        images = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
        variables = jax.eval_shape(model.init, jax.random.key(0), images)
        out = jax.eval_shape(model.apply, variables, images)
        assert out.shape == (2, *size, K) and out.dtype == jnp.float32, size


def test_caffe_crop_offsets_are_the_reference_ones():
    assert fcn.crop_offsets("caffe", ()) == {"upscore": 19}
    assert fcn.crop_offsets("caffe", ("pool4",)) == {"score_pool4": 5, "upscore16": 27}
    assert fcn.crop_offsets("caffe", ("pool4", "pool3")) == {
        "score_pool4": 5, "score_pool3": 9, "upscore8": 31}


def test_same_crop_offsets_are_half_the_kernel_overhang():
    # (k - s) / 2 for every upsampling: 1 for the k4 s2 layers, s/2 for the final k2s one.
    assert fcn.crop_offsets("same", ()) == {"upscore": 16}
    assert fcn.crop_offsets("same", ("pool4",)) == {"upscore2": 1, "upscore16": 8}
    assert fcn.crop_offsets("same", ("pool4", "pool3")) == {
        "upscore2": 1, "upscore_pool4": 1, "upscore8": 4}


def test_caffe_blob_shapes_at_500x500_are_the_reference_ones():
    model = fcn.FCN8s(width=WIDTH)
    images = jax.ShapeDtypeStruct((1, 500, 500, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    _, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=True),
                              variables, images)
    inter = state["intermediates"]
    side = lambda name: inter[name]["__call__"][0].shape[1:3]  # noqa: E731
    assert inter["backbone"]["fc7"]["__call__"][0].shape[1:3] == (16, 16)
    assert side("upscore2") == (34, 34) and side("score_pool4") == (44, 44)      # crop 5
    assert side("upscore_pool4") == (70, 70) and side("score_pool3") == (88, 88)  # crop 9
    assert side("upscore8") == (568, 568)                                         # crop 31


def count_macs(model, size: int, mutable=()) -> int:
    """Multiply-adds of the convolutions and deconvolutions on one size x size image, from the traced shapes; a
    deconvolution counts per input cell, as Caffe does. `mutable`: collections to compute too (e.g. "aux")."""
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    _, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=lambda *_: True,
                                                       mutable=["intermediates", *mutable]), variables, images)
    outputs = flax.traverse_util.flatten_dict(state["intermediates"])
    kernels = flax.traverse_util.flatten_dict(variables["params"])
    macs = 0
    for path, out in outputs.items():
        kernel = kernels.get(path[:-1] + ("kernel",))
        if kernel is None:  # pools, dropout, whole-model outputs
            continue
        out = out[0]
        if zoo.is_upsample_param(path):  # Caffe counts a deconvolution per input cell
            stride = kernel.shape[0] // 2
            cells = ((out.shape[1] - kernel.shape[0]) // stride + 1) ** 2
        else:
            cells = out.shape[1] * out.shape[2]
        macs += int(np.prod(kernel.shape)) * cells
    return macs


def test_caffe_fcn8s_costs_the_reference_181_5_gmac_at_500x500():
    assert round(count_macs(fcn.FCN8s(), 500) / 1e9, 1) == 181.5


def _manual_fcn8s(params, images, geometry):
    """FCN-8s wired by hand from backbone features, naive upsampling and the expected crops."""
    feats = vgg.VGG16(geometry, WIDTH).apply({"params": params["backbone"]}, images)
    feats = jax.tree.map(np.asarray, feats)
    score = lambda name, x: (np.einsum("nhwc,cd->nhwd", x, params[name]["kernel"][0, 0])  # noqa
                             + params[name]["bias"])
    up = lambda name, x, s: naive_transposed_conv(x, params[name]["kernel"], s)  # noqa
    fused = score("score_fr", feats["fc7"])
    for skip, up_name in (("pool4", "upscore2"), ("pool3", "upscore_pool4")):
        a, b = up(up_name, fused, 2), score(f"score_{skip}", feats[skip])
        if geometry == "caffe":   # reference: crop score_pool4 by 5, score_pool3 by 9
            o = {"pool4": 5, "pool3": 9}[skip]
            b = b[:, o:o + a.shape[1], o:o + a.shape[2]]
        else:                     # same: crop the upsampled map by (4 - 2) / 2 = 1
            a = a[:, 1:1 + b.shape[1], 1:1 + b.shape[2]]
        fused = a + b
    o = 31 if geometry == "caffe" else 4
    return up("upscore8", fused, 8)[:, o:o + images.shape[1], o:o + images.shape[2]]


@pytest.mark.parametrize("geometry", vgg.GEOMETRIES)
def test_fcn8s_forward_equals_hand_wired_reference(geometry):
    images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 45, 37, 3)), jnp.float32)
    model = fcn.FCN8s(geometry=geometry, width=WIDTH)
    params = make_params(model)
    noise = np.random.default_rng(2).normal(size=(16, 16, K, K)) * 0.01
    params["upscore8"]["kernel"] = params["upscore8"]["kernel"] + noise  # learned, non-diagonal
    out = np.asarray(model.apply({"params": params}, images))
    expected = _manual_fcn8s(jax.tree.map(np.asarray, params), images, geometry)
    assert out.shape == (2, 45, 37, K)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_score_layers_zero_and_upsampling_bilinear_at_init():
    model = fcn.FCN8s(width=WIDTH)
    # unsafe_rbg: a cheap RNG to compile; the initialisers checked here do not use it.
    params = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"),
                                 jnp.zeros((1, 8, 8, 3)))["params"]
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert all(np.all(np.asarray(v) == 0) for v in params[name].values()), name
    for name, k in (("upscore2", 4), ("upscore_pool4", 4), ("upscore8", 16)):
        np.testing.assert_array_equal(params[name]["kernel"], layers.bilinear_kernel(k, K))
    out = model.apply({"params": params}, jnp.ones((1, 8, 8, 3)))
    assert np.all(np.asarray(out) == 0)


def test_bilinear_kernel_values():
    kernel = layers.bilinear_kernel(4, 3)
    taps = np.array([0.25, 0.75, 0.75, 0.25])
    for c in range(3):
        np.testing.assert_allclose(kernel[:, :, c, c], np.outer(taps, taps))
    off_diagonal = kernel * (1 - np.eye(3))[None, None]
    assert kernel.dtype == np.float32 and not off_diagonal.any()
    np.testing.assert_allclose(layers.bilinear_kernel(3, 1)[:, 1, 0, 0], [0.5, 1.0, 0.5])
    with pytest.raises(ValueError, match="kernel_size"):
        layers.bilinear_kernel(0, 21)


@pytest.mark.parametrize("stride", [2, 8, 16, 32])
def test_bilinear_upsampling_keeps_constants_and_ramps(stride):
    k, h, w = 2 * stride, 4, 5
    up = layers.Upsample(num_classes=2, kernel_size=k, stride=stride)
    variables = up.init(jax.random.key(0), jnp.zeros((1, h, w, 2)))
    assert jax.tree.map(jnp.shape, variables) == {"params": {"kernel": (k, k, 2, 2)}}
    # valid region: output cells covered by two input cells in each direction
    inner = (slice(stride, (h - 1) * stride + k - stride),
             slice(stride, (w - 1) * stride + k - stride))
    const = np.asarray(up.apply(variables, jnp.full((1, h, w, 2), 3.0)))[0]
    np.testing.assert_allclose(const[inner], 3.0, rtol=1e-6)
    # ramp over rows (class 0) and columns (class 1): input cell i sits at output (k-1)/2 + s*i
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ramp = np.stack([i, 2.0 * j], -1)[None].astype(np.float32)
    out = np.asarray(up.apply(variables, jnp.asarray(ramp)))[0]
    rows, cols = np.meshgrid(*(np.arange(n) for n in out.shape[:2]), indexing="ij")
    np.testing.assert_allclose(out[..., 0][inner], ((rows - (k - 1) / 2) / stride)[inner],
                               atol=1e-5)
    np.testing.assert_allclose(out[..., 1][inner], (2 * (cols - (k - 1) / 2) / stride)[inner],
                               atol=1e-5)


@pytest.mark.parametrize("hw,cin,cout,k,s", [
    ((3, 4), 2, 3, 4, 2), ((2, 5), 3, 2, 5, 2), ((3, 3), 2, 2, 3, 4), ((1, 1), 1, 1, 1, 1),
    ((4, 2), 2, 3, 7, 3), ((3, 2), 4, 4, 16, 8), ((2, 2), 3, 2, 64, 32), ((5, 4), 2, 2, 2, 2)])
def test_transposed_conv_matches_naive_scatter(hw, cin, cout, k, s):
    rng = np.random.default_rng(k * 100 + s)
    x = rng.normal(size=(2, *hw, cin)).astype(np.float32)
    kernel = rng.normal(size=(k, k, cin, cout)).astype(np.float32)
    out = np.asarray(layers.transposed_conv(jnp.asarray(x), jnp.asarray(kernel), s))
    expected = naive_transposed_conv(x, kernel, s)
    assert out.shape == expected.shape == (2, (hw[0] - 1) * s + k, (hw[1] - 1) * s + k, cout)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_transposed_conv_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="kernel"):
        layers.transposed_conv(jnp.zeros((1, 3, 3, 2)), jnp.zeros((4, 4, 3, 2)), 2)
    with pytest.raises(ValueError, match="stride"):
        layers.transposed_conv(jnp.zeros((1, 3, 3, 2)), jnp.zeros((4, 4, 2, 2)), 0)


def test_at_once_equals_fcn8s_with_scaled_skip_weights():
    images = jnp.asarray(np.random.default_rng(3).normal(size=(1, 40, 40, 3)), jnp.float32)
    params = make_params(fcn.FCN8sAtOnce(width=WIDTH))
    at_once = fcn.FCN8sAtOnce(width=WIDTH).apply({"params": params}, images)
    scaled = jax.tree.map(lambda x: x, params)
    scaled["score_pool4"]["kernel"] = params["score_pool4"]["kernel"] * 0.01
    scaled["score_pool3"]["kernel"] = params["score_pool3"]["kernel"] * 1e-4
    plain = fcn.FCN8s(width=WIDTH).apply({"params": scaled}, images)
    unscaled = fcn.FCN8s(width=WIDTH).apply({"params": params}, images)
    np.testing.assert_allclose(at_once, plain, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(at_once) - np.asarray(unscaled)).max() > 1e-3


def test_bfloat16_compute_gives_float32_logits_close_to_float32():
    images = jnp.asarray(np.random.default_rng(4).normal(size=(1, 40, 24, 3)), jnp.float32)
    params = make_params(fcn.FCN8s(geometry="same", width=WIDTH))
    f32 = fcn.FCN8s(geometry="same", width=WIDTH).apply({"params": params}, images)
    bf16_model = fcn.FCN8s(geometry="same", width=WIDTH, dtype=jnp.bfloat16)
    bf16 = bf16_model.apply({"params": params}, images)
    assert bf16.dtype == jnp.float32
    bf16_params = jax.eval_shape(bf16_model.init, jax.random.key(0), images)["params"]
    assert {x.dtype for x in jax.tree.leaves(bf16_params)} == {jnp.dtype(jnp.float32)}
    scale = np.abs(np.asarray(f32)).max()
    err = np.abs(np.asarray(bf16) - np.asarray(f32)).max()
    assert scale > 1e-3 and 0 < err < 0.05 * scale


def test_dropout_only_in_training():
    images = jnp.ones((1, 16, 16, 3))
    model = fcn.FCN32s(geometry="same", width=WIDTH)
    params = make_params(model)
    eval_out = model.apply({"params": params}, images)
    train_out = model.apply({"params": params}, images, train=True,
                            rngs={"dropout": jax.random.key(0)})
    assert np.abs(np.asarray(eval_out) - np.asarray(train_out)).max() > 1e-4
    no_dropout = fcn.FCN32s(geometry="same", width=WIDTH, dropout_rate=0.0)
    np.testing.assert_array_equal(
        no_dropout.apply({"params": params}, images, train=True), eval_out)


def test_training_gradient_has_no_select_and_scatter():
    """VGG16's pools differentiate elementwise: no select-and-scatter (run twice and scattered with atomics)."""
    model = fcn.FCN8s(geometry="caffe", width=WIDTH)
    images = jnp.zeros((1, 33, 31, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    grad = jax.grad(lambda p: model.apply({"params": p}, images).sum())
    jaxpr = str(jax.make_jaxpr(grad)(params))
    assert "select_and_scatter" not in jaxpr and "reduce_window" not in jaxpr
    assert "reduce_max" in jaxpr


def test_is_upsample_param():
    params = jax.eval_shape(fcn.FCN8s().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    flat = flax.traverse_util.flatten_dict(params["params"])
    upsample = {k: v for k, v in flat.items() if zoo.is_upsample_param(k)}
    assert sorted(upsample) == [("upscore2", "kernel"), ("upscore8", "kernel"),
                                ("upscore_pool4", "kernel")]
    assert count(upsample) == 2 * 4 * 4 * K * K + 16 * 16 * K * K
    assert not zoo.is_upsample_param(("backbone", "fc6", "kernel"))
    assert zoo.is_upsample_param(("upscore", "kernel"))


def test_create_model_variants_and_errors():
    assert zoo.create_model("fcn32s").skips == ()
    assert zoo.create_model("fcn16s").skips == ("pool4",)
    m = zoo.create_model("fcn8s_atonce", num_classes=5, geometry="same")
    assert (m.skips, m.at_once, m.num_classes, m.geometry) == (("pool4", "pool3"), True, 5, "same")
    assert isinstance(zoo.create_model("fcn8s"), fcn.FCN8s)
    with pytest.raises(ValueError, match="fcn32s.*fcn8s_atonce"):
        zoo.create_model("fcn4s")
    images = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="geometry 'valid'"):
        fcn.FCN(geometry="valid").init(jax.random.key(0), images)
    with pytest.raises(ValueError, match="skips"):
        fcn.FCN(skips=("pool3",)).init(jax.random.key(0), images)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        fcn.FCN().init(jax.random.key(0), jnp.zeros((8, 8, 3)))


@pytest.mark.parametrize("variant", ["fcn16s", "fcn8s"])
def test_each_head_of_a_multi_head_fcn_is_the_single_head_fcn_with_its_layers(variant):
    """SIFT Flow's two heads on one backbone: head h's logits equal a one-head FCN given head h's layers."""
    heads = (("sem", 5), ("geo", 3))
    multi = zoo.create_model(variant, num_classes=5, width=WIDTH, geometry="caffe", heads=heads)
    params = make_params(multi, seed=4)
    assert sorted(k for k in params if k != "backbone") == sorted(
        f"{layer}_{name}" for name, _ in heads for layer in
        {"fcn16s": ("score_fr", "score_pool4", "upscore2", "upscore16"),
         "fcn8s": ("score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4", "upscore8")}[variant])
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 45, 37, 3)), jnp.float32)
    logits = multi.apply({"params": params}, images)
    assert logits.shape == (2, 45, 37, 8)
    for (name, k), channels in zip(heads, (slice(0, 5), slice(5, 8))):
        single = zoo.create_model(variant, num_classes=k, width=WIDTH, geometry="caffe")
        own = {"backbone": params["backbone"], **{key[:-len(name) - 1]: value for key, value in params.items()
                                                  if key.endswith(f"_{name}")}}
        np.testing.assert_allclose(logits[..., channels], single.apply({"params": own}, images), rtol=1e-5, atol=1e-5)
    assert zoo.head_specs(5, heads) == heads and zoo.head_specs(5) == (("", 5),)


@pytest.mark.parametrize("geometry", vgg.GEOMETRIES)
def test_cpu_matmul_forms_equal_xlas_convolutions(geometry):
    """tap_conv and fc6's im2col_conv (the defaults) change how values are computed, not the values: gradients and
    logits equal those of XLA's own convolutions."""

    rs = np.random.RandomState(0)
    images = jnp.asarray(rs.randn(2, 45, 37, 3), jnp.float32)
    labels = jnp.asarray(rs.randint(0, 21, (2, 45, 37)))
    by_tap, by_xla = (zoo.create_model("fcn8s", geometry=geometry, width=1 / 16, tap_kernel_grads=flag,
                                          fc6_im2col=flag) for flag in (True, False))
    params = by_xla.init(jax.random.PRNGKey(0), images)["params"]
    params = jax.tree.map(lambda p: p + 0.05 * jnp.asarray(rs.randn(*p.shape), p.dtype), params)

    def grads(model):
        loss = lambda p: losses.pixel_cross_entropy(model.apply({"params": p}, images), labels, reduction="sum")[0]  # noqa: E731
        return jax.jit(jax.grad(loss))(params)

    tap, xla = grads(by_tap), grads(by_xla)
    flat_xla = flax.traverse_util.flatten_dict(xla)
    for path, a in flax.traverse_util.flatten_dict(tap).items():
        b = flat_xla[path]
        assert float(jnp.abs(a - b).max()) <= 1e-5 * float(jnp.abs(b).max()) + 1e-12, path
    assert float(jnp.abs(tap["backbone"]["conv1_1"]["kernel"]).max()) > 0  # a real gradient reached the first conv
    fast, xla = by_tap.apply({"params": params}, images), by_xla.apply({"params": params}, images)
    assert float(jnp.abs(fast - xla).max()) <= 1e-5 * float(jnp.abs(xla).max())
