"""Cityscapes, 19 train ids (labelIds mapped, the rest ignored), FCN-8s from ImageNet VGG16 on 512x1024 crops.

Layout (fcn_jax.data.layouts, "cityscapes"): leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and
gtFine/{train,val}/<city>/*_gtFine_labelIds.png. Validation images are 2048x1024, padded to 1024x2048.

Command:  python -m fcn_jax.main --config experiments/cityscapes.py --workdir runs/cityscapes \
              --config.data.manual_dir=~/data/cityscapes
Expected: about 65 class mean IU (FCN-8s in the Cityscapes paper, Cordts et al. 2016: 65.3 on test); not run here
          (no copy of the data, no GPU).
"""
from experiments import fcn8s_atonce


def get_config():
    config = fcn8s_atonce.get_config()
    config.model.num_classes = 0  # 19
    config.model.geometry = "same"  # no 100-pixel padding on 2-megapixel images
    config.data.source = "cityscapes"
    config.data.data_dir = "~/tensorflow_datasets/cityscapes"
    config.data.train_split = "train"
    config.data.eval_split = "val"
    config.data.crop_size = (512, 1024)
    config.data.scale_range = (0.5, 2.0)
    config.data.flip = True
    config.loss_reduction = "mean"  # batch of crops, the usual modern recipe
    config.optim.learning_rate = 1e-3
    config.optim.momentum = 0.9
    config.optim.schedule = "poly"
    config.train.global_batch_size = 8
    config.train.num_steps = 80_000
    config.eval.pad_size = (1024, 2048)
    return config
