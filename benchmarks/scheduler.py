"""A/B of XLA:CPU's instruction schedulers (fcn_jax/core/xla_options.py): an fp32 FCN's training step (the reference
recipe of benchmarks/train_step.py: SGD momentum 0.99, summed loss, dropout 0.5; FCN-8s unless --variant) and
inference forward, each compiled with the default scheduler and with xla_options.CPU_TRAINING_OPTIONS; time, peak
RSS rise and XLA's temp buffer of each; writes JSON.

The same weights and batch for both; calls alternate for --reps rounds after a warm-up. Needs the bench venv
(benchmarks.train_step imports torch), the CPU backend, and XLA_FLAGS without a scheduler of its own.

  python -m benchmarks.scheduler [--train caffe:320:1 caffe:500:1 same:256:8] [--inference caffe:500:1 ...]
                                 [--variant fcn8s|fcn_resnet50|...] (a ResNet ignores the geometry)
"""
import argparse

from benchmarks import common, inference, train_step
from fcn_jax.core import xla_options
from fcn_jax.models import zoo

SCHEDULERS = {"default": {}, "memory_optimised": xla_options.CPU_TRAINING_OPTIONS}


def compiled_step(kind: str, variant: str, geometry: str, size: int, batch_size: int, options: dict):
    """(blocking fn, compiled executable) of the training step (benchmarks.train_step.jax_step) or the inference
    forward (benchmarks.inference.jax_forward), compiled with `options`."""
    if kind == "train":
        config, batch = train_step.make_config(variant, geometry, "fp32"), train_step.make_batch(batch_size, size)
        params = common.random_params(zoo.create_model(variant, geometry=geometry), batch["image"].shape)
        run, _, _, _, compiled = train_step.jax_step(config, params, batch, compiler_options=options)
        return run, compiled
    images = common.random_images((batch_size, size, size, 3))
    params = common.random_params(zoo.create_model(variant, geometry=geometry), images.shape)
    run, _, _, compiled = inference.jax_forward(variant, geometry, "fp32", params, images, compiler_options=options)
    return run, compiled


def run_case(variant: str, kind: str, case: str, reps: int) -> dict:
    geometry, size, batch = case.split(":")
    fns, temp_mb = {}, {}
    for name, options in SCHEDULERS.items():
        fns[name], compiled = compiled_step(kind, variant, geometry, int(size), int(batch), options)
        temp_mb[name] = round(compiled.memory_analysis().temp_size_in_bytes / 2 ** 20, 1)
    stats = common.interleaved(fns, warmup=1, reps=reps)
    return dict(variant=variant, kind=kind, geometry=geometry, size=int(size), batch=int(batch), reps=reps,
                temp_mb=temp_mb,
                memory_optimised_over_default=common.ratios(stats, "memory_optimised", "default"), stats=stats)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", nargs="*", default=["caffe:320:1", "caffe:500:1", "same:256:8"])
    parser.add_argument("--inference", nargs="*", default=["caffe:500:1", "same:224:1", "same:224:8"])
    parser.add_argument("--variant", default="fcn8s")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    report = {"benchmark": "scheduler", **common.machine_info(), "options": xla_options.CPU_TRAINING_OPTIONS,
              "results": []}
    for kind, cases in (("train", args.train), ("inference", args.inference)):
        for case in cases:
            row = run_case(args.variant, kind, case, args.reps)
            report["results"].append(row)
            print(args.variant, kind, case, "temp MB", row["temp_mb"], "time memory_optimised/default",
                  row["memory_optimised_over_default"], "RSS rise MB",
                  {k: v["peak_rss_rise_mb"] for k, v in row["stats"].items()}, flush=True)
            common.write_report("scheduler", report, args.out)


if __name__ == "__main__":
    main()
