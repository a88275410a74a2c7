"""benchmarks/gpu.py runs where the GPU machine's image runs it: no TensorFlow, tensorflow-datasets or ml_collections.

On the CPU at a tiny width: every case of a small grid gives images/s, FLOPs and the JSON + markdown report, so the
script cannot fail on first contact with a GPU; with torch installed (the bench venv) the torch side runs too and
its fp32 inference equals fcn_jax's."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = textwrap.dedent("""
    import sys
    for name in ("tensorflow", "tensorflow_datasets", "ml_collections"):
        sys.modules[name] = None  # not on the GPU machine: any import of them fails
    from benchmarks import gpu
    gpu.main(sys.argv[1:])
""")


@pytest.mark.parametrize("frameworks", [["fcn_jax"], ["fcn_jax", "torch"]], ids=["fcn_jax", "with_torch"])
def test_the_gpu_benchmark_runs_without_tensorflow_or_ml_collections(frameworks, tmp_path):
    if "torch" in frameworks and importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (the bench venv has it)")
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, "--width", "0.03125", "--sizes", "64", "--batches", "2", "--reps", "2",
         "--iters", "1", "--matmul_size", "256", "--budget_s", "1e9", "--frameworks", *frameworks, "--out", str(out),
         "--kinds", "train", "inference", *(["train_input"] if frameworks == ["fcn_jax"] else [])],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["measured_bf16_matmul_tflops"] > 0 and report["skipped"] == []
    loops = [("train_input", "bf16"), ("train_input", "fp32")] if frameworks == ["fcn_jax"] else []
    assert [(c["kind"], c["dtype"]) for c in report["cases"]] == [
        ("train", "bf16"), ("inference", "bf16"), ("train", "fp32"), ("inference", "fp32")] + loops
    for case in report["cases"][4:]:  # the training loop fed by the input pipeline, against the step alone
        assert "error" not in case, case
        assert all(s["images_per_s"] > 0 for s in case["stats"].values()) and case["reader_threads"] >= 1
    for case in report["cases"][:4]:
        assert "error" not in case, case
        assert set(case["stats"]) == set(frameworks)
        assert all(s["images_per_s"] > 0 for s in case["stats"].values())
        assert case["gflop_per_call"] > 0 and case["jax_compile_s"] > 0
    if "torch" in frameworks:
        fp32 = next(c for c in report["cases"] if c["kind"] == "inference" and c["dtype"] == "fp32")
        assert fp32["relative_error"] < 1e-4
    table = (tmp_path / "gpu.md").read_text().splitlines()
    assert sum(line.startswith("| train |") or line.startswith("| inference |") for line in table) == 4
    assert sum(line.startswith("| train_input |") for line in table) == len(loops)


def test_cases_run_by_batch_then_dtype_kind_and_size():
    from benchmarks import gpu

    assert gpu.case_order(["train", "inference"], [512, 500], [16, 1], ["bf16", "fp32"])[:5] == [
        ("train", 512, 16, "bf16"), ("train", 500, 16, "bf16"), ("inference", 512, 16, "bf16"),
        ("inference", 500, 16, "bf16"), ("train", 512, 16, "fp32")]
    assert gpu.case_order(["train"], [512], [16, 1], ["bf16"]) == [
        ("train", 512, 16, "bf16"), ("train", 512, 1, "bf16")]


def test_jaxpr_flops_counts_the_reference_181_5_gmac_and_scans_and_conds():
    import jax
    import jax.numpy as jnp

    from benchmarks import common
    from fcn_jax.models import fcn

    model = fcn.FCN8s(geometry="caffe", winograd_tile=0)  # direct convolutions: the reference count
    images = jax.ShapeDtypeStruct((1, 500, 500, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    flops = common.jaxpr_flops(lambda p, x: model.apply({"params": p}, x), params, images)
    assert round(flops / 2e9, 1) == 181.5  # design.md: FCN-8s, caffe geometry, 500x500

    a, b = jnp.ones((3, 4, 5)), jnp.ones((5, 6))
    per_dot = 2 * 4 * 5 * 6
    assert common.jaxpr_flops(lambda a, b: jax.lax.map(lambda x: x @ b, a), a, b) == 3 * per_dot

    def branches(a, b):
        return jax.lax.cond(a.sum() > 0, lambda: (a[0] @ b) @ b.T, lambda: a[0] @ jnp.ones((5, 5)))

    assert common.jaxpr_flops(branches, a, b) == per_dot + 2 * 4 * 6 * 5
    assert common.jaxpr_flops(lambda a, b: (jax.debug.print("{}", a.sum()), a[0] @ b)[1], a, b) == per_dot

    x, kernel = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 5))

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    forward = common.jaxpr_flops(conv, x, kernel)
    assert forward == 2 * 4 * 4 * 5 * 3 * 3 * 4
    # the input gradient of a stride-2 conv (input-dilated by 2) costs what its forward costs, not 4x that
    assert common.jaxpr_flops(lambda x, k: jax.grad(lambda x_: conv(x_, k).sum())(x), x, kernel) == 2 * forward
