"""Weights and the files that hold them.

caffe_proto / torch_pickle / torchvision_resnet (reading .caffemodel and .pth files without Caffe or torch),
formats (any supported file -> fcn_jax params, the one table of layout conversions), merge (fitting params to a
model), convert (a file -> converted weights for a variant), checkpoints (every orbax read and write), artifacts
(the workdir contract: config.json, metrics.jsonl, result.json, fcn_jax_weights.json).
"""
