"""fcn_jax against the same torch FCN-8s on one GPU: inference and training-step images/s, compile time, peak device
memory and MFU against the card's dense bf16 peak; writes JSON and a markdown table.

    python -m benchmarks.gpu --out $OUT/gpu.json        # on the GPU machine: about 4 minutes, --budget_s bounds it

Runs where only jax (CUDA), flax, optax, orbax-checkpoint, numpy and torch (CUDA) are installed: it imports
fcn_jax.models, fcn_jax.step and benchmarks.torch_fcn, never TensorFlow, tensorflow-datasets or ml_collections.
Cases (in this order, the goal's first; the rest are skipped, and listed as skipped, once --budget_s is spent):
training step and inference, bf16 then fp32, 512x512 ("same" geometry) then 500x500 (caffe geometry, pad 100), at
batch 16, 8, 1. Each side: the same random weights; fcn_jax jitted (the training step is step.train_step with the
reference's SGD momentum 0.99 and summed loss, donated state); torch channels_last with cudnn.benchmark, bf16
through torch.autocast, the same SGD; each timed call runs --iters steps and synchronises (block_until_ready,
torch.cuda.synchronize). Calls alternate for --reps rounds after a warm-up. Outputs are compared before timing
(relative error recorded; TF32 and bf16 make GPU outputs differ more than on the CPU).

On the CPU the same script is the smoke test (tests/gpu_benchmark_test.py): --width 1/32 --sizes 64 ...
"""
import argparse
import functools
import json
import os
import statistics
import time
import types

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the card with torch; peaks measurable

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from fcn_jax import models, step  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L4": 121.0}  # dense, datasheets
GEOMETRY_OF_SIZE = {512: "same", 500: "caffe"}


def peak_tflops(device_kind: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_kind), None)


def optim_config(variant: str, dtype: str, width: float):
    """The reference recipe as plain attributes (what step.create_optimizer reads): SGD 0.99, lr 1e-10."""
    ns = types.SimpleNamespace
    return ns(optim=ns(optimizer="sgd", learning_rate=1e-10, momentum=0.99, weight_decay=5e-4, bias_lr_mult=2.0,
                       schedule="constant", warmup_steps=0, grad_clip_norm=0.0, grad_accum_steps=1),
              train=ns(num_steps=1000), model=ns(learnable_upsample=False, variant=variant, dtype=dtype, width=width))


def make_inputs(batch: int, size: int, seed: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 21, (batch, size, size)).astype(np.int32)
    labels[:, :size // 10] = 255
    return {"image": common.random_images((batch, size, size, 3), seed), "label": labels}


def jax_case(kind: str, model, params, inputs: dict, config, iters: int):
    """(blocking fn running `iters` calls, compile seconds, FLOPs of one call, bytes of the executable, output)."""
    batch = jax.device_put(inputs)
    if kind == "inference":
        fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
        args = (jax.device_put(params), batch["image"])
    else:
        state = step.TrainState.create(apply_fn=model.apply, params=jax.device_put(params),
                                       tx=step.create_optimizer(config, params))
        fn = jax.jit(functools.partial(step.train_step, loss_reduction="sum", num_classes=21,
                                       learnable_upsample=config.model.learnable_upsample), donate_argnums=(0,))
        args = (state, batch, jax.random.PRNGKey(0))
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    device_bytes = None if memory is None else int(memory.temp_size_in_bytes + memory.argument_size_in_bytes
                                                   + memory.output_size_in_bytes)
    holder = {"args": args}

    def run():
        out = None
        for _ in range(iters):
            if kind == "inference":
                out = compiled(*holder["args"])
            else:
                state, out = compiled(*holder["args"])
                holder["args"] = (state, *holder["args"][1:])
        return jax.block_until_ready(out)

    return run, compile_s, common.compiled_flops(compiled), device_bytes


def torch_case(kind: str, variant: str, geometry: str, dtype: str, width: float, params, inputs: dict, iters: int):
    """(blocking fn running `iters` calls, the torch device)."""
    import torch
    import torch.nn.functional as F

    from benchmarks.torch_fcn import TorchFCN, load_fcn_jax_params

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    net = TorchFCN(variant, 21, geometry, width, 0.5, {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype])
    net = load_fcn_jax_params(net, params).to(device, memory_format=torch.channels_last)
    images = torch.from_numpy(common.nchw(inputs["image"])).to(device).contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(inputs["label"]).long().to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if kind == "inference":
        net.eval()

        def run():
            with torch.inference_mode():
                for _ in range(iters):
                    out = net(images)
            sync()
            return out
    else:
        net.train()
        for name, p in net.named_parameters():
            p.requires_grad_(not name.startswith("upscores."))
        trainable = [p for p in net.parameters() if p.requires_grad]
        sgd = torch.optim.SGD(trainable, lr=1e-10, momentum=0.99)

        def run():
            for _ in range(iters):
                sgd.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(images), labels, ignore_index=255, reduction="sum")
                loss.backward()
                sgd.step()
            sync()
            return loss.detach()

    return run, device


