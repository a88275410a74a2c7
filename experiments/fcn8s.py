"""FCN-8s, reference recipe: initialised from a trained FCN-16s run, lr 1e-14."""
from experiments import base


def get_config():
    config = base.get_config()
    config.model.variant = "fcn8s"
    config.optim.learning_rate = 1e-14
    config.init_from = "runs/fcn16s"  # the FCN-16s workdir (its latest checkpoint)
    return config
