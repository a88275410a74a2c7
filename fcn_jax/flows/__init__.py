"""Flows built on training and inference: the ablation runner (sweeps of config variants) and the paper's pipeline
from a classifier to a segmenter (classifier, convolutionalization, staged FCN training, segmenting new images)."""
