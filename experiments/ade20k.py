"""ADE20K SceneParsing, 150 classes (label 0 = other: ignored), FCN-8s from ImageNet VGG16 on 512x512 crops.

Layout (fcn_jax.data.layouts, "ade20k"): ADEChallengeData2016/images/{training,validation}/*.jpg and
annotations/{training,validation}/*.png; splits train and val.

Command:  python -m fcn_jax.main --config experiments/ade20k.py --workdir runs/ade20k --config.data.manual_dir=~/data
Expected: about 29.4 mean IU on val (FCN-8s in the SceneParsing benchmark, Zhou et al. 2017); not run here (no copy
          of the data, no GPU).
"""
from experiments import fcn8s_atonce


def get_config():
    config = fcn8s_atonce.get_config()
    config.model.num_classes = 0  # 150
    config.model.geometry = "same"
    config.data.source = "ade20k"
    config.data.data_dir = "~/tensorflow_datasets/ade20k"
    config.data.train_split = "train"
    config.data.eval_split = "val"
    config.data.crop_size = (512, 512)
    config.data.scale_range = (0.5, 2.0)
    config.data.flip = True
    config.loss_reduction = "mean"
    config.optim.learning_rate = 1e-3
    config.optim.momentum = 0.9
    config.optim.schedule = "poly"
    config.train.global_batch_size = 16
    config.train.num_steps = 160_000
    config.eval.pad_size = ()  # ADE20K images vary in size: pad to the split's largest
    return config