def run_case(kind, size, batch, dtype, args, frameworks) -> dict:
    geometry, variant = GEOMETRY_OF_SIZE.get(size, "same"), "fcn8s"
    model = models.create_model(variant, geometry=geometry, width=args.width,
                                dtype={"bf16": jnp.bfloat16, "fp32": jnp.float32}[dtype])
    inputs = make_inputs(batch, size)
    params = common.random_params(models.create_model(variant, geometry=geometry, width=args.width),
                                  inputs["image"].shape)
    row = {"kind": kind, "size": size, "geometry": geometry, "batch": batch, "dtype": dtype, "iters": args.iters}
    fns = {}
    fns["fcn_jax"], row["jax_compile_s"], flops, row["jax_executable_bytes"] = jax_case(
        kind, model, params, inputs, optim_config(variant, dtype, args.width), args.iters)
    if "torch" in frameworks:
        import torch

        fns["torch"], device = torch_case(kind, variant, geometry, dtype, args.width, params, inputs, args.iters)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        theirs = fns["torch"]()
        row["torch_first_call_s"] = round(time.perf_counter() - start, 3)
        row["torch_peak_bytes"] = int(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None
        if kind == "inference":
            ours = np.asarray(fns["fcn_jax"](), np.float32)
            row["relative_error"] = common.relative_error(ours, theirs.float().cpu().numpy().transpose(0, 2, 3, 1))
    stats = common.interleaved(fns, warmup=1, reps=args.reps)
    device = jax.devices()[0]
    memory = device.memory_stats() or {}
    row["jax_process_peak_bytes"] = memory.get("peak_bytes_in_use")
    peak = peak_tflops(device.device_kind)
    for name, s in stats.items():
        per_call = s["median_s"] / args.iters
        s["images_per_s"] = round(batch / per_call, 2)
        s["spread_s"] = [min(s["times_s"]), max(s["times_s"])]
        if flops:
            s["tflops_per_s"] = round(flops / per_call / 1e12, 3)
            s["mfu_vs_bf16_peak"] = round(flops / per_call / 1e12 / peak, 4) if peak else None
    row["gflop_per_call"] = round(flops / 1e9, 2) if flops else None
    row["stats"] = stats
    if "torch" in stats:
        row["fcn_jax_over_torch_images_per_s"] = round(stats["fcn_jax"]["images_per_s"] / stats["torch"]["images_per_s"], 3)
    return row


def markdown(report: dict) -> str:
    lines = [f"# fcn_jax vs torch on {report['device']} ({report['versions']})", "",
             "| step | size | batch | dtype | fcn_jax img/s | torch img/s | fcn_jax / torch | fcn_jax MFU | compile s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["cases"]:
        jax_s, torch_s = r["stats"]["fcn_jax"], r["stats"].get("torch", {})
        mfu = jax_s.get("mfu_vs_bf16_peak")
        lines.append(f"| {r['kind']} | {r['size']} ({r['geometry']}) | {r['batch']} | {r['dtype']} | "
                     f"{jax_s['images_per_s']} | {torch_s.get('images_per_s', '-')} | "
                     f"{r.get('fcn_jax_over_torch_images_per_s', '-')} | "
                     f"{'-' if mfu is None else f'{100 * mfu:.1f}%'} | {r['jax_compile_s']:.1f} |")
    lines += [""] + [f"skipped (budget): {s}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["train", "inference"], choices=("train", "inference"))
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=("bf16", "fp32"))
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 500])
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 8, 1])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--iters", type=int, default=5, help="calls per timed measurement")
    parser.add_argument("--frameworks", nargs="+", default=["fcn_jax", "torch"], choices=("fcn_jax", "torch"))
    parser.add_argument("--budget_s", type=float, default=240.0, help="no new case starts after this many seconds")
    parser.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "gpu.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    device = jax.devices()[0]
    versions = {"jax": jax.__version__, "backend": jax.default_backend()}
    if "torch" in args.frameworks:
        import torch

        versions.update(torch=torch.__version__, cuda=torch.version.cuda)
    report = {"device": device.device_kind, "peak_bf16_tflops": peak_tflops(device.device_kind),
              "versions": versions, "args": vars(args), "cases": [], "skipped": []}
    cases = [(k, s, b, d) for k in args.kinds for d in args.dtypes for s in args.sizes for b in args.batches]
    for kind, size, batch, dtype in cases:
        name = f"{kind} {size} b{batch} {dtype}"
        if time.perf_counter() - start > args.budget_s:
            report["skipped"].append(name)
            continue
        try:
            row = run_case(kind, size, batch, dtype, args, args.frameworks)
        except Exception as error:  # noqa: BLE001 - one failing case (e.g. out of memory) must not lose the others
            row = {"kind": kind, "size": size, "batch": batch, "dtype": dtype, "error": f"{type(error).__name__}: "
                   f"{str(error)[:300]}"}
            print(f"{name}: {row['error']}", flush=True)
        else:
            print(f"{name}: " + json.dumps({n: s["images_per_s"] for n, s in row["stats"].items()}), flush=True)
        report["cases"].append(row)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    report["median_compile_s"] = statistics.median([r["jax_compile_s"] for r in report["cases"] if "stats" in r] or [0])
    common.write_report("gpu", report, args.out)
    table = markdown({**report, "cases": [r for r in report["cases"] if "stats" in r]})
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(table)
    print(table)
    return report


if __name__ == "__main__":
    main()
