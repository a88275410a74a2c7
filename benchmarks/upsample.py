"""Benchmark exact transposed-conv forms for FCN upsampling layers; writes JSON.

Forms (all give Caffe/PyTorch ConvTranspose semantics, checked against each other here):
  subpixel        fcn_jax.models.layers.transposed_conv: dense m x m conv into Cout*s*s channels,
                  then depth-to-space (m = ceil(k/s)).
  lhs_dilation    lax.conv_general_dilated on the s-dilated input with the flipped kernel.
  conv_transpose  lax.conv_transpose(..., transpose_kernel=True).
  depthwise       lhs_dilation with feature_group_count=K: exact only for a diagonal (bilinear)
                  kernel, so not usable for learned upsampling; timed as a reference point.
Shapes are FCN-VGG16's at a 500x500 input in caffe geometry, batch 1, K=21.

  python -m benchmarks.upsample [--reps 20] [--out benchmarks/results/upsample.json]

About 5 minutes on 2 CPU cores, nearly all of it the depthwise form (one call takes 100 s on the
FCN-32s upscore); --budget_s caps the timing loop per form, not a single call.
"""
import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import common
from fcn_jax.models.layers import bilinear_kernel, transposed_conv

_DN = ("NHWC", "HWIO", "NHWC")

# name -> (input h = w, kernel, stride) for a 500x500 caffe-geometry input.
CASES = {
    "upscore2 (fcn16s/8s)": (16, 4, 2),
    "upscore_pool4 (fcn8s)": (34, 4, 2),
    "upscore8 (fcn8s)": (70, 16, 8),
    "upscore16 (fcn16s)": (34, 32, 16),
    "upscore (fcn32s)": (16, 64, 32),
}


def lhs_dilation(x, kernel, stride):
    k = kernel.shape[0]
    return lax.conv_general_dilated(x, kernel[::-1, ::-1], (1, 1), [(k - 1, k - 1)] * 2,
                                    lhs_dilation=(stride, stride), dimension_numbers=_DN)


def conv_transpose(x, kernel, stride):
    k = kernel.shape[0]
    return lax.conv_transpose(x, kernel.transpose(0, 1, 3, 2), (stride, stride),
                              [(k - 1, k - 1)] * 2, dimension_numbers=_DN, transpose_kernel=True)


def depthwise(x, kernel, stride):
    k, c = kernel.shape[0], kernel.shape[2]
    diagonal = kernel[:, :, jnp.arange(c), jnp.arange(c)][:, :, None, :]  # (k, k, 1, K)
    return lax.conv_general_dilated(x, diagonal[::-1, ::-1], (1, 1), [(k - 1, k - 1)] * 2,
                                    lhs_dilation=(stride, stride), dimension_numbers=_DN,
                                    feature_group_count=c)


FORMS = {"subpixel": transposed_conv, "lhs_dilation": lhs_dilation,
         "conv_transpose": conv_transpose, "depthwise": depthwise}


def time_form(fn, x, kernel, stride, reps, budget_s):
    """Compile time, then per-call wall times (stops early once budget_s is spent)."""
    jitted = jax.jit(fn, static_argnums=2)
    start = time.perf_counter()
    out = jitted(x, kernel, stride).block_until_ready()
    compile_s = time.perf_counter() - start
    times, spent = [], 0.0
    while len(times) < reps and spent < budget_s:
        start = time.perf_counter()
        jitted(x, kernel, stride).block_until_ready()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return out, compile_s, times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--budget_s", type=float, default=20.0, help="max timing seconds per form")
    parser.add_argument("--num_classes", type=int, default=21)
    parser.add_argument("--out", default="benchmarks/results/upsample.json")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    results = []
    for case, (size, k, s) in CASES.items():
        x = jnp.asarray(rng.normal(size=(1, size, size, args.num_classes)), jnp.float32)
        kernel = jnp.asarray(bilinear_kernel(k, args.num_classes))
        reference = None
        for form, fn in FORMS.items():
            out, compile_s, times = time_form(fn, x, kernel, s, args.reps, args.budget_s)
            reference = np.asarray(out) if reference is None else reference
            row = dict(case=case, form=form, input=[1, size, size, args.num_classes], kernel=k,
                       stride=s, output=list(out.shape), compile_s=round(compile_s, 4),
                       median_ms=round(1e3 * statistics.median(times), 3),
                       min_ms=round(1e3 * min(times), 3), reps=len(times),
                       max_abs_diff_vs_subpixel=float(np.abs(np.asarray(out) - reference).max()))
            results.append(row)
            print(f"{case:24s} {form:15s} median {row['median_ms']:9.3f} ms  "
                  f"min {row['min_ms']:9.3f} ms  compile {compile_s:6.2f} s  "
                  f"diff {row['max_abs_diff_vs_subpixel']:.1e}", flush=True)
    report = dict(benchmark="upsample", backend=jax.default_backend(),
                  devices=[str(d) for d in jax.devices()][:1], cpu_count=os.cpu_count(),
                  machine=platform.machine(), jax=jax.__version__, results=results)
    common.write_report("upsample", report, args.out)


if __name__ == "__main__":
    main()
