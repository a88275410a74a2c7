"""Inference: networks from weights, run in one of several modes, scored, written and exported.

network (weights -> a model with replicated params and its settings), batching (padded shapes, size buckets,
background prefetch), steps (the pure eval / predict steps, compiled per shape; Scores), modes (sliding windows,
flip and scale TTA), runner (the one runner predict, evaluate and validation use), evaluation (scores and reports of a
labelled set), outputs (mask, overlay and figure files), flags (the command lines' shared flags), export (StableHLO
and SavedModel artifacts; exported_segment.py is the standalone script copied next to them).
"""
