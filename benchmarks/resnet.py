"""fcn_jax's fcn_resnet50 / fcn_resnet101 forward against torchvision's on this CPU; writes JSON.

The same random weights and batch-norm statistics in both (torchvision's state_dict imported through
fcn_jax.weights.torchvision_resnet), outputs checked equal (relative 1e-4) before timing, eval mode, fp32, calls
alternating for --reps rounds (benchmarks.common.interleaved); fcn_jax as configured (Winograd F(4x4, 3x3) for the
3x3 convolutions with >= 128 inputs) and with direct convolutions only (fcn_jax_direct, whose FLOPs the FLOP/s are
of). Needs torch and torchvision (no TensorFlow):

    python3 -m venv /tmp/tvvenv && /tmp/tvvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 -e .
    /tmp/tvvenv/bin/python -m benchmarks.resnet [--variants fcn_resnet50] [--size 500] [--reps 5]
"""
import argparse
import os

import jax
import numpy as np
import torch
import torchvision

from benchmarks import common
from fcn_jax.models import zoo
from fcn_jax.weights import merge, torchvision_resnet


def run_case(variant: str, size: int, batch: int, reps: int) -> dict:
    torch.manual_seed(0)
    reference = getattr(torchvision.models.segmentation, variant)(weights=None, weights_backbone=None, num_classes=21,
                                                                  aux_loss=True)
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    reference.eval()
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    model = zoo.create_model(variant, num_classes=21)
    params, _ = merge.merge_params(zoo.param_template(model), torchvision_resnet.to_params(state))
    images = np.random.default_rng(1).normal(size=(batch, size, size, 3)).astype(np.float32)
    params, x = jax.device_put(params), jax.device_put(images)
    fns, flops = {}, {}
    for name, tile in (("fcn_jax", 4), ("fcn_jax_direct", 0)):
        net = zoo.create_model(variant, num_classes=21, winograd_tile=tile)
        compiled = jax.jit(lambda p, x, net=net: net.apply({"params": p}, x)).lower(params, x).compile()
        fns[name] = lambda c=compiled: jax.block_until_ready(c(params, x))
        flops[name] = common.compiled_flops(compiled)
    for name, memory_format in (("torch_contiguous", torch.contiguous_format), ("torch_channels_last",
                                                                                  torch.channels_last)):
        net = reference.to(memory_format=memory_format)
        tx = torch.from_numpy(common.nchw(images)).contiguous(memory_format=memory_format)

        def run(net=net, tx=tx):
            with torch.inference_mode():
                return net(tx)["out"]

        fns[name] = run
    ours = np.asarray(fns["fcn_jax"]())
    errors = {n: common.relative_error(ours, fns[n]().numpy().transpose(0, 2, 3, 1)) for n in fns if n.startswith("t")}
    errors["fcn_jax_direct"] = common.relative_error(ours, np.asarray(fns["fcn_jax_direct"]()))
    if max(errors.values()) > 1e-4:
        raise AssertionError(f"{variant}: fcn_jax and torchvision differ ({errors})")
    stats = common.interleaved(fns, warmup=1, reps=reps)
    return dict(variant=variant, size=size, batch=batch, reps=reps, relative_error_vs_fcn_jax=errors,
                gflop_per_forward=round(flops["fcn_jax_direct"] / 1e9, 2),
                gflop_executed=round(flops["fcn_jax"] / 1e9, 2),
                winograd_over_direct=common.ratios(stats, "fcn_jax", "fcn_jax_direct"),
                **common.compare_to_torch(stats, batch, flops["fcn_jax_direct"]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["fcn_resnet50"], choices=("fcn_resnet50", "fcn_resnet101"))
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "resnet.json"))
    args = parser.parse_args(argv)
    common.set_torch_threads()
    report = {"machine": {**common.machine_info(), "torchvision": torchvision.__version__}, "cases": []}
    for variant in args.variants:
        row = run_case(variant, args.size, args.batch, args.reps)
        print(variant, row["ratio_fcn_jax_over_torch"], {n: s["median_s"] for n, s in row["stats"].items()}, flush=True)
        report["cases"].append(row)
    common.write_report("resnet", report, args.out)


if __name__ == "__main__":
    main()
