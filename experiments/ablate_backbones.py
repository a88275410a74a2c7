"""The backbone as an ablation knob on the synthetic data, sized for a 2-core CPU.

Base: the demo recipe (ablate_skips.get_config). Variants: the demo's FCN-8s (VGG16 at width 1/8), and the CPU-sized
dilated ResNet FCN of experiments/resnet_demo.py at output strides 8 and 16, with batch norm synchronised and frozen.

Command:  python -m fcn_jax.ablate --sweep experiments/ablate_backbones.py --workdir runs/ablate_backbones
Expected: mean IU 61.1 (VGG16 FCN-8s), 96.0 (ResNet, stride 8, synchronised BN), 86.0 (stride 16), 92.8 (frozen BN)
          after 150 steps each, about 4.5 min on 2 cores (docs/ablation_backbones/results.md; one seed).
"""
from experiments import ablate_skips, resnet_demo

RESNET = {"model.variant": "fcn_resnet50", "model.width": 1.0, "model.dropout_rate": 0.1, "aux_loss_weight": 0.5,
          **{f"model.resnet.{k}": v for k, v in resnet_demo.get_config().model.resnet.items()}}


def get_sweep(num_steps: int = ablate_skips.NUM_STEPS):
    return ablate_skips.get_config(num_steps), [
        ("vgg16_fcn8s", {}),
        ("resnet_os8", RESNET),
        ("resnet_os16", {**RESNET, "model.resnet.output_stride": 16}),
        ("resnet_os8_frozen_bn", {**RESNET, "model.resnet.batch_norm": "frozen"}),
    ]
