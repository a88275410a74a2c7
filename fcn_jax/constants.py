"""Constants shared across the package, in one place that imports nothing heavy (no TensorFlow, no JAX)."""
from __future__ import annotations

IGNORE_LABEL = 255  # VOC object borders and padding: never scored, never trained on
VOC_NUM_CLASSES = 21  # 20 VOC classes + background
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_DIR = "VOCdevkit/VOC2012"  # the layout under a VOC + SBD manual_dir
SBD_DIR = "benchmark_RELEASE/dataset"
TRAIN_SPLITS = ("voc_train", "sbd_train", "sbd_train_no_seg11valid")  # the voc_sbd tfds splits
EVAL_SPLITS = ("voc_val", "sbd_val", "seg11valid")

# Input normalisations: network input = (channels in `order`, scaled to [0, 1] if `unit`) - mean) / std.
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)  # B, G, R: the reference FCN/VGG16 Caffe mean
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # R, G, B on [0, 1] (torchvision VGG16)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("caffe_bgr", "imagenet_rgb")

# The four scores of the paper's tables: (key in a metrics dict, label).
SCORES = (("pixel_acc", "pixel acc"), ("mean_acc", "mean acc"), ("mean_iou", "mean IU"), ("fw_iou", "fw IU"))


def check_normalization(mode: str) -> str:
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {mode!r}; expected one of {', '.join(NORMALIZATIONS)}")
    return mode
