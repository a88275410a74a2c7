"""fcn_jax against the same torch FCN-8s on one GPU: inference and training-step images/s, compile time, peak device
memory and MFU against the card's dense bf16 peak; writes JSON and a markdown table.

    python -m benchmarks.gpu --out $OUT/gpu.json        # on the GPU machine; no case starts after --budget_s (240)

On an H200 a full-size case takes about a minute (XLA's autotuned compile of 2-60 s, torch's cudnn.benchmark first
call of up to 20 s, the timed rounds), so the default budget covers the first four or five cases.

Runs where only jax (CUDA), flax, optax, orbax-checkpoint, numpy and torch (CUDA) are installed: it imports
fcn_jax.models, fcn_jax.train.step, fcn_jax.core.xla_options, fcn_jax.data.input_pipeline and benchmarks.torch_fcn,
never TensorFlow,
tensorflow-datasets or ml_collections.
Cases (in this order, the goal's first; the rest are skipped, and listed as skipped, once --budget_s is spent):
batch 16, 8, 1, each bf16 then fp32, each the training step then inference, 512x512 ("same" geometry) then
500x500 (caffe geometry, pad 100); then the training loop with its input (train_input: fcn_jax's step fed by
data.input_pipeline from images in memory, against the same step on a device-resident batch). The report is
rewritten after every case, so a run cut short keeps what it measured.
Each side: the same random weights; fcn_jax jitted (the training step is step.train_step with the
reference's SGD momentum 0.99 and summed loss, donated state); torch channels_last with cudnn.benchmark, bf16
through torch.autocast, the same SGD; each timed call runs --iters steps and synchronises (block_until_ready,
torch.cuda.synchronize). Calls alternate for --reps rounds after a warm-up. Outputs are compared before timing
(relative error recorded; TF32 and bf16 make GPU outputs differ more than on the CPU). MFU counts the model's FLOPs
(the convolutions and matmuls of the traced program, common.jaxpr_flops) against the datasheet peak; the measured
rate of a bf16 matmul on the same card is recorded beside it. --profile DIR writes, for the first --profile_cases
cases, a jax profiler trace (Chrome trace JSON) and torch's per-kernel table, to say where the time goes.

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
from fcn_jax.core import xla_options  # noqa: E402
from fcn_jax.models import zoo  # noqa: E402
from fcn_jax.train import step  # noqa: E402

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
    """(blocking fn running `iters` calls, compile seconds, FLOPs of one call, bytes of the executable)."""
    batch = jax.device_put(inputs)
    if kind == "inference":
        body = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
        fn = jax.jit(body)
        args = (jax.device_put(params), batch["image"])
    else:
        state = step.TrainState.create(apply_fn=model.apply, params=jax.device_put(params),
                                       tx=step.create_optimizer(config, params))
        body = functools.partial(step.train_step, loss_reduction="sum", num_classes=21,
                                 learnable_upsample=config.model.learnable_upsample)
        fn = jax.jit(body, donate_argnums=(0,), compiler_options=xla_options.training())
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

    return run, compile_s, common.jaxpr_flops(body, *args), device_bytes  # body: a jit with options cannot nest


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


def run_case(kind, size, batch, dtype, args, frameworks, profile_prefix=None, profile_torch=False) -> dict:
    geometry, variant = GEOMETRY_OF_SIZE.get(size, "same"), "fcn8s"
    model = zoo.create_model(variant, geometry=geometry, width=args.width,
                             dtype={"bf16": "bfloat16", "fp32": "float32"}[dtype])
    inputs = make_inputs(batch, size)
    params = common.random_params(zoo.create_model(variant, geometry=geometry, width=args.width),
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
    row["jax_peak_bytes_so_far"] = memory.get("peak_bytes_in_use")  # the process's peak over all cases until now
    if profile_prefix:
        row["profile"] = profile(fns, profile_prefix, with_torch=profile_torch)
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
        row["fcn_jax_over_torch_images_per_s"] = round(
            stats["fcn_jax"]["images_per_s"] / stats["torch"]["images_per_s"], 3)
    return row


def input_loop_case(size, batch, dtype, args) -> dict:
    """The training step fed by data.input_pipeline (scale 0.5..2.0, crop, flip of 375x500 / 500x375 images held in
    memory; the reader threads are the host's cores) against the same step on one batch already on the device,
    alternating: images/s of each, and how much of the step's rate the input keeps."""
    from fcn_jax.data import input_pipeline

    geometry, variant = GEOMETRY_OF_SIZE.get(size, "same"), "fcn8s"
    model = zoo.create_model(variant, geometry=geometry, width=args.width,
                             dtype={"bf16": "bfloat16", "fp32": "float32"}[dtype])
    rng = np.random.default_rng(0)
    source = [{"image": rng.integers(0, 256, (*shape, 3), dtype=np.uint8),
               "label": rng.integers(0, 21, shape, dtype=np.uint8), "id": f"bench_{i}"}
              for i, shape in enumerate([(375, 500), (500, 375)] * max(4, batch))]
    batches = input_pipeline.train_batches(source, global_batch_size=batch, crop_size=(size, size), seed=0)
    params = common.random_params(zoo.create_model(variant, geometry=geometry, width=args.width),
                                  (batch, size, size, 3))
    config = optim_config(variant, dtype, args.width)
    state = step.TrainState.create(apply_fn=model.apply, params=jax.device_put(params),
                                   tx=step.create_optimizer(config, params))
    body = functools.partial(step.train_step, loss_reduction="sum", num_classes=21, learnable_upsample=False)
    fn = jax.jit(body, donate_argnums=(0,), compiler_options=xla_options.training())
    resident = jax.device_put(next(batches))
    compiled = fn.lower(state, resident, jax.random.PRNGKey(0)).compile()
    holder = {"state": state}

    def steps(fed: bool):
        def run():
            out = None
            for _ in range(args.iters):
                batch_now = jax.device_put(next(batches)) if fed else resident
                holder["state"], out = compiled(holder["state"], batch_now, jax.random.PRNGKey(0))
            return jax.block_until_ready(out)
        return run

    try:
        stats = common.interleaved({"step_only": steps(False), "with_input": steps(True)}, warmup=1, reps=args.reps)
    finally:
        batches.close()
    for s in stats.values():
        s["images_per_s"] = round(batch * args.iters / s["median_s"], 2)
        s["spread_s"] = [min(s["times_s"]), max(s["times_s"])]
    return {"kind": "train_input", "size": size, "geometry": geometry, "batch": batch, "dtype": dtype,
            "iters": args.iters, "reader_threads": input_pipeline.default_workers(), "stats": stats,
            "with_input_over_step_only": round(stats["with_input"]["images_per_s"]
                                               / stats["step_only"]["images_per_s"], 3)}


def profile(fns: dict, prefix: str, with_torch: bool) -> dict:
    """One more call of each side under its profiler: jax's trace as <prefix>jax_trace.json.gz (Chrome trace
    events: one per kernel, with the jax op that launched it) and, with_torch, torch's per-kernel table as
    <prefix>torch_kernels.txt. Returns the files written, or the error: profiling must not lose the measurements.
    torch's profiler keeps CUPTI subscribed once it has run, and jax's tracer then fails
    (CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED, seen on an H200), so only the last profiled case takes
    torch's table."""
    import glob
    import shutil
    import tempfile

    written = {}
    try:
        with tempfile.TemporaryDirectory() as trace_dir:
            with jax.profiler.trace(trace_dir):
                fns["fcn_jax"]()
            found = glob.glob(os.path.join(trace_dir, "**/*.trace.json.gz"), recursive=True)
            if found:
                written["jax"] = shutil.copy(found[0], prefix + "jax_trace.json.gz")
    except Exception as error:  # noqa: BLE001
        written["jax_error"] = f"{type(error).__name__}: {str(error)[:300]}"
    if with_torch and "torch" in fns:
        try:
            import torch

            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=activities) as prof:
                fns["torch"]()
            sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
            with open(prefix + "torch_kernels.txt", "w") as f:
                f.write(prof.key_averages().table(sort_by=sort, row_limit=60, max_name_column_width=90))
            written["torch"] = prefix + "torch_kernels.txt"
        except Exception as error:  # noqa: BLE001
            written["torch_error"] = f"{type(error).__name__}: {str(error)[:300]}"
    return written


