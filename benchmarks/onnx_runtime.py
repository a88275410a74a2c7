"""CPU latency of the ONNX export in onnxruntime against fcn_jax's own predict path and torch, one process,
alternating calls; writes JSON.

FCN-8s, caffe geometry, 500x500, batch 1, fp32, random weights (benchmarks.common.random_params). Each side takes
the uint8 image and gives logits and masks, normalisation and argmax included:
  fcn_jax          infer.export.serving_function (what predict computes for a whole image), jitted for the shape
  onnx_symbolic    model.onnx as `export --formats onnx` writes it (batch, height, width symbolic)
  onnx_fixed       the same with --batch 1 --size 500 500 (static shapes for onnxruntime's optimiser)
  torch            benchmarks.torch_fcn.TorchFCN, channels_last, inference_mode
onnxruntime and torch use every core (intra-op threads = cores), as XLA does. Outputs are checked equal to
fcn_jax's (logits to 1e-4 relative, masks on all but a few near-tied pixels) before timing.

  python -m benchmarks.onnx_runtime [--size 500] [--reps 5] [--out benchmarks/results/onnx_runtime.json]
"""
import argparse
import os
import sys
import time

import jax
import numpy as np
import onnxruntime
import torch

from benchmarks import common
from benchmarks.torch_fcn import TorchFCN, load_fcn_jax_params
from fcn_jax.core import parallel
from fcn_jax.core.normalization import CAFFE_BGR_MEAN
from fcn_jax.infer import export, network, onnx_export
from fcn_jax.models import zoo


def onnx_session(segment, flat_params, spec: str):
    start = time.perf_counter()
    model = onnx_export.to_onnx(segment, flat_params, spec).SerializeToString()
    export_s = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session, export_s, len(model)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "onnx_runtime.json"))
    args = parser.parse_args(argv)
    report = {"benchmark": "onnx_runtime", "command": "python -m benchmarks.onnx_runtime " + " ".join(sys.argv[1:]),
              "torch_threads": common.set_torch_threads(), **common.machine_info(),
              "onnxruntime": onnxruntime.__version__, "variant": "fcn8s", "geometry": "caffe", "size": args.size}
    images = np.random.default_rng(0).integers(0, 256, (1, args.size, args.size, 3), dtype=np.uint8)
    model = zoo.create_model("fcn8s", geometry="caffe")
    params = common.random_params(model, images.shape)
    mesh = parallel.create_mesh()
    net = network.Network(model, parallel.replicate(params, mesh), {"normalization": "caffe_bgr"}, mesh)
    segment, flat = export.serving_function(net)
    compiled = jax.jit(segment).lower([jax.device_put(p) for p in flat], images).compile()
    flat_device = [jax.device_put(p) for p in flat]
    sessions = {name: onnx_session(segment, flat, spec) for name, spec in
                (("onnx_symbolic", "(b, h, w, 3)"), ("onnx_fixed", f"(1, {args.size}, {args.size}, 3)"))}
    report["onnx_export_s"] = {name: round(s[1], 2) for name, s in sessions.items()}
    report["onnx_bytes"] = {name: s[2] for name, s in sessions.items()}
    torch_net = load_fcn_jax_params(TorchFCN("fcn8s", geometry="caffe"), params).eval()
    torch_net = torch_net.to(memory_format=torch.channels_last)
    mean = torch.tensor(CAFFE_BGR_MEAN, dtype=torch.float32).view(1, 3, 1, 1)

    def torch_segment():
        with torch.inference_mode():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).flip(1).float() - mean  # RGB -> BGR minus the mean
            logits = torch_net(x.contiguous(memory_format=torch.channels_last))
            return logits.permute(0, 2, 3, 1).numpy(), logits.argmax(1).to(torch.uint8).numpy()

    fns = {"fcn_jax": lambda: tuple(np.asarray(x) for x in jax.block_until_ready(compiled(flat_device, images))),
           **{name: (lambda s=s[0]: tuple(s.run(["logits", "masks"], {"images": images})))
              for name, s in sessions.items()},
           "torch": torch_segment}
    logits, masks = fns["fcn_jax"]()
    report["check"] = {}
    for name, fn in fns.items():  # first calls: the equality check and the warm-up
        other_logits, other_masks = fn()
        error, differ = common.relative_error(other_logits, logits), float(np.mean(other_masks != masks))
        report["check"][name] = {"relative_error": error, "masks_differing": differ}
        if error > 1e-4 or differ > 1e-3:
            raise AssertionError(f"{name} differs from fcn_jax: relative error {error:.2e}, masks {differ:.2%}")
    stats = common.interleaved(fns, warmup=1, reps=args.reps)
    report["stats"] = stats
    report["ratios"] = {name: common.ratios(stats, name, "torch") for name in fns if name != "torch"}
    report["ratio_onnx_symbolic_over_fcn_jax"] = common.ratios(stats, "onnx_symbolic", "fcn_jax")
    for name, s in stats.items():
        print(f"{name:14s} median {s['median_s']:.3f} s  (min {s['min_s']:.3f}, max {max(s['times_s']):.3f})",
              flush=True)
    print("time / torch's:", {name: r["median"] for name, r in report["ratios"].items()}, flush=True)
    report["median_s"] = {name: s["median_s"] for name, s in stats.items()}
    report["spread_s"] = {name: [s["min_s"], max(s["times_s"])] for name, s in stats.items()}
    report["rounds"] = args.reps
    common.write_report("onnx_runtime", report, args.out)
    return report


if __name__ == "__main__":
    main()
