"""Where training data comes from: the one registry of `config.data.source` values.

Each `Source` says which builder reads it (the VOC + SBD builder, or the folder builder with a data.layouts layout)
and whether data.synthetic writes its files on first use. `describe` reads no data (class names, colours, label
encodings, from the preset, the folder's classes.json or config.data.classes); `load` writes the synthetic data if
asked, prepares the tfds dataset (process 0, the others wait) and returns the train and eval splits as sources
(data.examples). TensorFlow is imported only when a dataset is prepared (data.layouts.tfds_build).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import jax

from fcn_jax.data import dataset_info, layouts, voc


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    layout: str  # "voc": the VOC + SBD builder (data.voc_builder); else a data.layouts layout (data.folder_builder)
    synthetic: str = ""  # "voc" / "folder": data.synthetic writes the files into manual_dir on first use

    @property
    def splits(self) -> tuple[str, ...] | None:
        """The split names, where they are known before the files are listed (the VOC builder's)."""
        return voc.SPLITS if self.layout == "voc" else None

    def describe(self, data) -> dataset_info.Heads:
        """The description of each score head (one, but for SIFT Flow's semantic + geometric) of config.data."""
        if self.layout == "voc":
            return (("", dataset_info.resolve(data.classes) if data.classes else dataset_info.PRESETS[self.name]),)
        if self.synthetic and not data.classes:
            from fcn_jax.data import synthetic

            return (("", dataset_info.from_json(synthetic.folder_description(), "the synthetic folder example")),)
        return layouts.describe_heads(self.layout, os.path.expanduser(data.manual_dir), data.classes)

    def load(self, data) -> tuple:
        """(train source, eval source) of config.data: its files written (synthetic) and prepared first."""
        manual_dir, data_dir = os.path.expanduser(data.manual_dir), os.path.expanduser(data.data_dir)
        if self.synthetic and jax.process_index() == 0:
            from fcn_jax.data import synthetic  # tfds import is slow: only when data is needed

            write = synthetic.write_synthetic_voc if self.synthetic == "voc" else synthetic.write_synthetic_folder
            write(manual_dir, num_train=data.synthetic_train, num_val=data.synthetic_val, seed=data.synthetic_seed)
        _sync("synthetic data written")
        if self.layout == "voc":
            from fcn_jax.data import voc_builder

            if jax.process_index() == 0:
                voc_builder.prepare(data_dir, manual_dir, skip_bad_examples=data.skip_bad_examples)
            _sync("dataset prepared")
            return tuple(voc_builder.load_split(data_dir, split, manual_dir, skip_bad_examples=data.skip_bad_examples)
                         for split in (data.train_split, data.eval_split))
        from fcn_jax.data import folder_builder

        options = self._folder_options(data.classes, data.val_fraction, data.split_seed, data.skip_bad_examples)
        splits, _ = layouts.split_files(self.layout, pathlib.Path(manual_dir).resolve(),
                                        val_fraction=data.val_fraction, split_seed=data.split_seed)
        if data.train_split in splits and data.eval_split in splits:  # (a missing one is named by split_source)
            layouts.check_disjoint(splits, data.train_split, data.eval_split)  # every process: all fail alike
        prepared = folder_builder.prepare(data_dir, manual_dir, self.layout, **options) \
            if jax.process_index() == 0 else None
        _sync("dataset prepared")
        prepared = prepared or folder_builder.prepare(data_dir, manual_dir, self.layout, **options)
        return tuple(folder_builder.split_source(prepared, split, manual_dir)
                     for split in (data.train_split, data.eval_split))

    def load_split(self, split: str, data_dir: str, manual_dir: str | None, *, classes: str = "",
                   val_fraction: float = 0.2, split_seed: int = 0):
        """One split of the prepared dataset (prepared from manual_dir first if needed), for scoring."""
        if self.layout == "voc":
            from fcn_jax.data import voc_builder

            return voc_builder.load_split(data_dir, split, manual_dir)
        from fcn_jax.data import folder_builder

        if manual_dir is None:
            raise ValueError(f"--layout {self.layout} needs --manual_dir, the dataset's folder")
        return folder_builder.load_split(data_dir, split, manual_dir, self.layout,
                                         **self._folder_options(classes, val_fraction, split_seed))

    @staticmethod
    def _folder_options(classes: str, val_fraction: float, split_seed: int, skip_bad_examples: bool = False) -> dict:
        return dict(classes=classes, val_fraction=val_fraction, split_seed=split_seed,
                    skip_bad_examples=skip_bad_examples)


SOURCES = {source.name: source for source in (
    Source("voc", "voc"),  # your VOC2012 + SBD copies
    Source("synthetic", "voc", synthetic="voc"),  # the embedded default: a VOC look-alike, written on first use
    Source("synthetic_folder", "folder", synthetic="folder"),  # the folder example, written on first use
    *(Source(layout, layout) for layout in layouts.LAYOUTS),  # your folder, and the benchmarks' own trees
)}


def get(name: str) -> Source:
    """The Source of a config.data.source value; an unknown one is a ValueError naming the choices."""
    if name not in SOURCES:
        raise ValueError(f"config.data.source={name!r}: expected one of {', '.join(SOURCES)}")
    return SOURCES[name]


def describe_dataset(config) -> dataset_info.Heads:
    """The dataset description of config.data, per score head; no data is read."""
    return get(config.data.source).describe(config.data)


def load_sources(config) -> tuple:
    """(train source, eval source): random-access splits of config.data, the train one narrowed to the fraction /
    folds config.data asks for (data.subsets)."""
    from fcn_jax.data import subsets

    train, evaluation = get(config.data.source).load(config.data)
    return subsets.train_subset(train, config.data), evaluation


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
