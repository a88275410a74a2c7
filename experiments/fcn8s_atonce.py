"""FCN-8s at-once, reference recipe: all skips trained together from ImageNet VGG16, lr 1e-10, 300k iterations."""
from experiments import base


def get_config():
    config = base.get_config()
    config.model.variant = "fcn8s_atonce"
    config.optim.learning_rate = 1e-10
    config.train.num_steps = 300_000
    config.init_from = "weights/vgg16_caffe"
    return config
