"""Training step images/s: fcn_jax's train_step vs a torch forward+backward+SGD step of the same net.

fcn_jax: `step_module.train_step` jitted as loop.py does it (state donated, xla_options.training), optimiser from
`step_module.create_optimizer` with the experiment's config (reference: SGD momentum 0.99, weight decay
5e-4 on kernels, biases at 2x lr, frozen bilinear upsampling, loss summed over pixels).
torch: TorchFCN in train mode, torch.optim.SGD with the same groups, summed cross entropy with
ignore_index 255. Both run dropout 0.5 (different RNGs, same work).

Before timing, one pair at small width without dropout is checked: the params after two steps
(so momentum is used) must agree (relative error of the update <= 1e-3).

  python -m benchmarks.train_step [--cases default|quick] [--reps 2] [--out benchmarks/results/train_step.json]
"""
import argparse
import functools
import time

import jax
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import common
from benchmarks.torch_fcn import FORMATS, TorchFCN, load_fcn_jax_params
from experiments import base
from fcn_jax.core import xla_options
from fcn_jax.models import vgg, zoo
from fcn_jax.train import step as step_module

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# (variant, geometry, crop size, batch, dtype, reps): the reference recipe is 500x500 batch 1.
DEFAULT_CASES = (
    ("fcn8s", "caffe", 500, 1, "fp32", 1),
    ("fcn8s", "caffe", 256, 1, "fp32", 2),
    ("fcn8s", "same", 256, 1, "fp32", 2),
    ("fcn8s", "same", 256, 1, "bf16", 1),
)
QUICK_CASES = (("fcn8s", "same", 256, 1, "fp32", 2),)


def make_config(variant, geometry, dtype, learning_rate=1e-10, dropout_rate=0.5):
    config = base.get_config()
    config.model.variant, config.model.geometry = variant, geometry
    config.model.dtype = {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    config.model.dropout_rate = dropout_rate
    config.optim.learning_rate = learning_rate
    return config


def make_batch(batch, size, num_classes=21, seed=2):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, (batch, size, size)).astype(np.int32)
    labels[:, :size // 10] = 255  # some ignored pixels, as VOC borders and padding give
    return {"image": common.random_images((batch, size, size, 3), seed), "label": labels}


def jax_step(config, params, batch, model=None, compiler_options=None):
    """(blocking step fn, compile seconds, FLOPs, fn returning the current params as numpy, the compiled step);
    `model` defaults to config.model's, `compiler_options` to xla_options.training()'s."""
    model = zoo.from_settings(config.model) if model is None else model
    state = step_module.TrainState.create(apply_fn=model.apply, params=jax.device_put(params),
                                    tx=step_module.create_optimizer(config, params))
    step = functools.partial(step_module.train_step, loss_reduction=config.loss_reduction,
                             num_classes=config.model.num_classes, learnable_upsample=config.model.learnable_upsample)
    batch, rng = jax.device_put(batch), jax.random.PRNGKey(0)
    start = time.perf_counter()
    options = xla_options.training() if compiler_options is None else compiler_options
    compiled = jax.jit(step, donate_argnums=(0,), compiler_options=options).lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch, rng)
        return jax.block_until_ready(metrics)

    return run, compile_s, common.compiled_flops(compiled), lambda: jax.device_get(holder["state"].params), compiled


def torch_step(config, params, batch, memory_format):
    """Blocking step fn of the torch reference with the reference's SGD groups."""
    model_config, optim = config.model, config.optim
    dtype = TORCH_DTYPES["bf16" if model_config.dtype == "bfloat16" else "fp32"]
    model = TorchFCN(model_config.variant, model_config.num_classes, model_config.geometry,
                     model_config.width, model_config.dropout_rate, dtype)
    model = load_fcn_jax_params(model, params).train().to(memory_format=memory_format)
    weights, biases = [], []
    for name, p in model.named_parameters():
        if name.startswith("upscores.") and not model_config.learnable_upsample:
            p.requires_grad_(False)
        else:
            (biases if name.endswith("bias") else weights).append(p)
    sgd = torch.optim.SGD([
        {"params": weights, "lr": optim.learning_rate, "weight_decay": optim.weight_decay},
        {"params": biases, "lr": optim.learning_rate * optim.bias_lr_mult, "weight_decay": 0.0},
    ], lr=optim.learning_rate, momentum=optim.momentum)
    images = torch.from_numpy(common.nchw(batch["image"])).contiguous(memory_format=memory_format)
    labels = torch.from_numpy(batch["label"]).long()

    def run():
        sgd.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels, ignore_index=255, reduction="sum")
        loss.backward()
        sgd.step()
        return loss.detach()

    return run, model


