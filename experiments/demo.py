"""The embedded default: a small-width FCN-8s trained from scratch on the synthetic VOC-format dataset.

The dataset is written by fcn_jax.data.synthetic on first use and read through the same tfds builder and input
pipeline as real VOC.

Command:  python -m fcn_jax.main --config experiments/demo.py --workdir runs/demo
Expected: mean IU 0.7727 at step 200 and 0.9539 at step 400 (pixel acc 0.9933), about 1.5 min on 2 idle CPU cores
          from an empty data/ (README.md, "The demo").
"""
from experiments import base


def get_config():
    config = base.get_config()
    config.model.variant = "fcn8s"
    config.model.geometry = "same"
    config.model.width = 0.125
    config.model.dropout_rate = 0.0
    config.model.learnable_upsample = False  # frozen bilinear, as in the reference

    config.data.source = "synthetic"
    config.data.manual_dir = "data/synthetic_voc"
    config.data.data_dir = "data/tfds"
    config.data.train_split = "voc_train"
    config.data.eval_split = "voc_val"
    config.data.crop_size = (128, 128)
    config.data.scale_range = (0.75, 1.25)
    config.data.flip = True

    config.loss_reduction = "mean"
    config.optim.optimizer = "adam"
    config.optim.learning_rate = 3e-3
    config.optim.weight_decay = 0.0
    config.optim.bias_lr_mult = 1.0
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 30

    config.train.global_batch_size = 8
    config.train.num_steps = 400
    config.train.log_every = 25
    config.train.eval_every = 200
    config.train.checkpoint_every = 200

    config.eval.batch_size = 8
    config.eval.pad_size = (192, 192)
    return config
