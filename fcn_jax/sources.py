"""Where training data comes from: config.data.source -> the dataset description and the train / eval sources.

`describe_dataset` reads no data (class names, colours, label encodings, from the preset, the folder's classes.json
or config.data.classes); `load_sources` writes the synthetic data if asked, prepares the tfds dataset (process 0,
the others wait) and returns the two random-access splits. TensorFlow is imported only when data is loaded.
"""
from __future__ import annotations

import os
import pathlib

import jax
import ml_collections

from fcn_jax import dataset_info, layouts

# config.data.source: the VOC builder's sources, and the layouts of fcn_jax.layouts (synthetic_folder: the folder
# example, written on first use).
SOURCES = ("voc", "synthetic", "synthetic_folder", *layouts.LAYOUTS)


def describe_dataset(config: ml_collections.ConfigDict) -> dataset_info.Heads:
    """The dataset description of config.data (class names, colours, label encoding) of each score head (one,
    but for SIFT Flow's semantic + geometric); no data is read."""
    data = config.data
    if data.source in ("voc", "synthetic"):
        return (("", dataset_info.resolve(data.classes) if data.classes else dataset_info.PRESETS[data.source]),)
    if data.source == "synthetic_folder" and not data.classes:
        from fcn_jax import synthetic

        return (("", dataset_info.from_json(synthetic.folder_description(), "the synthetic folder example")),)
    return layouts.describe_heads(_layout(data.source), os.path.expanduser(data.manual_dir), data.classes)


def _layout(source: str) -> str:
    return "folder" if source == "synthetic_folder" else source


def load_sources(config: ml_collections.ConfigDict):
    """(train source, eval source): random-access splits of the tfds builder of config.data.source."""
    from fcn_jax import synthetic  # tfds import is slow: only when data is needed

    data = config.data
    manual_dir = os.path.expanduser(data.manual_dir)
    data_dir = os.path.expanduser(data.data_dir)
    if data.source in ("synthetic", "synthetic_folder") and jax.process_index() == 0:
        if data.source == "synthetic":
            synthetic.write_synthetic_voc(manual_dir, num_train=data.synthetic_train, num_val=data.synthetic_val,
                                          seed=data.synthetic_seed)
        else:
            synthetic.write_synthetic_folder(manual_dir, num_train=data.synthetic_train, num_val=data.synthetic_val,
                                             seed=data.synthetic_seed)
    _sync("synthetic data written")
    if data.source in ("voc", "synthetic"):
        from fcn_jax import voc_dataset

        if jax.process_index() == 0:
            voc_dataset.prepare(data_dir, manual_dir, skip_bad_examples=data.skip_bad_examples)
        _sync("dataset prepared")
        return tuple(voc_dataset.load_split(data_dir, split, manual_dir, skip_bad_examples=data.skip_bad_examples)
                     for split in (data.train_split, data.eval_split))
    from fcn_jax import folder_dataset

    options = dict(classes=data.classes, val_fraction=data.val_fraction, split_seed=data.split_seed,
                   skip_bad_examples=data.skip_bad_examples)
    splits, _ = layouts.split_files(_layout(data.source), pathlib.Path(manual_dir).resolve(),
                                    val_fraction=data.val_fraction, split_seed=data.split_seed)
    if data.train_split in splits and data.eval_split in splits:  # (a missing one is named by load_split)
        layouts.check_disjoint(splits, data.train_split, data.eval_split)  # every process: all fail alike
    prepared = folder_dataset.prepare(data_dir, manual_dir, _layout(data.source), **options) \
        if jax.process_index() == 0 else None
    _sync("dataset prepared")
    prepared = prepared or folder_dataset.prepare(data_dir, manual_dir, _layout(data.source), **options)
    return tuple(folder_dataset.split_source(prepared, split, manual_dir)
                 for split in (data.train_split, data.eval_split))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
