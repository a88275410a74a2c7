"""Shared pieces of the fcn_jax-vs-PyTorch benchmarks: params, equality check, interleaved timing, JSON.

Timing rule: fcn_jax and torch run in the same process, alternating call by call, so both see the
same machine load; the ratio fcn_jax/torch is the number to read, absolute times are context.
Memory rule: the peak-RSS rise during one warm call over the RSS just before it (Linux VmHWM,
reset through /proc/self/clear_refs), measured the same way for both frameworks.
"""
import json
import os
import platform
import statistics
import time

import flax
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from fcn_jax.models import layers, zoo

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)


def set_torch_threads():
    """torch intra-op threads = the cores XLA:CPU's thread pool uses (all of them)."""
    import torch

    torch.set_num_threads(os.cpu_count())
    return torch.get_num_threads()


def random_params(model, image_shape, seed: int = 0) -> dict:
    """NumPy params of `model`: He-normal kernels, small biases, random (non-zero) score layers,
    upscore kernels bilinear plus noise (so class mixing is exercised).

    Built from eval_shape: a jitted model.init spends seconds compiling the threefry RNG, and
    zero-initialised score layers would make every logit zero and the equality check empty.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct(image_shape, jnp.float32))["params"]
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        if zoo.is_upsample_param(path):
            noise = rng.normal(size=x.shape) * 0.01
            return (layers.bilinear_kernel(x.shape[0], x.shape[2]) + noise).astype(np.float32)
        fan_in = np.prod(x.shape[:-1]) if len(x.shape) > 1 else 1
        scale = np.sqrt(2 / fan_in) if path[-1] == "kernel" else 0.01
        return (rng.normal(size=x.shape) * scale).astype(np.float32)

    flat = flax.traverse_util.flatten_dict(shapes)
    return flax.traverse_util.unflatten_dict({k: leaf(k, v) for k, v in flat.items()})


def random_images(shape, seed: int = 1) -> np.ndarray:
    """(N, H, W, 3) float32 mean-subtracted-looking images (uniform pixels minus the Caffe mean)."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, shape) - np.asarray(CAFFE_MEAN_BGR)).astype(np.float32)


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|: one number for 'equal up to float rounding'."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shape mismatch: {actual.shape} vs {expected.shape}")
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_rss_rise_mb(fn):
    """(fn's result, peak RSS during fn minus RSS before it, in MB). Linux only."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kb("VmRSS")
    out = fn()
    return out, (_status_kb("VmHWM") - before) / 1024


def rss_mb() -> dict:
    return {"rss_mb": _status_kb("VmRSS") / 1024, "hwm_mb": _status_kb("VmHWM") / 1024}


def interleaved(fns: dict, warmup: int, reps: int) -> dict:
    """Call every fn warmup + reps times, alternating between them (order reversed every round).

    Returns, per name: times_s (timed calls), min_s, median_s, peak_rss_rise_mb (max over the timed
    calls). Each fn must block until its result is ready.
    """
    names = list(fns)
    stats = {name: {"times_s": [], "peak_rss_rise_mb": 0.0} for name in names}
    for rnd in range(warmup + reps):
        for name in (names if rnd % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            _, rise = peak_rss_rise_mb(fns[name])
            elapsed = time.perf_counter() - start
            if rnd >= warmup:
                stats[name]["times_s"].append(round(elapsed, 4))
                stats[name]["peak_rss_rise_mb"] = round(max(stats[name]["peak_rss_rise_mb"], rise), 1)
    for s in stats.values():
        s["min_s"], s["median_s"] = min(s["times_s"]), statistics.median(s["times_s"])
    return stats


def ratios(stats: dict, name: str, baseline: str) -> dict:
    """name/baseline time ratios: of medians, of minima, and the median of per-round ratios."""
    a, b = stats[name], stats[baseline]
    per_round = [x / y for x, y in zip(a["times_s"], b["times_s"])]
    return {"median": round(a["median_s"] / b["median_s"], 3), "min": round(a["min_s"] / b["min_s"], 3),
            "per_round_median": round(statistics.median(per_round), 3)}


def matmul_rate(size: int = 4096, reps: int = 5, dtype=jnp.float32) -> float:
    """GFLOP/s of one size x size matmul under XLA (median of reps; fp32 unless dtype says): the yardstick for
    "how close to this machine's limit" (a convolution at this rate is at matmul speed)."""
    a = jax.device_put(np.random.default_rng(0).standard_normal((size, size), np.float32).astype(dtype))
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return round(2 * size ** 3 / statistics.median(times) / 1e9, 1)


def compare_to_torch(stats: dict, images: int, flops: float | None, matmul_gflops: float | None = None) -> dict:
    """Throughput per entry of `stats` (added in place; with matmul_gflops, FLOP/s as a fraction of that rate too)
    and fcn_jax's time ratios against the fastest torch entry and against each one: the common tail of the
    inference and train-step reports."""
    for s in stats.values():
        s["images_per_s"] = round(images / s["median_s"], 3)
        s["gflops_per_s"] = round(flops / s["median_s"] / 1e9, 1) if flops else None
        if flops and matmul_gflops:
            s["fraction_of_matmul_rate"] = round(s["gflops_per_s"] / matmul_gflops, 3)
    torch_names = [n for n in stats if n.startswith("torch")]
    baseline = min(torch_names, key=lambda n: stats[n]["median_s"])
    return dict(torch_baseline=baseline, ratio_fcn_jax_over_torch=ratios(stats, "fcn_jax", baseline),
                ratios_vs_each_torch={n: ratios(stats, "fcn_jax", n) for n in torch_names},
                stats=stats, loadavg=[round(x, 2) for x in os.getloadavg()])


def compiled_flops(compiled) -> float | None:
    """FLOPs XLA counts for a compiled computation (2 per multiply-add), or None if it does not say."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops else None


