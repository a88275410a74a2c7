"""A/B of VGG16's CPU convolution forms on the reference training step: fcn_jax as it runs (Winograd F(4x4, 3x3)
for the 3x3 convolutions with >= 128 inputs, models.winograd; 3x3 kernel gradients one matmul per tap,
conv_forms.tap_conv; fc6 as one im2col matmul, conv_forms.im2col_conv; no gradient for the frozen upsampling)
against the same without Winograd (fcn_jax_direct), with torch's step as the yardstick; writes JSON. FLOP/s are of
the direct network's FLOPs for every side; `gflop_executed` is what fcn_jax's compiled step executes.

The reference recipe's step (benchmarks/train_step.py: SGD momentum 0.99, summed loss, dropout 0.5, frozen
upsampling); the same weights and batch for all three; calls alternate for --reps rounds after a warm-up. Both
inference forwards (benchmarks/inference.py) of the same batch alternate with them, so each side's step splits
into its forward and the rest (backward and update): `split` in the JSON.

  python -m benchmarks.matmul_forms [--cases caffe:320:1 caffe:500:1 same:256:8] [--reps 5]
"""
import argparse

from benchmarks import common, inference, train_step
from benchmarks.torch_fcn import FORMATS
from benchmarks.train_step import make_batch, make_config, torch_step
from fcn_jax.models import zoo


def jax_step(config, params, batch, matmul_forms: bool, winograd_tile: int = 4):
    model = zoo.create_model(config.model.variant, geometry=config.model.geometry,
                             dropout_rate=config.model.dropout_rate, tap_kernel_grads=matmul_forms,
                             fc6_im2col=matmul_forms, winograd_tile=winograd_tile)
    return train_step.jax_step(config, params, batch, model)[:3]


def run_case(geometry: str, size: int, batch_size: int, reps: int, matmul_gflops: float | None = None) -> dict:
    config = make_config("fcn8s", geometry, "fp32")
    batch = make_batch(batch_size, size)
    params = common.random_params(zoo.create_model("fcn8s", geometry=geometry), batch["image"].shape)
    fns, compile_s = {}, {}
    fns["fcn_jax"], compile_s["fcn_jax"], executed = jax_step(config, params, batch, True)
    fns["fcn_jax_direct"], compile_s["fcn_jax_direct"], flops = jax_step(config, params, batch, True, 0)
    fns["torch_channels_last"] = torch_step(config, params, batch, FORMATS["channels_last"])[0]
    forwards = {"fcn_jax_forward": inference.jax_forward("fcn8s", geometry, "fp32", params, batch["image"])[0],
                "torch_forward": inference.torch_forward("fcn8s", geometry, "fp32", params, batch["image"],
                                                         FORMATS["channels_last"])}
    stats = common.interleaved({**fns, **forwards}, warmup=1, reps=reps)
    return dict(geometry=geometry, size=size, batch=batch_size, reps=reps, jax_compile_s=compile_s,
                gflop_per_step=round(flops / 1e9, 2), gflop_executed=round(executed / 1e9, 2),
                winograd_over_direct=common.ratios(stats, "fcn_jax", "fcn_jax_direct"),
                direct_over_torch=common.ratios(stats, "fcn_jax_direct", "torch_channels_last"),
                split=split(stats),
                **common.compare_to_torch({k: stats[k] for k in ("fcn_jax", "torch_channels_last")}, batch_size,
                                          flops, matmul_gflops), all_stats=stats)


def split(stats: dict) -> dict:
    """Each side's step as its forward plus the rest (median seconds; the rest is step minus forward, both medians),
    and fcn_jax / torch for each part."""
    parts = {}
    for side, step_name in (("fcn_jax", "fcn_jax"), ("torch", "torch_channels_last")):
        forward = stats[f"{side}_forward"]["median_s"]
        parts[side] = {"forward_s": forward, "rest_s": round(stats[step_name]["median_s"] - forward, 4)}
    return {**parts, "forward_ratio": round(parts["fcn_jax"]["forward_s"] / parts["torch"]["forward_s"], 3),
            "rest_ratio": round(parts["fcn_jax"]["rest_s"] / parts["torch"]["rest_s"], 3)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["caffe:320:1", "caffe:500:1", "same:256:8"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    report = {"benchmark": "matmul_forms", "torch_threads": common.set_torch_threads(), **common.machine_info(),
              "matmul_gflops_per_s": common.matmul_rate(), "results": []}
    for case in args.cases:
        geometry, size, batch = case.split(":")
        row = run_case(geometry, int(size), int(batch), args.reps, report["matmul_gflops_per_s"])
        report["results"].append(row)
        print(case, "winograd/direct", row["winograd_over_direct"], "fcn_jax/torch", row["ratio_fcn_jax_over_torch"],
              "direct/torch", row["direct_over_torch"], "split", row["split"], flush=True)
        common.write_report("matmul_forms", report, args.out)


if __name__ == "__main__":
    main()
