"""How many images: the folder recipe (experiments/folder.py) trained on nested, seeded fractions of its training
split (1/8, 1/4, 1/2, all; config.data.train_fraction), one ablation variant each, the same steps each. The data:
the folder example, written on first use; your own folder with the --set flags below.

Command:  python -m fcn_jax.ablate --sweep experiments/learning_curve.py --workdir runs/learning_curve \
              [--set data.source=folder --set data.manual_dir=PATH/TO/YOUR/FOLDER --set data.data_dir=PATH/FOR/TFDS]
          python -m fcn_jax.study --run runs/shapes --learning_curve runs/learning_curve  (the fitted power law)
Expected: see docs/study.md (the folder example's learning curve, its command and timing).
"""
from experiments import folder
from fcn_jax.flows import learning_curve


def get_sweep(num_steps: int | None = None):
    config = folder.get_config()
    config.data.source = "synthetic_folder"  # = folder, its files written into manual_dir first if missing
    if num_steps:
        config.train.num_steps = num_steps
        config.train.eval_every = config.train.checkpoint_every = max(1, num_steps // 2)
    return config, learning_curve.sweep()