def check_equal_steps(variant, geometry, width=1 / 16, size=64, steps=2) -> float:
    """Relative error between fcn_jax's and torch's param updates after `steps` SGD steps."""
    config = make_config(variant, geometry, "fp32", learning_rate=1e-7, dropout_rate=0.0)
    config.model.width = width
    batch = make_batch(1, size)
    params = common.random_params(zoo.create_model(variant, geometry=geometry, width=width),
                                  batch["image"].shape)
    jax_run, _, _, jax_params, _ = jax_step(config, params, batch)
    torch_run, torch_model = torch_step(config, params, batch, torch.contiguous_format)
    for _ in range(steps):
        jax_run(), torch_run()
    start = load_fcn_jax_params(TorchFCN(variant, geometry=geometry, width=width), params)
    after_jax = load_fcn_jax_params(TorchFCN(variant, geometry=geometry, width=width), jax_params())
    worst = 0.0
    for t_new, j_new, p0 in zip(torch_model.parameters(), after_jax.parameters(), start.parameters()):
        j_delta, t_delta = (j_new - p0).detach().numpy(), (t_new - p0).detach().numpy()
        worst = max(worst, common.relative_error(t_delta, j_delta))  # frozen: both must stay 0
    return worst


def run_case(variant, geometry, size, batch_size, dtype, reps, formats):
    config = make_config(variant, geometry, dtype)
    batch = make_batch(batch_size, size)
    params = common.random_params(zoo.create_model(variant, geometry=geometry), batch["image"].shape)
    fns = {}
    fns["fcn_jax"], compile_s, flops = jax_step(config, params, batch)[:3]
    for name in formats:
        fns[f"torch_{name}"] = torch_step(config, params, batch, FORMATS[name])[0]
    stats = common.interleaved(fns, warmup=1, reps=reps)
    return dict(variant=variant, geometry=geometry, size=size, batch=batch_size, dtype=dtype, reps=reps,
                gflop_per_step=round(flops / 1e9, 2) if flops else None, jax_compile_s=round(compile_s, 2),
                **common.compare_to_torch(stats, batch_size, flops))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", choices=("default", "quick"), default="default")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--formats", default="nchw,channels_last")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    report = {"benchmark": "train_step", "torch_threads": common.set_torch_threads(), **common.machine_info()}
    report["equality"] = {g: check_equal_steps("fcn8s", g) for g in vgg.GEOMETRIES}
    print(f"update relative error after 2 steps (fcn8s, width 1/16): {report['equality']}", flush=True)
    if max(report["equality"].values()) > 1e-3:
        raise AssertionError(f"fcn_jax and torch train steps differ: {report['equality']}")
    report["results"] = []
    for variant, geometry, size, batch, dtype, reps in (DEFAULT_CASES if args.cases == "default" else QUICK_CASES):
        row = run_case(variant, geometry, size, batch, dtype, args.reps or reps, args.formats.split(","))
        report["results"].append(row)
        s, r = row["stats"], row["ratio_fcn_jax_over_torch"]
        print(f"train {variant} {geometry} {size} b{batch} {dtype}: fcn_jax {s['fcn_jax']['median_s']:.3f} s  "
              f"{row['torch_baseline']} {s[row['torch_baseline']]['median_s']:.3f} s  ratio {r['median']:.3f} "
              f"(min {r['min']:.3f})", flush=True)
        common.write_report("train_step", report, args.out)


if __name__ == "__main__":
    main()
