"""SIFT Flow as the reference trains it: FCN-16s with two score heads, the 33 semantic classes (39.5 mean IU) and
the 3 geometric ones (94.3 pixel acc), one loss each, from ImageNet VGG16.

Layout (fcn_jax.data.layouts, "sift_flow"): the reference's data/sift-flow tree, trainval.txt and test.txt, images in
Images/spatial_envelope_256x256_static_8outdoorcategories/, labels SemanticLabels/.../<id>.mat and GeoLabels/
(variable S, 0 = unlabelled: ignored). --config.data.source=sift_flow_semantic (or sift_flow_geometric) trains
one head.
Command:  python -m fcn_jax.main --config experiments/sift_flow.py --workdir runs/sift_flow \
              --config.data.manual_dir=~/data/sift-flow
Expected: the paper's FCN-16s, 39.5 mean IU (85.2 pixel acc) on the semantic head and 94.3 pixel acc on the
          geometric one; not run here (no copy of the data, no GPU).
"""
from experiments import fcn32s


def get_config():
    config = fcn32s.get_config()  # reference recipe: SGD 0.99, summed loss, lr 1e-10, batch 1
    config.model.variant = "fcn16s"
    config.model.num_classes = 0  # 33, and model.heads = ((sem, 33), (geo, 3)), from the dataset descriptions
    config.data.source = "sift_flow"
    config.data.data_dir = "~/tensorflow_datasets/sift_flow"
    config.data.train_split = "trainval"
    config.data.eval_split = "test"
    config.data.crop_size = (256, 256)
    config.eval.pad_size = (256, 256)
    return config
