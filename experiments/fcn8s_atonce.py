"""FCN-8s at-once, reference recipe: all skips trained together from ImageNet VGG16, lr 1e-10, 300k iterations.

Command:  python -m fcn_jax.main --config experiments/fcn8s_atonce.py --workdir runs/fcn8s_atonce \
              --config.data.manual_dir=~/data/voc_raw   (with the converted VGG16 of experiments/fcn32s.py)
Expected: the paper's FCN-8s at-once on seg11valid, 65.40 mean IU (91.13 pixel acc); not run here (no copy of
          VOC/SBD, no GPU).
"""
from experiments import base


def get_config():
    config = base.get_config()
    config.model.variant = "fcn8s_atonce"
    config.optim.learning_rate = 1e-10
    config.train.num_steps = 300_000
    config.init_from = "weights/vgg16_caffe"
    return config
