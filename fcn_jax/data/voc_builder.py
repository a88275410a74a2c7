"""PASCAL VOC2012 + SBD as a tfds dataset (array_record), read from the user's local copies (data.voc).

Splits (data.voc): voc_train, voc_val, sbd_train, sbd_val, seg11valid, sbd_train_no_seg11valid. Bad input raises
`BadExampleError` naming the file. With the `skip_bad_examples` config, bad examples of the training splits are
skipped and counted in the log; evaluation splits always fail loudly, so reported numbers stay comparable. A
prepared data_dir remembers the manual_dir and the split lists it was built from.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib

import tensorflow_datasets as tfds

from fcn_jax.data import voc
from fcn_jax.data.examples import SplitSource
from fcn_jax.data.layouts import read_examples, tfds_build

log = logging.getLogger(__name__)


@dataclasses.dataclass
class VocSbdConfig(tfds.core.BuilderConfig):
    skip_bad_examples: bool = False


class VocSbd(tfds.core.GeneratorBasedBuilder):
    """PASCAL VOC2012 segmentation + SBD, with the FCN seg11valid split."""

    name = "voc_sbd"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "VOC2012 + SBD splits, seg11valid, sbd_train_no_seg11valid."}
    BUILDER_CONFIGS = [
        VocSbdConfig(name="strict", description="Any bad example is an error."),
        VocSbdConfig(name="skip_bad_examples", skip_bad_examples=True,
                     description="Bad training examples are skipped and counted."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Extract VOCtrainval_11-May-2012.tar and SBD benchmark.tgz into manual_dir, giving "
        + voc.LAYOUT
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="PASCAL VOC2012 segmentation + SBD, with the FCN seg11valid split.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png",
                                             use_colormap=True),
                "id": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # source[i] is the i-th id of the split's list
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
        )

    def _split_generators(self, dl_manager):
        root = pathlib.Path(dl_manager.manual_dir).resolve()
        files, rule = voc.split_files(root)
        log.info("voc_sbd seg11valid: %s", rule)
        self.info.metadata.update(manual_dir=str(root), seg11valid_rule=rule, lists_sha256=voc.lists_fingerprint(root))
        return {split: self._generate_examples(split, files[split]) for split in voc.SPLITS}

    def _generate_examples(self, split, files):
        skip = self.builder_config.skip_bad_examples and split in voc.TRAIN_SPLITS
        return read_examples("voc_sbd", split, files, voc.read_example, skip)


# ---------------------------------------------------------------- entry points


def _builder(data_dir: str, skip_bad_examples: bool) -> VocSbd:
    config = "skip_bad_examples" if skip_bad_examples else "strict"
    return VocSbd(data_dir=data_dir, config=config)


def _check_same_manual_dir(builder: VocSbd, manual_dir: str) -> None:
    """A data_dir prepared from other raw data must not be reused silently."""
    prepared_from = builder.info.metadata.get("manual_dir")
    wanted = str(pathlib.Path(manual_dir).resolve())
    if prepared_from != wanted:
        raise ValueError(
            f"{builder.data_dir}: prepared from manual_dir {prepared_from}, not {wanted}; "
            "use another data_dir, or pass manual_dir=None to read it as is"
        )
    built_from = builder.info.metadata.get("lists_sha256")
    if built_from is not None and built_from != voc.lists_fingerprint(pathlib.Path(manual_dir)):
        raise ValueError(f"{builder.data_dir}: the split lists in {wanted} changed since it was prepared; delete "
                         f"{builder.data_dir} to prepare it again from the new lists")


def prepare(data_dir: str, manual_dir: str, *, skip_bad_examples: bool = False) -> VocSbd:
    """Writes every split as array_record under data_dir once; later calls reuse it."""
    builder = _builder(data_dir, skip_bad_examples)
    if builder.is_prepared():
        _check_same_manual_dir(builder, manual_dir)
        return builder
    voc.check_layout(pathlib.Path(manual_dir))  # before tfds, whose own message is vaguer
    with tfds_build(builder.data_dir):
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False),
        )
    return builder


def load_split(data_dir: str, split: str, manual_dir: str | None = None, *,
               skip_bad_examples: bool = False) -> SplitSource:
    """Random-access source for `split`; prepares data_dir from manual_dir first if needed."""
    if split not in voc.SPLITS:
        raise ValueError(f"unknown voc_sbd split {split!r}; splits are {', '.join(voc.SPLITS)}")
    if manual_dir is not None:
        builder = prepare(data_dir, manual_dir, skip_bad_examples=skip_bad_examples)
    else:
        builder = _builder(data_dir, skip_bad_examples)
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"{builder.data_dir}: voc_sbd is not prepared there; pass manual_dir to prepare it"
            )
    return SplitSource(builder.as_data_source(split))