def markdown(report: dict) -> str:
    ceiling = report.get("measured_bf16_matmul_tflops")
    lines = [f"# fcn_jax vs torch on {report['device']} ({report['versions']})", "",
             f"MFU against the datasheet's dense bf16 peak, {report['peak_bf16_tflops']} TFLOP/s"
             + (f"; a bf16 matmul measured {ceiling} TFLOP/s here" if ceiling else ""), "",
             "| step | size | batch | dtype | fcn_jax img/s | torch img/s | fcn_jax / torch | fcn_jax MFU "
             "| compile s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["cases"]:
        if r["kind"] == "train_input":
            continue
        jax_s, torch_s = r["stats"]["fcn_jax"], r["stats"].get("torch", {})
        mfu = jax_s.get("mfu_vs_bf16_peak")
        lines.append(f"| {r['kind']} | {r['size']} ({r['geometry']}) | {r['batch']} | {r['dtype']} | "
                     f"{jax_s['images_per_s']} | {torch_s.get('images_per_s', '-')} | "
                     f"{r.get('fcn_jax_over_torch_images_per_s', '-')} | "
                     f"{'-' if mfu is None else f'{100 * mfu:.1f}%'} | {r['jax_compile_s']:.1f} |")
    loops = [r for r in report["cases"] if r["kind"] == "train_input"]
    if loops:
        lines += ["", "| training loop | size | batch | dtype | step alone img/s | with input img/s | kept |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| train_input | {r['size']} | {r['batch']} | {r['dtype']} | "
                  f"{r['stats']['step_only']['images_per_s']} | {r['stats']['with_input']['images_per_s']} | "
                  f"{100 * r['with_input_over_step_only']:.0f}% |" for r in loops]
    lines += [""] + [f"skipped (budget): {s}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["train", "inference", "train_input"],
                        choices=("train", "inference", "train_input"))
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=("bf16", "fp32"))
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 500])
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 8, 1])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--iters", type=int, default=5, help="calls per timed measurement")
    parser.add_argument("--frameworks", nargs="+", default=["fcn_jax", "torch"], choices=("fcn_jax", "torch"))
    parser.add_argument("--budget_s", type=float, default=240.0, help="no new case starts after this many seconds")
    parser.add_argument("--matmul_size", type=int, default=8192, help="n of the n x n x n bf16 matmul timed as the "
                        "card's measured ceiling (0: skip)")
    parser.add_argument("--profile", default="", help="folder for the first cases' jax traces and torch kernel "
                        "tables")
    parser.add_argument("--profile_cases", type=int, default=1, help="how many of the first cases --profile covers")
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
    if args.matmul_size:
        report["measured_bf16_matmul_tflops"] = round(
            common.matmul_rate(args.matmul_size, reps=10, dtype=jnp.bfloat16) / 1e3, 3)
        print(f"bf16 {args.matmul_size}^3 matmul: {report['measured_bf16_matmul_tflops']} TFLOP/s", flush=True)
    cases = case_order(args.kinds, args.sizes, args.batches, args.dtypes)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    for index, (kind, size, batch, dtype) in enumerate(cases):
        name = f"{kind} {size} b{batch} {dtype}"
        if time.perf_counter() - start > args.budget_s:
            report["skipped"].append(name)
            continue
        try:
            prefix = os.path.join(args.profile, f"{kind}{size}b{batch}{dtype}_")
            row = input_loop_case(size, batch, dtype, args) if kind == "train_input" else run_case(
                kind, size, batch, dtype, args, args.frameworks,
                           profile_prefix=prefix if args.profile and index < args.profile_cases else None,
                           profile_torch=index == args.profile_cases - 1)
        except Exception as error:  # noqa: BLE001 - one failing case (e.g. out of memory) must not lose the others
            row = {"kind": kind, "size": size, "batch": batch, "dtype": dtype, "error": f"{type(error).__name__}: "
                   f"{str(error)[:300]}"}
            print(f"{name}: {row['error']}", flush=True)
        else:
            print(f"{name}: " + json.dumps({n: s["images_per_s"] for n, s in row["stats"].items()}), flush=True)
        report["cases"].append(row)
        release_torch_memory(args.frameworks)
        write(report, args.out, start)
    print(write(report, args.out, start))
    return report


def case_order(kinds, sizes, batches, dtypes) -> list[tuple]:
    """(kind, size, batch, dtype) in the order they run: by batch, then dtype, kind and size, as given; the training
    loop with input (train_input, fcn_jax alone) after the comparisons with torch."""
    order = [(k, s, b, d) for b in batches for d in dtypes for k in kinds for s in sizes]
    return [case for case in order if case[0] != "train_input"] + [case for case in order if case[0] == "train_input"]


def release_torch_memory(frameworks):
    """Hand torch's cached blocks back between cases, so the next case's jax side finds the card free."""
    if "torch" in frameworks:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def write(report: dict, out: str, start: float) -> str:
    """The JSON and the markdown table of the cases so far; returns the table."""
    report["wall_s"] = round(time.perf_counter() - start, 1)
    report["median_compile_s"] = statistics.median([r["jax_compile_s"] for r in report["cases"] if "jax_compile_s" in r]
                                                   or [0])
    common.write_report("gpu", report, out)
    table = markdown({**report, "cases": [r for r in report["cases"] if "stats" in r]})
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(table)
    return table


if __name__ == "__main__":
    main()
