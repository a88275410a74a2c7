"""Data: what labels mean, where files lie, how examples are read, and the input pipeline.

dataset_info (class names, colours, label encodings, presets), image_io (decoding and checking files), visualize
(palettes, overlays), layouts (split -> files of every folder layout), voc (VOC2012 + SBD files, seg11valid),
examples (the example/source contract, folder and tfds sources), sources (the registry of config.data.source),
synthetic (the synthetic datasets), voc_builder / folder_builder (the tfds builders), input_pipeline (training and
validation batches, in NumPy) and stream_random (its draws, TensorFlow's bit for bit). TensorFlow is imported only
to prepare a dataset (layouts.tfds_build). seg11valid.txt is package data (README.md here says where it comes from).
"""
