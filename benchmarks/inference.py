"""Inference latency and images/s: fcn_jax vs the PyTorch reference, in one process, interleaved.

For every case (variant, geometry, input size, batch, dtype) both nets get the same random
params (benchmarks.common.random_params) and images; the first call of each is checked equal to
fcn_jax's output (fp32: relative error <= 1e-4, else the case fails) and doubles as the warm-up;
then the calls alternate. torch runs NCHW (its default) and channels_last (usually faster on
CPU); the ratio fcn_jax/torch is taken against the faster of the two. FLOPs are XLA's count of
the compiled fcn_jax forward (2 per multiply-add), the same net torch runs.

  python -m benchmarks.inference [--cases default|headline|quick] [--case fcn8s,caffe,500,1,fp32,3] [--reps 3]
                                 [--formats nchw,channels_last] [--out benchmarks/results/inference.json]
"""
import argparse
import time

import jax
import numpy as np
import torch

from benchmarks import common
from benchmarks.torch_fcn import FORMATS, TorchFCN, load_fcn_jax_params
from fcn_jax.core import xla_options
from fcn_jax.models import zoo

MODEL_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}  # bf16: two frameworks round differently, not equal
# (variant, geometry, size, batch, dtype, reps). Sized for ~6 minutes on an idle 2-core CPU.
# Skipped on purpose: batch 8 at 500x500 and caffe 224x224 (8x a 2-10 s forward per call, per net),
# bf16 at batch 8, and the other variants in "same" geometry (their backbone is FCN-8s's).
DEFAULT_CASES = (
    ("fcn8s", "caffe", 500, 1, "fp32", 3),
    ("fcn8s", "caffe", 500, 1, "bf16", 1),
    ("fcn8s", "same", 500, 1, "fp32", 2),
    ("fcn8s", "same", 224, 1, "fp32", 3),
    ("fcn8s", "same", 224, 1, "bf16", 2),
    ("fcn8s", "same", 224, 8, "fp32", 1),
    ("fcn8s", "caffe", 224, 1, "fp32", 2),
    ("fcn32s", "caffe", 224, 1, "fp32", 1),
    ("fcn16s", "caffe", 224, 1, "fp32", 1),
    ("fcn8s_atonce", "caffe", 224, 1, "fp32", 1),
)
HEADLINE_CASES = (  # the headline table of BENCHMARKS.md: FCN-8s fp32, batch 1 and 8, 5 rounds (~8 minutes idle)
    ("fcn8s", "caffe", 500, 1, "fp32", 5),
    ("fcn8s", "caffe", 500, 8, "fp32", 5),
    ("fcn8s", "same", 224, 1, "fp32", 5),
    ("fcn8s", "same", 224, 8, "fp32", 5),
)
QUICK_CASES = (
    ("fcn8s", "caffe", 500, 1, "fp32", 3),
    ("fcn8s", "same", 224, 1, "fp32", 3),
)


def jax_forward(variant, geometry, dtype, params, images, compiler_options=None, winograd_tile=4):
    """(blocking forward fn, compile seconds, FLOPs executed, the compiled forward) of the jitted fcn_jax forward;
    winograd_tile 0: every convolution direct (the network's nominal FLOPs)."""
    model = zoo.create_model(variant, geometry=geometry, dtype=MODEL_DTYPES[dtype], winograd_tile=winograd_tile)
    params, images = jax.device_put(params), jax.device_put(images)
    start = time.perf_counter()
    options = xla_options.inference() if compiler_options is None else compiler_options  # as infer.steps compiles
    compiled = jax.jit(lambda p, x: model.apply({"params": p}, x), compiler_options=options).lower(
        params, images).compile()
    compile_s = time.perf_counter() - start
    return (lambda: jax.block_until_ready(compiled(params, images))), compile_s, common.compiled_flops(compiled), \
        compiled


def torch_forward(variant, geometry, dtype, params, images, memory_format):
    model = load_fcn_jax_params(TorchFCN(variant, geometry=geometry, dtype=TORCH_DTYPES[dtype]), params)
    model = model.eval().to(memory_format=memory_format)
    x = torch.from_numpy(common.nchw(images)).contiguous(memory_format=memory_format)

    def run():
        with torch.inference_mode():
            return model(x)

    return run


