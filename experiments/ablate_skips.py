"""The paper's ablations on the synthetic data, sized for a 2-core CPU.

Base: the demo recipe (FCN-8s, "same" geometry, width 1/8, frozen bilinear upsampling, mean loss, Adam),
trained from scratch for `num_steps`. Variants change one thing each:
  - skips: FCN-32s, FCN-16s, FCN-8s (the base), FCN-8s at-once (pool4 x0.01, pool3 x1e-4);
  - staged training as in the paper: 16s from the trained 32s, 8s from that 16s (num_steps more each);
  - learned instead of frozen bilinear upsampling;
  - the Caffe reference geometry (conv1_1 pad 100, ceil pools, VALID fc6) instead of "same";
  - the loss summed over pixels (the reference) instead of averaged (with Adam, whose steps are nearly
    invariant to a constant loss scale, only the per-batch weighting by valid pixels changes).

Command:  python -m fcn_jax.ablate --sweep experiments/ablate_skips.py --workdir runs/ablate
Expected: mean IU FCN-8s 61.1 > FCN-16s 43.2 > FCN-32s 14.3 (the paper's order), the Caffe geometry 76.6, after 150
          steps a variant, about 28 min on 2 cores (docs/ablation/results.md; one seed).
"""
from experiments import demo

NUM_STEPS = 150  # the whole sweep: 28 min 7 s on 2 idle CPU cores (docs/ablation); --steps 300 converges further


def get_config(num_steps: int = NUM_STEPS):
    config = demo.get_config()
    config.train.num_steps = num_steps
    config.train.log_every = max(1, min(25, num_steps // 4))
    config.train.eval_every = max(1, num_steps // 5)  # five points on each mean-IU curve
    config.train.checkpoint_every = max(1, num_steps // 3)
    config.optim.warmup_steps = min(config.optim.warmup_steps, num_steps // 10)
    return config


def get_sweep(num_steps: int = NUM_STEPS):
    return get_config(num_steps), [
        ("fcn32s", {"model.variant": "fcn32s"}),
        ("fcn16s", {"model.variant": "fcn16s"}),
        ("fcn8s", {}),
        ("fcn8s_atonce", {"model.variant": "fcn8s_atonce"}),
        ("fcn16s_staged", {"model.variant": "fcn16s", "init_from": "@fcn32s"}),
        ("fcn8s_staged", {"model.variant": "fcn8s", "init_from": "@fcn16s_staged"}),
        ("fcn8s_learned_upsample", {"model.learnable_upsample": True}),
        ("fcn8s_caffe_geometry", {"model.geometry": "caffe"}),
        ("fcn8s_sum_loss", {"loss_reduction": "sum"}),
    ]
