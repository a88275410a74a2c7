"""FCN-32s, reference recipe: from ImageNet VGG16, lr 1e-10, summed loss, batch 1, 100k steps.

Convert the ImageNet VGG16 first (docs/weights.md):
    python -m fcn_jax.convert --format caffe --input VGG_ILSVRC_16_layers.caffemodel --variant fcn32s \
        --allow_missing --output weights/vgg16_caffe
Command:  python -m fcn_jax.main --config experiments/fcn32s.py --workdir runs/fcn32s \
              --config.data.manual_dir=~/data/voc_raw
Expected: the paper's FCN-32s on seg11valid, 63.63 mean IU (90.48 pixel acc); not run here (no copy of VOC/SBD, no
          GPU).
"""
from experiments import base


def get_config():
    config = base.get_config()
    config.model.variant = "fcn32s"
    config.optim.learning_rate = 1e-10
    # python -m fcn_jax.convert --format caffe --input VGG_ILSVRC_16_layers.caffemodel ...
    config.init_from = "weights/vgg16_caffe"
    return config
