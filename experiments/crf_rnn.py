"""CRF-as-RNN (Zheng et al. 2015) against the plain FCN under the same budget, as an ablation: both variants start
from the trained folder-example FCN (runs/shapes, experiments/folder.py) and train 100 more steps of the folder
recipe with SGD (momentum 0.9, lr 1e-3, cosine, no warm-up), one as it is, one with a trainable dense CRF after it
(config.model.crf: 5 mean-field iterations in training and validation, kernel weights and the compatibility matrix
learnt, widths fixed at the reference's 3 / 80 / 13), as Zheng et al. trained CRF-RNN with SGD on top of a trained
FCN-8s. With the folder recipe's Adam instead (--set optim.optimizer=adam), the CRF's confident output leaves tiny
gradients that Adam scales up, and the FCN under it degrades (docs/crf.md).

Command:  python -m fcn_jax.main --config experiments/folder.py --workdir runs/shapes   (the starting point)
          python -m fcn_jax.ablate --sweep experiments/crf_rnn.py --workdir runs/crf_rnn
Expected: both variants' validation mean IU and wall time in docs/crf.md ("CRF-as-RNN trained end to end").
"""
from experiments import folder


def get_sweep(num_steps: int | None = None):
    config = folder.get_config()
    config.init_from = "runs/shapes"
    config.optim.update(optimizer="sgd", momentum=0.9, learning_rate=1e-3, warmup_steps=0)
    config.train.num_steps = num_steps or 100
    config.train.eval_every = config.train.checkpoint_every = config.train.num_steps
    return config, [
        ("plain", {}),
        ("crf_rnn", {"model.crf.enabled": True}),
    ]
