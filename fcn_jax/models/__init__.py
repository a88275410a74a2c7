"""Flax modules of the FCNs, NHWC, float32 logits.

layers (VGG16's ReLU and ceil-mode pool, bilinear-initialised upsampling), conv_forms (matmul forms of convolutions
that XLA:CPU runs faster), vgg (the VGG16 backbone), fcn (FCN-32s/16s/8s/8s-at-once: score layers, skip fusion, crop
offsets), resnet (torchvision's dilated ResNet FCNs), classifier (VGG16 as a classifier and convolutionalized),
shift_and_stitch (the paper's dense output from a strided net), zoo (variant names -> models, param templates).
"""
