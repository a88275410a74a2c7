"""PASCAL-Context, 59 classes (TPAMI table: FCN-8s 37.8 mean IU), FCN-8s at-once from ImageNet VGG16.

Layout (fcn_jax.data.layouts, "pascal_context"): VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext,
ImageSets/SegmentationContext/{train,val}.txt}, labels with values 0..59 (0 = not one of the 59: ignored).
Command:  python -m fcn_jax.main --config experiments/pascal_context.py --workdir runs/pascal_context \
              --config.data.manual_dir=~/data/pascal_context
Expected: the TPAMI paper's FCN-8s, 37.8 mean IU (67.0 pixel acc); not run here (no copy of the data, no GPU).
"""
from experiments import fcn8s_atonce


def get_config():
    config = fcn8s_atonce.get_config()  # reference recipe: SGD 0.99, summed loss, lr 1e-10, batch 1
    config.model.num_classes = 0  # 59, from the dataset description
    config.data.source = "pascal_context"
    config.data.data_dir = "~/tensorflow_datasets/pascal_context"
    config.data.train_split = "train"
    config.data.eval_split = "val"
    return config
