"""FCN-32s, reference recipe: from ImageNet VGG16 (convert it first, see README), lr 1e-10, summed loss."""
from experiments import base


def get_config():
    config = base.get_config()
    config.model.variant = "fcn32s"
    config.optim.learning_rate = 1e-10
    config.init_from = "weights/vgg16_caffe"  # python -m fcn_jax.convert --format caffe --input VGG_ILSVRC_16_layers.caffemodel ...
    return config
