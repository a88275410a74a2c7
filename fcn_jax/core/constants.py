"""Constants every layer shares, in one place that imports nothing (no TensorFlow, no JAX)."""
from __future__ import annotations

IGNORE_LABEL = 255  # VOC object borders and padding: never scored, never trained on
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_NUM_CLASSES = len(VOC_CLASSES)  # 20 VOC classes + background

# The four scores of the paper's tables: (key in a metrics dict, label).
SCORES = (("pixel_acc", "pixel acc"), ("mean_acc", "mean acc"), ("mean_iou", "mean IU"), ("fw_iou", "fw IU"))
# More scores of the same confusion matrix, and the per-image mean IU (core.metrics), after the paper's four.
MORE_SCORES = (("per_image_mean_iou", "mean IU per image"), ("mean_precision", "mean precision"),
               ("mean_recall", "mean recall"), ("mean_f1", "mean F1 (Dice)"))
# Per-class lists of a metrics dict: (key, column title).
CLASS_SCORES = (("per_class_iou", "IU"), ("per_class_precision", "precision"), ("per_class_recall", "recall"),
                ("per_class_f1", "F1"))