def run_case(variant, geometry, size, batch, dtype, reps, formats, matmul_gflops=None):
    """One row of the report: equality, times, ratios, FLOP/s, memory. fcn_jax runs as configured by default
    (Winograd F(4x4, 3x3) where it pays) and with direct convolutions only (fcn_jax_direct); FLOP/s are of the
    direct network's FLOPs for every side, the FLOPs fcn_jax executes are `gflop_executed`."""
    images = common.random_images((batch, size, size, 3))
    params = common.random_params(zoo.create_model(variant, geometry=geometry), images.shape)
    fns = {}
    fns["fcn_jax"], compile_s, executed = jax_forward(variant, geometry, dtype, params, images)[:3]
    fns["fcn_jax_direct"], _, flops = jax_forward(variant, geometry, dtype, params, images, winograd_tile=0)[:3]
    for name in formats:
        fns[f"torch_{name}"] = torch_forward(variant, geometry, dtype, params, images, FORMATS[name])
    reference = np.asarray(fns["fcn_jax"]())  # first calls: equality check and warm-up
    errors = {}
    for name in fns:
        if name != "fcn_jax":
            out = fns[name]()
            out = np.asarray(out) if name == "fcn_jax_direct" else out.float().numpy().transpose(0, 2, 3, 1)
            errors[name] = common.relative_error(reference, out)
            if errors[name] > TOLERANCE[dtype]:
                raise AssertionError(f"{variant}/{geometry}/{size}/b{batch}/{dtype}: fcn_jax and {name} differ "
                                     f"(relative error {errors[name]:.2e} > {TOLERANCE[dtype]})")
    stats = common.interleaved(fns, warmup=0, reps=reps)
    return dict(variant=variant, geometry=geometry, size=size, batch=batch, dtype=dtype, reps=reps,
                gflop_per_forward=round(flops / 1e9, 2) if flops else None,
                gflop_executed=round(executed / 1e9, 2) if executed else None, jax_compile_s=round(compile_s, 2),
                relative_error_vs_fcn_jax=errors,
                winograd_over_direct=common.ratios(stats, "fcn_jax", "fcn_jax_direct"),
                **common.compare_to_torch(stats, batch, flops, matmul_gflops))


def print_row(row):
    s, r = row["stats"], row["ratio_fcn_jax_over_torch"]
    torch_s = s[row["torch_baseline"]]
    print(f"{row['variant']:13s} {row['geometry']:5s} {row['size']:4d} b{row['batch']} {row['dtype']}  "
          f"fcn_jax {s['fcn_jax']['median_s']:7.3f} s  {row['torch_baseline']} {torch_s['median_s']:7.3f} s  "
          f"ratio {r['median']:.3f} (min {r['min']:.3f})  direct {s['fcn_jax_direct']['median_s']:7.3f} s  "
          f"jax {s['fcn_jax']['gflops_per_s']} GFLOP/s  "
          f"err {max(row['relative_error_vs_fcn_jax'].values()):.1e}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", choices=("default", "headline", "quick"), default="default")
    parser.add_argument("--case", default=None, help="one case instead: variant,geometry,size,batch,dtype,reps")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per fn (default: per case)")
    parser.add_argument("--formats", default="nchw,channels_last", help="torch memory formats to time")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    report = {"benchmark": "inference", "torch_threads": common.set_torch_threads(), **common.machine_info(),
              "matmul_gflops_per_s": common.matmul_rate(), "results": []}
    cases = {"default": DEFAULT_CASES, "headline": HEADLINE_CASES, "quick": QUICK_CASES}[args.cases]
    if args.case:
        variant, geometry, size, batch, dtype, reps = args.case.split(",")
        cases = ((variant, geometry, int(size), int(batch), dtype, int(reps)),)
    for variant, geometry, size, batch, dtype, reps in cases:
        row = run_case(variant, geometry, size, batch, dtype, args.reps or reps, args.formats.split(","),
                       report["matmul_gflops_per_s"])
        report["results"].append(row)
        print_row(row)
        common.write_report("inference", report, args.out)  # keep what was measured if a later case dies


if __name__ == "__main__":
    main()
