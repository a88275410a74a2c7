"""Your own segmentation data (and Cityscapes, ADE20K, PASCAL-Context, SIFT Flow) as a tfds dataset.

Reads the files of a layout (data.layouts: a folder of images/ + labels/ + classes.json, or a benchmark's own
tree) once, checks every example (image readable, label the image's size, every label value a class of the dataset
description, data.dataset_info) and writes each split as array_record under data_dir, with the same machinery and
checks as the VOC builder (data.voc_builder). Nothing is downloaded. The build records per split the labelled
pixels of every class and the images holding it (data.class_balance); `summary` gives them with the split sizes and
the class weights they imply (what `python -m fcn_jax.folder_dataset` prints), and a class without a labelled pixel
in any split is a warning (data.label_checks), at the build and whenever the data is read.

A prepared data_dir remembers what it was built from (folder, description, split rule, a fingerprint of every
file): reading it for another folder, or after files changed, is an error that says to use another data_dir.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from fcn_jax.data import (
    class_balance,
    dataset_info,
    label_checks,
    layouts,
)
from fcn_jax.data.examples import SplitSource
from fcn_jax.data.image_io import stored_image

log = logging.getLogger(__name__)
TRAIN_SPLIT_PREFIX = "train"  # with skip_bad_examples, bad examples of splits named train* are skipped


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
    layout: str = "folder"
    classes: str = ""  # a classes.json overriding the layout's own description
    val_fraction: float = 0.2  # the folder layout's seeded-ratio split
    split_seed: int = 0
    skip_bad_examples: bool = False


def read_example(files: layouts.ExampleFiles, heads: dataset_info.Heads) -> dict:
    """The tfds example of one image and its label (one map a head), or BadExampleError naming the bad file."""
    image, size = stored_image(files.image)
    return {"image": image, "label": layouts.read_labels(files, heads, size), "id": files.image_id}


class FolderDataset(tfds.core.GeneratorBasedBuilder):
    """Images with per-pixel labels, split by a layout, classes from a dataset description."""

    name = "fcn_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Folder, Cityscapes, ADE20K, PASCAL-Context and SIFT Flow layouts."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point manual_dir at the dataset's folder (see fcn_jax.data.layouts)."

    def _info(self) -> tfds.core.DatasetInfo:
        num_heads = len(layouts.HEADS.get(self.builder_config.layout, ((),)))
        label = (tfds.features.Image(shape=(None, None, 1), encoding_format="png") if num_heads == 1 else
                 tfds.features.Tensor(shape=(None, None, num_heads), dtype=np.uint8, encoding="zlib"))
        return tfds.core.DatasetInfo(
            builder=self,
            description="Semantic segmentation images and labels read from a local folder.",
            features=tfds.features.FeaturesDict({
                # encoding_format None: JPEG/PNG bytes are kept as they are, arrays are stored as PNG (lossless)
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format=None),
                "label": label,
                "id": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # source[i] is the i-th example of the split's list
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        root = pathlib.Path(dl_manager.manual_dir).resolve()
        heads = layouts.describe_heads(config.layout, str(root), config.classes)
        splits, rule = split_files(config, root)
        log.info("%s %s: splits by %s", self.name, config.layout, rule)
        self.info.metadata.update(manual_dir=str(root), split_rule=rule, dataset=heads_json(heads),
                                  fingerprint=layouts.fingerprint(splits, heads_json(heads)))
        return {split: self._generate_examples(split, files, heads) for split, files in splits.items()}

    def _generate_examples(self, split, files, heads):
        """The split's examples; once all are read, their label counts go into the metadata (label_counts)."""
        skip = self.builder_config.skip_bad_examples and split.startswith(TRAIN_SPLIT_PREFIX)
        counts = [class_balance.LabelCounts.zeros(info.num_classes) for _, info in heads]
        for key, example in layouts.read_examples(self.name, split, files, lambda f: read_example(f, heads), skip):
            label = example["label"].reshape(*example["label"].shape[:2], len(heads))
            for head, head_counts in enumerate(counts):
                head_counts.add(label[..., head])
            yield key, example
        self.info.metadata.setdefault("label_counts", {})[split] = [c.to_json() for c in counts]  # saved after


