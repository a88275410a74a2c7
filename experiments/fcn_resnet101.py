"""torchvision's FCN-ResNet101 recipe on PASCAL VOC: fcn_resnet50.py's, with the 101-layer backbone.

    python -m fcn_jax.convert --format torchvision --input resnet101-63fe2227.pth --variant fcn_resnet101 \\
        --allow_missing --output weights/resnet101_imagenet
"""
from experiments import fcn_resnet50


def get_config():
    config = fcn_resnet50.get_config()
    config.model.variant = "fcn_resnet101"
    config.init_from = "weights/resnet101_imagenet"
    return config
