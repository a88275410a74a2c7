"""Class imbalance as an ablation: a two-class folder dataset whose foreground covers about 1% of the pixels (small
spots; benchmarks/rare_foreground.py writes it as 0/255 masks with "id_map": {"0": 0, "255": 1}), the folder recipe
(experiments/folder.py) under each loss of config.loss.

Variants: plain cross entropy; median frequency class weights; inverse square root class weights with the Dice
loss added; focal loss (gamma 2).

Command:  python -m benchmarks.rare_foreground  (writes the data, then runs this sweep)
          python -m fcn_jax.ablate --sweep experiments/rare_foreground.py --workdir runs/rare_foreground \\
              --set data.manual_dir=PATH/TO/SPOTS --set data.data_dir=PATH/FOR/ITS/TFDS
Expected: the spot's IU per variant in docs/study.md ("Class imbalance: a rare foreground").
"""
from experiments import folder


def get_sweep(num_steps: int | None = None):
    config = folder.get_config()
    config.data.manual_dir = "data/spots"
    config.data.data_dir = "data/tfds_spots"
    if num_steps:
        config.train.num_steps = num_steps
        config.train.eval_every = config.train.checkpoint_every = max(1, num_steps // 2)
    return config, [
        ("cross_entropy", {}),
        ("median_frequency", {"loss.class_weights": "median_frequency"}),
        ("inverse_sqrt_dice", {"loss.class_weights": "inverse_sqrt", "loss.dice_weight": 1.0}),
        ("focal", {"loss.name": "focal"}),
    ]