def heads_json(heads: dataset_info.Heads) -> dict:
    return {"heads": [[name, info.to_json()] for name, info in heads]}


def split_files(config: FolderConfig, root: pathlib.Path) -> tuple[layouts.Splits, str]:
    return layouts.split_files(config.layout, root, val_fraction=config.val_fraction, split_seed=config.split_seed)


def builder(data_dir: str, layout: str = "folder", *, classes: str = "", val_fraction: float = 0.2,
            split_seed: int = 0, skip_bad_examples: bool = False) -> FolderDataset:
    name = layout + ("_skip_bad_examples" if skip_bad_examples else "")
    config = FolderConfig(name=name, layout=layout, classes=classes, val_fraction=val_fraction,
                          split_seed=split_seed, skip_bad_examples=skip_bad_examples)
    return FolderDataset(data_dir=data_dir, config=config)


def _check_built_from(prepared: FolderDataset, manual_dir: str) -> None:
    """A data_dir prepared from other files (or the same files since changed) must not be read silently."""
    config, root = prepared.builder_config, pathlib.Path(manual_dir).expanduser().resolve()
    metadata = prepared.info.metadata
    if metadata.get("manual_dir") != str(root):
        raise ValueError(f"{prepared.data_dir}: prepared from {metadata.get('manual_dir')}, not {root}; use another "
                         "data_dir for each dataset")
    heads = layouts.describe_heads(config.layout, str(root), config.classes)
    splits, _ = split_files(config, root)
    if metadata.get("fingerprint") != layouts.fingerprint(splits, heads_json(heads)):
        raise ValueError(f"{prepared.data_dir}: the files, classes or split settings of {root} changed since it was "
                         f"prepared; delete {prepared.data_dir} to prepare it again")


def prepare(data_dir: str, manual_dir: str, layout: str = "folder", **options) -> FolderDataset:
    """Writes every split under data_dir once; later calls check it still matches manual_dir and reuse it."""
    prepared = builder(data_dir, layout, **options)
    if prepared.is_prepared():
        _check_built_from(prepared, manual_dir)
    else:
        root = pathlib.Path(manual_dir).expanduser().resolve()
        split_files(prepared.builder_config, root)  # layout errors before tfds, whose own messages are vaguer
        layouts.describe_heads(layout, str(root), options.get("classes", ""))
        with layouts.tfds_build(prepared.data_dir):
            prepared.download_and_prepare(
                file_format="array_record",
                download_config=tfds.download.DownloadConfig(manual_dir=str(root), try_download_gcs=False))
    for line in label_warnings(prepared):
        log.warning("warning: %s", line)
    return prepared


def load_split(data_dir: str, split: str, manual_dir: str, layout: str = "folder", **options) -> SplitSource:
    """Random-access source of `split` (prepared from manual_dir first if needed)."""
    return split_source(prepare(data_dir, manual_dir, layout, **options), split, manual_dir)


def split_source(prepared: FolderDataset, split: str, manual_dir: str) -> SplitSource:
    """Random-access source of a split of a prepared dataset; an unknown split names the ones there are."""
    if split not in prepared.info.splits:
        raise ValueError(f"split {split!r} is not in {manual_dir} (its splits: {', '.join(prepared.info.splits)})")
    return SplitSource(prepared.as_data_source(split))


def prepared_heads(prepared: FolderDataset) -> dataset_info.Heads:
    heads = prepared.info.metadata["dataset"]["heads"]
    return tuple((name, dataset_info.from_json(dict(value), f"{prepared.data_dir} metadata")) for name, value in heads)


