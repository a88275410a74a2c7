"""The compute core: array math every other layer shares, with no files and no TensorFlow.

constants (the ignore label, the paper's scores, VOC's class names), normalization (network inputs from uint8
pixels), losses (per-pixel cross entropy), metrics (confusion matrix -> the paper's four scores), parallel (the
("data",) mesh, shardings, host <-> global arrays), xla_options (XLA:CPU's memory-optimised scheduler for the
training step and inference).
"""
