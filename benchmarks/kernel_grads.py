"""A/B of VGG16's kernel gradients on this CPU: one matmul per tap (models.tap_conv, the default) against XLA's own
convolution gradient, with torch's training step as the yardstick; writes JSON.

The reference recipe's step (benchmarks/train_step.py: SGD momentum 0.99, summed loss, dropout 0.5, frozen
upsampling); the same weights and batch for all three; calls alternate for --reps rounds after a warm-up.

  python -m benchmarks.kernel_grads [--cases caffe:320:1 caffe:500:1 same:256:8] [--reps 5]
"""
import argparse

from benchmarks import common, train_step
from benchmarks.torch_fcn import FORMATS
from benchmarks.train_step import make_batch, make_config, torch_step
from fcn_jax import models


def jax_step(config, params, batch, tap_kernel_grads: bool):
    model = models.create_model(config.model.variant, geometry=config.model.geometry,
                                dropout_rate=config.model.dropout_rate, tap_kernel_grads=tap_kernel_grads)
    return train_step.jax_step(config, params, batch, model)[:3]


def run_case(geometry: str, size: int, batch_size: int, reps: int) -> dict:
    config = make_config("fcn8s", geometry, "fp32")
    batch = make_batch(batch_size, size)
    params = common.random_params(models.create_model("fcn8s", geometry=geometry), batch["image"].shape)
    fns, compile_s = {}, {}
    fns["fcn_jax"], compile_s["fcn_jax"], flops = jax_step(config, params, batch, True)
    fns["fcn_jax_xla_grads"], compile_s["fcn_jax_xla_grads"], _ = jax_step(config, params, batch, False)
    fns["torch_channels_last"] = torch_step(config, params, batch, FORMATS["channels_last"])[0]
    stats = common.interleaved(fns, warmup=1, reps=reps)
    return dict(geometry=geometry, size=size, batch=batch_size, reps=reps, jax_compile_s=compile_s,
                taps_over_xla_grads=common.ratios(stats, "fcn_jax", "fcn_jax_xla_grads"),
                xla_grads_over_torch=common.ratios(stats, "fcn_jax_xla_grads", "torch_channels_last"),
                **common.compare_to_torch({k: v for k, v in stats.items() if k != "fcn_jax_xla_grads"}, batch_size,
                                          flops), all_stats=stats)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["caffe:320:1", "caffe:500:1", "same:256:8"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    report = {"benchmark": "kernel_grads", "torch_threads": common.set_torch_threads(), **common.machine_info(),
              "results": []}
    for case in args.cases:
        geometry, size, batch = case.split(":")
        row = run_case(geometry, int(size), int(batch), args.reps)
        report["results"].append(row)
        print(case, "taps/xla", row["taps_over_xla_grads"], "taps/torch", row["ratio_fcn_jax_over_torch"],
              "xla/torch", row["xla_grads_over_torch"], flush=True)
        common.write_report("kernel_grads", report, args.out)


if __name__ == "__main__":
    main()
