"""FCN-8s, reference recipe: initialised from a trained FCN-16s run, lr 1e-14.

Command:  python -m fcn_jax.main --config experiments/fcn8s.py --workdir runs/fcn8s \
              --config.data.manual_dir=~/data/voc_raw   (after experiments/fcn16s.py trained runs/fcn16s)
Expected: the paper's FCN-8s on seg11valid, 65.51 mean IU (91.22 pixel acc); not run here (no copy of VOC/SBD, no
          GPU).
"""
from experiments import base


def get_config():
    config = base.get_config()
    config.model.variant = "fcn8s"
    config.optim.learning_rate = 1e-14
    config.init_from = "runs/fcn16s"  # the FCN-16s workdir (its latest checkpoint)
    return config
