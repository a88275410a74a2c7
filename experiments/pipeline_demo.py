"""Classifier -> FCN -> segmentation on the synthetic data (the paper's story end to end).

`fcn` is the recipe of every FCN stage (the demo's: "same" geometry, width 1/8, Adam, mean loss); the
pipeline sets its model.variant and init_from per stage. The classifier has the FCN's width, so its
weights fit the FCN backbone, and reads the same data (image-level labels from the masks).

Command:  python -m fcn_jax.pipeline --config experiments/pipeline_demo.py --workdir runs/pipeline
Expected: classifier accuracy 71.7% on voc_val; FCN stages 32s -> 16s -> 8s at mean IU 28.5 / 71.5 / 95.2%; 8
          held-out scenes segmented at 96.5% mean IU; about 13 min on 2 cores (docs/pipeline_demo/report.md, taken
          before the study stage was added; the study of the final FCN-8s adds its data pass and scoring).
"""
import ml_collections

from experiments import demo


def get_config():
    config = ml_collections.ConfigDict()

    config.classifier = ml_collections.ConfigDict()
    config.classifier.input_size = 224     # VGG16Classifier's fc6 needs a 7x7 pool5: 224x224 input
    config.classifier.batch_size = 16      # must divide by the device count
    config.classifier.num_steps = 400       # from He init (results: docs/pipeline_demo/report.md)
    config.classifier.learning_rate = 1e-3  # Adam
    config.classifier.schedule = "cosine"
    config.classifier.warmup_steps = 40
    config.classifier.log_every = 25
    config.classifier.checkpoint_every = 100

    config.fcn = demo.get_config()
    config.fcn.train.num_steps = 200        # per stage
    config.fcn.train.eval_every = 100
    config.fcn.train.checkpoint_every = 100
    config.fcn.train.log_every = 25
    config.fcn.optim.warmup_steps = 20
    config.stages = ("fcn32s", "fcn16s", "fcn8s")  # staged as in the paper; ("fcn8s_atonce",) trains at once
    # One lr per stage; () = config.fcn.optim.learning_rate for each. The reference lowers it as each stage
    # fine-tunes the one before (1e-10, 1e-12, 1e-14 with its summed loss and SGD).
    config.stage_learning_rates = ()

    config.segment = ml_collections.ConfigDict()
    config.segment.images = ""              # "" = freshly drawn held-out synthetic scenes (with labels)
    config.segment.labels = ""              # labels <stem>.png of config.segment.images, as the dataset encodes them
    config.segment.num_images = 8
    config.segment.seed = 2024
    config.segment.batch_size = 1
    config.segment.pad_multiple = 32        # pad to multiples of 32: fewer compilations (see fcn_jax.predict)

    config.study = ml_collections.ConfigDict()  # the last FCN studied on its data (fcn_jax.flows.study)
    config.study.folds = 0                  # >= 2: rank every training label out of fold (trains this many FCNs)
    config.study.worst = 6                  # images drawn and listed per section
    return config