def jaxpr_flops(fn, *args) -> float:
    """FLOPs (2 per multiply-add) of the convolutions and matmuls of fn(*args) as traced, before any backend
    rewrites them: the model FLOPs of MFU (XLA's cost analysis of a GPU executable does not count the cuDNN calls
    its convolutions become). A scan counts its length times, a cond its costliest branch, a while loop once; an
    input-dilated convolution (the input gradient of a strided one) counts only its products with real inputs;
    the CPU's matmul forms (conv_forms) and the sub-pixel upsampling count the padding they multiply too."""
    return 2.0 * _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_macs(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out, rhs = eqn.outvars[0].aval.shape, eqn.invars[1].aval.shape
            out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            zeros = np.prod(eqn.params["lhs_dilation"] or 1, dtype=np.float64)  # the inserted zeros do no work
            total += np.prod(out, dtype=np.float64) * np.prod(rhs, dtype=np.float64) / out_features / zeros
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            out, lhs = eqn.outvars[0].aval.shape, eqn.invars[0].aval.shape
            total += np.prod(out, dtype=np.float64) * np.prod([lhs[d] for d in lhs_contract], dtype=np.float64)
        subs = [_jaxpr_macs(getattr(v, "jaxpr", v)) for v in _sub_jaxprs(eqn.params)]
        if name == "cond":
            total += max(subs, default=0.0)
        else:
            total += sum(subs) * (eqn.params["length"] if name == "scan" else 1)
    return total


def _sub_jaxprs(params: dict):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                yield item


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def machine_info() -> dict:
    """Where and under what load the numbers were taken."""
    import torch

    return {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "python": platform.python_version(), "jax": jax.__version__, "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()], "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def write_report(name: str, report: dict, out: str | None = None) -> str:
    """benchmarks/results/<name>.json (or `out`), with the load average at the end added."""
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    path = out or os.path.join(RESULTS_DIR, f"{name}.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {path}", flush=True)
    return path
