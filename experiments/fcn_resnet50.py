"""torchvision's FCN-ResNet50 recipe on PASCAL VOC (references/segmentation: --model fcn_resnet50 --aux-loss).

Output stride 8 (layer3 and layer4 dilated), aux head on layer3 with loss weight 0.5, SGD momentum 0.9, lr 0.02
with the poly schedule (power 0.9), weight decay 1e-4 on every kernel and batch-norm scale, batch 32 (8 GPUs x 4),
random resize 0.5-2.0, crop 480, flip, ImageNet normalisation, mean cross entropy ignoring 255. Batch norm is
synchronised over the global batch (config.model.resnet.batch_norm; "frozen" for fine-tuning at small batch).
Differences from torchvision's script: no 10x learning rate on the aux head, and weight decay on kernels and batch-norm
scales only (biases take bias_lr_mult 1 and no decay).
Start from ImageNet: convert torchvision's resnet50 first (docs/weights.md):
    python -m fcn_jax.convert --format torchvision --input resnet50-11ad3fa6.pth --variant fcn_resnet50 \\
        --allow_missing --output weights/resnet50_imagenet
Command:  python -m fcn_jax.main --config experiments/fcn_resnet50.py --workdir runs/fcn_resnet50 \\
              --config.data.manual_dir=~/data/voc_raw
Expected: about 60.5 mean IU, torchvision's documented fcn_resnet50 (COCO val2017, VOC categories); not run here
          (no copy of the data, no GPU).
"""
from experiments import base


def get_config():
    config = base.get_config()
    config.model.variant = "fcn_resnet50"
    config.model.dropout_rate = 0.1  # FCNHead's
    config.model.resnet.batch_norm = "sync"
    config.aux_loss_weight = 0.5
    config.loss_reduction = "mean"

    config.data.normalization = "imagenet_rgb"
    config.data.crop_size = (480, 480)
    config.data.scale_range = (0.5, 2.0)
    config.data.flip = True

    config.optim.optimizer = "sgd"
    config.optim.learning_rate = 0.02
    config.optim.momentum = 0.9
    config.optim.weight_decay = 1e-4
    config.optim.bias_lr_mult = 1.0
    config.optim.schedule = "poly"

    config.train.global_batch_size = 32
    config.train.num_steps = 8000  # about 30 epochs of the 8,498-image train split at batch 32
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    config.init_from = "weights/resnet50_imagenet"
    return config
