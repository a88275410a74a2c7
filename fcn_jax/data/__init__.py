"""Data: what labels mean, where files lie, how examples are read, and the input pipeline.

dataset_info (class names, colours, label encodings, presets), image_io (decoding and checking files), visualize
(palettes, overlays), layouts (split -> files of every folder layout), voc (VOC2012 + SBD files, seg11valid),
examples (the example/source contract, folder and tfds sources), sources (the registry of config.data.source),
synthetic (the synthetic datasets), voc_builder / folder_builder (the tfds builders) and input_pipeline (tf.data).
Only the last three import TensorFlow. seg11valid.txt is package data (README.md here says where it comes from).
"""
