"""torchvision's FCN-ResNet101 recipe on PASCAL VOC: fcn_resnet50.py's, with the 101-layer backbone.

Start from ImageNet: convert torchvision's resnet101 first (docs/weights.md):
    python -m fcn_jax.convert --format torchvision --input resnet101-63fe2227.pth --variant fcn_resnet101 \\
        --allow_missing --output weights/resnet101_imagenet
Command:  python -m fcn_jax.main --config experiments/fcn_resnet101.py --workdir runs/fcn_resnet101 \\
              --config.data.manual_dir=~/data/voc_raw
Expected: about 63.7 mean IU, torchvision's documented fcn_resnet101 (COCO val2017, VOC categories); not run here
          (no copy of the data, no GPU).
"""
from experiments import fcn_resnet50


def get_config():
    config = fcn_resnet50.get_config()
    config.model.variant = "fcn_resnet101"
    config.init_from = "weights/resnet101_imagenet"
    return config
