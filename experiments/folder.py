"""Your own data: a small FCN-8s trained from scratch on a folder dataset (images/, labels/, classes.json).

The defaults point at the folder example (python -m fcn_jax.synthetic --layout folder --out data/shapes), so the
walkthrough of docs/data.md runs as written; the class count comes from classes.json (model.num_classes = 0). For
real photos start from ImageNet VGG16 instead (init_from, geometry "caffe", width 1: see experiments/fcn8s.py).

Command:  python -m fcn_jax.main --config experiments/folder.py --workdir runs/shapes \
              [--config.data.manual_dir=PATH/TO/YOUR/FOLDER --config.data.data_dir=PATH/FOR/ITS/TFDS]
Expected: on the folder example, final validation mean IU 0.8546 (pixel acc 0.9847) after 400 steps, about 2.5 min
          on 2 cores (docs/data.md, "Train on your own data").
"""
from experiments import demo


def get_config():
    config = demo.get_config()  # the demo's CPU-sized recipe: width 1/8, "same" geometry, Adam, mean loss
    config.model.num_classes = 0  # = the number of classes in classes.json
    config.data.source = "folder"
    config.data.manual_dir = "data/shapes"
    config.data.data_dir = "data/tfds_shapes"
    config.data.train_split = "train"
    config.data.eval_split = "val"
    config.eval.pad_size = ()  # the split's largest image, rounded up to a multiple of 32
    return config
