"""FCN-16s, reference recipe: initialised from a trained FCN-32s run, lr 1e-12."""
from experiments import base


def get_config():
    config = base.get_config()
    config.model.variant = "fcn16s"
    config.optim.learning_rate = 1e-12
    config.init_from = "runs/fcn32s"  # the FCN-32s workdir (its latest checkpoint)
    return config
