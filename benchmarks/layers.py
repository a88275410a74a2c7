"""Per-layer times of FCN-VGG16's convolutions: fcn_jax (XLA:CPU) vs torch, forward and forward+backward.

Answers "where does the time go" layer by layer, at the input shapes of a given image size and
geometry. jax forms: `conv` (lax.conv_general_dilated, what flax nn.Conv emits) and, for fc6,
`gemm` (the 7x7 window gathered by 49 shifted slices, then one matrix product): XLA:CPU runs
the 7x7 conv on a tiny map (10x10 at 500x500 caffe) far below its GEMM speed; for the 3x3 convs `winograd2` and
`winograd4` (models.winograd: F(2x2, 3x3) / F(4x4, 3x3), input gradient the same way, kernel gradient one matmul
per tap), whose rows show where Winograd pays. Every form is checked against the `conv` form (relative error
<= 1e-4) before timing.

  python -m benchmarks.layers [--size 500] [--geometry caffe] [--reps 3] [--out benchmarks/results/layers.json]
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from jax import lax

from benchmarks import common
from fcn_jax.models import vgg, winograd

_DN = ("NHWC", "HWIO", "NHWC")


def layer_shapes(size: int, geometry: str):
    """[(name, (H, W, Cin), kernel, pad, Cout)] of VGG16's convs and fc6/fc7 at an input size."""
    pads = {"caffe": {"conv1_1": 100, "fc6": 0}, "same": {"conv1_1": 1, "fc6": 3}}[geometry]
    h, cin, out = size, 3, []
    for layers in vgg.BLOCKS:
        for name, cout in layers:
            pad = pads.get(name, 1)
            out.append((name, (h, h, cin), 3, pad, cout))
            h, cin = h + 2 * pad - 2, cout
        h = -(-h // 2)
    out.append(("fc6", (h, h, cin), 7, pads["fc6"], vgg.FC_CHANNELS))
    h = h + 2 * pads["fc6"] - 6
    out.append(("fc7", (h, h, vgg.FC_CHANNELS), 1, 0, vgg.FC_CHANNELS))
    return out


def conv(x, k, pad):
    return lax.conv_general_dilated(x, k, (1, 1), [(pad, pad)] * 2, dimension_numbers=_DN)


def gemm(x, k, pad):
    """Same as conv: gather the k x k window into channels with k*k shifted slices, one matmul."""
    n, h, w, c = x.shape
    size = k.shape[0]
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = h + 2 * pad - size + 1, w + 2 * pad - size + 1
    patches = jnp.concatenate([xp[:, i:i + ho, j:j + wo] for i in range(size) for j in range(size)], -1)
    return (patches.reshape(-1, size * size * c) @ k.reshape(size * size * c, -1)).reshape(n, ho, wo, -1)


def winograd_form(m):
    return lambda x, k, pad: winograd.conv(x, k, (1, 1), [(pad, pad)] * 2, dimension_numbers=_DN, m=m)


def jax_fns(form, x, k, pad):
    f = {"conv": conv, "gemm": gemm, "winograd2": winograd_form(2), "winograd4": winograd_form(4)}[form]
    forward = jax.jit(lambda x, k: f(x, k, pad))
    grads = jax.jit(jax.grad(lambda x, k: jnp.sum(f(x, k, pad) ** 2) * 0.5, argnums=(0, 1)))
    return (lambda: jax.block_until_ready(forward(x, k)), lambda: jax.block_until_ready(grads(x, k)))


def torch_fns(x, k, pad, memory_format):
    tx = torch.from_numpy(common.nchw(x)).contiguous(memory_format=memory_format).requires_grad_()
    tk = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))).contiguous(
        memory_format=memory_format).requires_grad_()

    def forward():
        with torch.no_grad():
            return F.conv2d(tx, tk, padding=pad)

    def grads():
        tx.grad = tk.grad = None
        (0.5 * (F.conv2d(tx, tk, padding=pad) ** 2).sum()).backward()
        return tk.grad

    return forward, grads


def run_layer(name, shape, ksize, pad, cout, reps):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, *shape)).astype(np.float32)
    k = (rng.normal(size=(ksize, ksize, shape[2], cout)) * np.sqrt(2 / (ksize * ksize * shape[2]))).astype(np.float32)
    xj, kj = jnp.asarray(x), jnp.asarray(k)
    forms = ("conv", "gemm") if name == "fc6" else ("conv", "winograd2", "winograd4") if ksize == 3 else ("conv",)
    fns = {f"jax_{form}": jax_fns(form, xj, kj, pad) for form in forms}
    fns["torch_channels_last"] = torch_fns(x, k, pad, torch.channels_last)
    fns["torch_nchw"] = torch_fns(x, k, pad, torch.contiguous_format)
    reference = np.asarray(fns["jax_conv"][0]())
    errors = {n: common.relative_error(np.asarray(fns[n][0]()), reference) for n in fns if n.startswith("jax_")}
    errors.update({n: common.relative_error(fns[n][0]().numpy().transpose(0, 2, 3, 1), reference)
                   for n in fns if n.startswith("torch_")})
    if max(errors.values()) > 1e-4:
        raise AssertionError(f"{name}: forms differ {errors}")
    out_hw = shape[0] + 2 * pad - ksize + 1
    gflop = 2 * out_hw * out_hw * ksize * ksize * shape[2] * cout / 1e9
    row = dict(layer=name, input=list(shape), kernel=ksize, pad=pad, cout=cout, gflop_forward=round(gflop, 3),
               relative_error_vs_jax_conv=errors)
    for phase, index in (("forward", 0), ("forward_backward", 1)):
        stats = common.interleaved({n: f[index] for n, f in fns.items()}, warmup=1, reps=reps)
        row[phase] = {n: {"median_ms": round(1e3 * s["median_s"], 1), "min_ms": round(1e3 * s["min_s"], 1)}
                      for n, s in stats.items()}
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--geometry", choices=vgg.GEOMETRIES, default="caffe")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    report = {"benchmark": "layers", "size": args.size, "geometry": args.geometry,
              "torch_threads": common.set_torch_threads(), **common.machine_info(), "results": []}
    for name, shape, ksize, pad, cout in layer_shapes(args.size, args.geometry):
        row = run_layer(name, shape, ksize, pad, cout, args.reps)
        report["results"].append(row)
        line = "  ".join(f"{n} {v['median_ms']:8.1f}" for n, v in row["forward_backward"].items())
        fwd = "  ".join(f"{n} {v['median_ms']:8.1f}" for n, v in row["forward"].items())
        print(f"{name:8s} {row['gflop_forward']:7.2f} GFLOP  fwd ms: {fwd}\n{'':24s}fwd+bwd ms: {line}", flush=True)
    report["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    common.write_report(f"layers_{args.geometry}{args.size}", report, args.out)


if __name__ == "__main__":
    main()
