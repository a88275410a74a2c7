"""Compile time and number of compilations: param init, a short training run, evaluation shapes.

  init       create_train_state's jitted model.init at full width (FCN-8s caffe, 500x500) under
             each PRNG implementation: threefry (jax.random.PRNGKey), rbg (step_module.init_key),
             unsafe_rbg; compile and run seconds.
  short_run  job.train_and_evaluate on the demo config (synthetic data, width 1/8) for a few
             steps with one evaluation; every XLA backend compilation is counted by function name
             (jax.monitoring), so recompilations would show.
  eval       eval_step compile seconds at full width per padded eval shape: train.py compiles
             once per shape, so evaluating images at their own sizes costs this once per size.

  python -m benchmarks.compile [--parts init,short_run,eval] [--out benchmarks/results/compile.json]
"""
import argparse
import collections
import functools
import logging
import tempfile
import time

import jax
import jax.numpy as jnp

from benchmarks import common
from experiments import demo
from fcn_jax.infer import steps
from fcn_jax.models import zoo
from fcn_jax.train import job

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = []  # (function name, seconds) of every backend compilation in this process


def _on_event(event, duration, **kwargs):
    if event == COMPILE_EVENT:
        _compiles.append((kwargs.get("fun_name", "?"), duration))


def _count_since(start: int) -> dict:
    by_name = collections.Counter(name for name, _ in _compiles[start:])
    return {"count": len(_compiles) - start, "seconds": round(sum(s for _, s in _compiles[start:]), 2),
            "by_function": dict(by_name.most_common())}


def bench_init(image_shape=(1, 500, 500, 3)) -> dict:
    """Compile and run seconds of the jitted full-width model.init under each PRNG implementation."""
    model = zoo.create_model("fcn8s")
    images = jnp.zeros(image_shape, jnp.float32)
    out = {}
    for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
        init = jax.jit(lambda key: model.init({"params": key}, images, train=False)["params"])
        key = jax.random.key(0, impl=impl)
        start = time.perf_counter()
        compiled = init.lower(key).compile()
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        jax.block_until_ready(compiled(key))
        out[impl] = {"compile_s": round(compile_s, 2), "run_s": round(time.perf_counter() - start, 2)}
        print(f"init {impl:13s} compile {compile_s:6.2f} s  run {out[impl]['run_s']:6.2f} s", flush=True)
    return out


def bench_short_run(num_steps: int = 4) -> dict:
    """train_and_evaluate on the demo config for num_steps with one evaluation at the end."""
    config = demo.get_config()
    config.train.num_steps, config.train.log_every = num_steps, 2
    config.train.eval_every = config.train.checkpoint_every = num_steps
    config.data.synthetic_train, config.data.synthetic_val = 16, 8
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    root, absl_logger = logging.getLogger(), logging.getLogger("absl")
    levels = root.level, absl_logger.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # train.py's "compiled ..." lines
    absl_logger.setLevel(logging.WARNING)  # not orbax's and tfds's INFO chatter
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config.data.manual_dir, config.data.data_dir = f"{tmp}/voc", f"{tmp}/tfds"
            start_count, start = len(_compiles), time.perf_counter()
            job.train_and_evaluate(config, f"{tmp}/work")
            wall_s = time.perf_counter() - start
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        absl_logger.setLevel(levels[1])
    compiles = _count_since(start_count)
    logged = [m for m in messages if "compil" in m]
    print(f"short run ({num_steps} steps + eval): {wall_s:.1f} s wall, {compiles['count']} XLA compilations "
          f"({compiles['seconds']} s)", flush=True)
    return {"config": "experiments/demo.py", "num_steps": num_steps, "wall_s": round(wall_s, 1),
            "compilations": compiles, "train_py_log": logged}


def bench_eval_shapes(shapes=((500, 500), (512, 512), (375, 500))) -> dict:
    """Full-width FCN-8s caffe eval_step compile seconds per padded (H, W), batch 1."""
    model = zoo.create_model("fcn8s")
    step = jax.jit(functools.partial(steps.eval_step, apply_fn=model.apply, heads=(("", 21),)))
    params = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    out = {}
    for h, w in shapes:
        batch = {"image": jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32),
                 "label": jax.ShapeDtypeStruct((1, h, w), jnp.int32)}
        start_count, start = len(_compiles), time.perf_counter()
        step.lower(params["params"], batch).compile()
        out[f"{h}x{w}"] = {"compile_s": round(time.perf_counter() - start, 2),
                           "compilations": _count_since(start_count)["count"]}
        print(f"eval_step {h}x{w}: compile {out[f'{h}x{w}']['compile_s']} s", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="init,short_run,eval")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    report = {"benchmark": "compile", **common.machine_info()}
    parts = {"init": bench_init, "short_run": bench_short_run, "eval": bench_eval_shapes}
    for part in args.parts.split(","):
        report[part] = parts[part]()
        common.write_report("compile", report, args.out)


if __name__ == "__main__":
    main()
