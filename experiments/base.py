"""Base config: the reference FCN recipe on PASCAL VOC (Caffe geometry, SGD 0.99, summed loss).

Every knob a user may ablate is a field here; experiments override a few. Override from the command line:
--config.optim.learning_rate=1e-4. Not run on its own: it is the reference recipe without a starting point
(experiments/fcn32s.py adds the ImageNet VGG16 weights).
"""
import ml_collections


def crf_config() -> ml_collections.ConfigDict:
    """The dense CRF's parameters (models.crf.CRFSettings, pydensecrf's names and usual values), off."""
    crf = ml_collections.ConfigDict()
    crf.enabled = False
    crf.iterations = 5
    crf.gaussian_sxy = 3.0      # smoothness kernel: position width (pixels) and weight
    crf.gaussian_weight = 3.0
    crf.bilateral_sxy = 80.0    # appearance kernel: position width (pixels), colour width (0..255) and weight
    crf.bilateral_srgb = 13.0
    crf.bilateral_weight = 10.0
    return crf


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.variant = "fcn8s"          # fcn32s | fcn16s | fcn8s | fcn8s_atonce
    config.model.num_classes = 21           # VOC: 20 classes + background; 0 = the dataset's own count
    config.model.geometry = "caffe"         # caffe (pad 100, reference crops) | same (SAME padding, efficient)
    config.model.width = 1.0                # channel multiplier of the VGG16 backbone
    config.model.dropout_rate = 0.5
    config.model.dtype = "float32"          # compute dtype: float32 | bfloat16 (params stay float32)
    config.model.winograd_tile = 4          # 3x3 convs by Winograd F(4x4, 3x3) | 2: F(2x2) | 0: direct (fp32, CPU)
    config.model.winograd_min_channels = 128  # ... those with at least this many input channels
    config.model.learnable_upsample = False  # reference: bilinear deconvolutions frozen (lr 0)
    config.model.heads = ()                 # () = one head; ((name, classes), ...): several (SIFT Flow, from data)
    config.model.crf = crf_config()          # enabled: CRF-as-RNN after the FCN, trained end to end (docs/crf.md)
    config.model.resnet = ml_collections.ConfigDict()  # variants fcn_resnet50 / fcn_resnet101 only (fcn_jax/resnet.py)
    config.model.resnet.output_stride = 8   # 8 | 16 | 32: layer3 / layer4 dilated instead of strided
    config.model.resnet.aux = True          # aux_classifier on layer3 (its loss: config.aux_loss_weight)
    config.model.resnet.batch_norm = "frozen"  # frozen (running statistics) | sync (global batch statistics)
    config.model.resnet.layers = ()         # blocks per stage; () = the depth's (3, 4, 6, 3) / (3, 4, 23, 3)
    config.model.resnet.width_per_group = 64  # bottleneck width = planes x this / 64 (torchvision's knob)
    config.model.resnet.expansion = 4       # bottleneck output = planes x this

    config.data = ml_collections.ConfigDict()
    # voc (your VOC2012 + SBD copies) | synthetic (VOC-format, written on first use) | folder (your own images,
    # labels and classes.json) | synthetic_folder (a folder example, written on first use) | cityscapes | ade20k |
    # pascal_context | sift_flow | sift_flow_geometric (docs/data.md)
    config.data.source = "voc"
    config.data.manual_dir = ""             # the dataset's folder (voc: holding VOCdevkit/ and benchmark_RELEASE/)
    config.data.classes = ""                # a classes.json overriding the dataset's description ("" = its own)
    config.data.val_fraction = 0.2          # folder without split lists or subfolders: seeded share of "val"
    config.data.split_seed = 0
    config.data.data_dir = "~/tensorflow_datasets"  # where the prepared tfds dataset lives
    config.data.train_split = "sbd_train_no_seg11valid"
    config.data.eval_split = "seg11valid"
    config.data.normalization = "caffe_bgr"  # caffe_bgr (reference) | imagenet_rgb (torchvision weights)
    config.data.crop_size = (500, 500)      # train images padded (label 255) / cropped to this
    config.data.scale_range = ()            # () = no random scaling (reference); e.g. (0.5, 2.0)
    config.data.flip = False                # reference: no augmentation
    config.data.skip_bad_examples = False   # True: skip unreadable training examples (logged count) instead of failing
    config.data.train_fraction = 1.0        # < 1: train on this seeded share of train_split (a learning curve)
    config.data.folds = 0                   # >= 2: leave fold `fold` of this many out of train_split (out-of-fold)
    config.data.fold = 0
    config.data.subset_seed = 0             # the permutation both draw from (data/subsets.py): fractions nest
    config.data.synthetic_train = 300       # image counts when source is synthetic or synthetic_folder
    config.data.synthetic_val = 60
    config.data.synthetic_seed = 0          # the dataset's own seed (independent of config.seed)

    config.loss_reduction = "sum"       # sum over pixels (reference) | mean over valid pixels
    config.aux_loss_weight = 0.0            # > 0: + this x the loss of the aux head's logits (ResNet FCNs)
    config.loss = ml_collections.ConfigDict()  # class imbalance (docs/study.md); the defaults: plain cross entropy
    config.loss.name = "cross_entropy"      # cross_entropy | focal | ohem
    config.loss.class_weights = "none"      # none | median_frequency | inverse_sqrt (counted on train_split) | "1,10"
    config.loss.dice_weight = 0.0           # > 0: + this x the soft Dice loss
    config.loss.focal_gamma = 2.0           # focal: cross entropy x (1 - p)^gamma (0 = cross entropy)
    config.loss.ohem_threshold = 0.7        # ohem: pixels whose label's probability is <= this ...
    config.loss.ohem_min_kept = 100_000     # ... or the this-many hardest of the batch, if more

    config.optim = ml_collections.ConfigDict()
    config.optim.optimizer = "sgd"          # sgd | adam | adamw
    config.optim.learning_rate = 1e-10
    config.optim.momentum = 0.99
    config.optim.weight_decay = 5e-4        # on kernels only
    config.optim.bias_lr_mult = 2.0         # reference: biases at 2x lr, no decay
    config.optim.schedule = "constant"      # constant | cosine | poly
    config.optim.warmup_steps = 0           # in optimiser updates (= train steps unless grad_accum_steps > 1)
    config.optim.grad_accum_steps = 1       # optax.MultiSteps: effective batch = global batch x this
    config.optim.grad_clip_norm = 0.0       # 0 = off

    config.train = ml_collections.ConfigDict()
    config.train.global_batch_size = 1      # must divide by the device count
    config.train.num_steps = 100_000
    config.train.log_every = 20
    config.train.eval_every = 4000
    config.train.checkpoint_every = 4000
    config.train.keep_checkpoints = 3
    config.train.async_checkpoint = True
    config.train.loss_spike_factor = 0.0    # > 0: stop when a logged loss exceeds this x the median of the last 10

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1              # global; padded to a multiple of the device count
    config.eval.pad_size = (512, 512)       # every eval image padded (label 255) to this; () = from the split
    config.eval.num_samples = 4             # predicted masks saved next to their ground truth per evaluation
    config.eval.window = ()                 # inference mode of validation (fcn_jax.modes): () = whole images, or
    config.eval.stride = ()                 #   (h, w) sliding windows every stride (() = the window)
    config.eval.flip = False                # test-time augmentation: average in the flipped image
    config.eval.scales = (1.0,)             #   and the image resized by these factors
    config.eval.crf = crf_config()          # enabled: the dense CRF after the other modes (docs/crf.md)

    config.init_from = ""                   # converted weights or a previous stage's workdir ("" = from scratch)
    return config
