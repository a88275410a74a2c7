"""FCN-16s, reference recipe: initialised from a trained FCN-32s run, lr 1e-12.

Command:  python -m fcn_jax.main --config experiments/fcn16s.py --workdir runs/fcn16s \
              --config.data.manual_dir=~/data/voc_raw   (after experiments/fcn32s.py trained runs/fcn32s)
Expected: the paper's FCN-16s on seg11valid, 65.01 mean IU (91.00 pixel acc); not run here (no copy of VOC/SBD, no
          GPU).
"""
from experiments import base


def get_config():
    config = base.get_config()
    config.model.variant = "fcn16s"
    config.optim.learning_rate = 1e-12
    config.init_from = "runs/fcn32s"  # the FCN-32s workdir (its latest checkpoint)
    return config