def label_warnings(prepared: FolderDataset) -> list[str]:
    """One line per head with a class no split labels (data.label_checks), from the counts the build recorded."""
    stored = prepared.info.metadata.get("label_counts") or {}
    config, root = prepared.builder_config, prepared.info.metadata.get("manual_dir", "")
    description = config.classes or (f"{root}/classes.json" if config.layout == "folder" else "a classes.json")
    fix_in = f"{description} (then delete {prepared.data_dir} and build again)"
    lines = []
    for head, (name, info) in enumerate(prepared_heads(prepared) if stored else ()):
        counts = [class_balance.LabelCounts.from_json(stored[split][head]) for split in stored]
        line = label_checks.unlabelled_warning(info, sum(c.pixels for c in counts),
                                               f"in any split ({', '.join(stored)})",
                                               ignored=sum(c.ignored for c in counts), fix_in=fix_in)
        if line:
            lines.append(f"{prepared.data_dir}{f' head {name}' if name else ''}: {line}")
    return lines


def split_counts(prepared: FolderDataset, progress: bool = False) -> dict[str, list[class_balance.LabelCounts]]:
    """Per split, each head's LabelCounts: as the build recorded them, else (a data_dir built before it did) counted
    now."""
    stored = prepared.info.metadata.get("label_counts") or {}
    if set(stored) == set(prepared.info.splits):
        return {split: [class_balance.LabelCounts.from_json(c) for c in stored[split]] for split in stored}
    head_classes = tuple(info.num_classes for _, info in prepared_heads(prepared))
    return {split: class_balance.count_source(SplitSource(prepared.as_data_source(split)), head_classes,
                                              f"counting {split} pixels", progress)
            for split in prepared.info.splits}


def summary(prepared: FolderDataset, progress: bool = False) -> str:
    """Split sizes, per class the labelled pixels and the images holding it (of every head), and the class weights
    config.loss.class_weights would count on the train split, as the CLI prints them."""
    heads = prepared_heads(prepared)
    splits = list(prepared.info.splits)
    counts = split_counts(prepared, progress)
    train = next((s for s in splits if s.startswith(TRAIN_SPLIT_PREFIX)), None)
    lines = [f"{prepared.data_dir}", f"splits by {prepared.info.metadata['split_rule']}"]
    width = max(12, *(len(n) + 2 for _, info in heads for n in info.classes))
    lines += ["", f"{'':<{width}}" + "".join(f"{s:>14}" for s in splits),
              f"{'images':<{width}}" + "".join(f"{prepared.info.splits[s].num_examples:>14}" for s in splits)]
    for head, (name, info) in enumerate(heads):
        of_head = f" (head {name})" if name else ""
        lines += ["", f"{info.name}{of_head}: {info.num_classes} classes, labelled pixels"]
        for index, class_name in enumerate(info.classes):
            lines.append(f"{class_name:<{width}}" + "".join(f"{counts[s][head].pixels[index]:>14}" for s in splits))
        lines.append(f"{'(ignored)':<{width}}" + "".join(f"{counts[s][head].ignored:>14}" for s in splits))
        lines += ["", f"per class, the images holding it{of_head}"]
        for index, class_name in enumerate(info.classes):
            lines.append(f"{class_name:<{width}}" + "".join(f"{counts[s][head].images[index]:>14}" for s in splits))
        if train:
            methods = [m for m in class_balance.METHODS if m != "none"]
            weights = [class_balance.class_weights(m, [counts[train][head]])[0] for m in methods]
            lines += ["", f"class weights from {train}{of_head} (config.loss.class_weights)",
                      f"{'':<{width}}" + "".join(f"{m:>18}" for m in methods)]
            lines += [f"{class_name:<{width}}" + "".join(f"{w[index]:>18.3f}" for w in weights)
                      for index, class_name in enumerate(info.classes)]
    return "\n".join(lines)
