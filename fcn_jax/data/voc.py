"""PASCAL VOC2012 + SBD on disk: the files of every split, the seg11valid split, the SBD .mat labels (no TensorFlow).

data.voc_builder turns these files into a tfds dataset. Nothing is downloaded: `manual_dir` must hold

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png      palette PNG, index = class id
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    benchmark_RELEASE/dataset/img/<id>.jpg
    benchmark_RELEASE/dataset/cls/<id>.mat            GTcls.Segmentation
    benchmark_RELEASE/dataset/{train,val}.txt

Splits (VOC splits carry VOC labels with 255 object borders; SBD splits carry
SBD labels, which have no borders):
  voc_train, voc_val   VOC2012 ImageSets/Segmentation lists.
  sbd_train, sbd_val   SBD dataset/{train,val}.txt.
  seg11valid           VOC2011 seg val minus SBD train (736 ids on real data),
                       with VOC labels. Ids come from the official list shipped
                       in fcn_jax/data/seg11valid.txt, kept in its order and
                       restricted to ids in VOC val. If no id of that list is
                       in VOC val (another dataset, e.g. the synthetic one),
                       the list is derived the way the official one was made:
                       VOC val ids not in SBD train and from VOC2011 or earlier
                       (id prefix year <= 2011; ids without a year prefix are
                       kept). Which rule applied is logged and stored in
                       `builder.info.metadata["seg11valid_rule"]`.
  sbd_train_no_seg11valid
                       The reference FCN training set: SBD train ids not in
                       seg11valid, in SBD train order, with SBD labels. On
                       real data it equals sbd_train (8498): the official list
                       was built disjoint from SBD train. It is its own split
                       so training never overlaps validation whatever the data.

Bad input raises `BadExampleError` naming the file. With the
`skip_bad_examples` config, bad examples of the training splits (voc_train,
sbd_train, sbd_train_no_seg11valid) are skipped and counted in the log;
evaluation splits always fail loudly, so reported numbers stay comparable.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import pathlib
import re

import numpy as np
import scipy.io

from fcn_jax.data.dataset_info import PRESETS
from fcn_jax.data.image_io import BadExampleError, check_label_values, stored_image
from fcn_jax.data.layouts import ExampleFiles, read_id_list

VOC_DIR = "VOCdevkit/VOC2012"  # the layout under a VOC + SBD manual_dir
SBD_DIR = "benchmark_RELEASE/dataset"
TRAIN_SPLITS = ("voc_train", "sbd_train", "sbd_train_no_seg11valid")
EVAL_SPLITS = ("voc_val", "sbd_val", "seg11valid")
SPLITS = TRAIN_SPLITS + EVAL_SPLITS
LAYOUT = (
    f"{VOC_DIR}/{{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, "
    f"ImageSets/Segmentation/{{train,val}}.txt}} and "
    f"{SBD_DIR}/{{img/<id>.jpg, cls/<id>.mat, train.txt, val.txt}}"
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- id lists


def lists_fingerprint(root: pathlib.Path) -> str:
    """sha256 over the split lists of a manual_dir: a prepared data_dir remembers the lists it was built from."""
    digest = hashlib.sha256()
    for path in _list_files(root).values():
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def _list_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    voc, sbd = root / VOC_DIR, root / SBD_DIR
    return {"voc_train": voc / "ImageSets/Segmentation/train.txt", "voc_val": voc / "ImageSets/Segmentation/val.txt",
            "sbd_train": sbd / "train.txt", "sbd_val": sbd / "val.txt"}


def official_seg11valid() -> list[str]:
    """The 736 ids of fcn.berkeleyvision.org data/pascal/seg11valid.txt."""
    text = importlib.resources.files("fcn_jax.data").joinpath("seg11valid.txt").read_text()
    return text.split()


def _id_year(image_id: str) -> int | None:
    match = re.match(r"(\d{4})_", image_id)
    return int(match.group(1)) if match else None


def seg11valid_ids(voc_val: list[str], sbd_train: list[str]) -> tuple[list[str], str]:
    """seg11valid ids and the rule that made them (see the module docstring)."""
    voc_val_set = set(voc_val)
    official = official_seg11valid()
    present = [i for i in official if i in voc_val_set]
    if present:
        rule = f"official list ({len(present)} of {len(official)} ids present in VOC val)"
        if len(present) < len(official):
            log.warning("voc_sbd seg11valid: %s; the reference numbers need all of them", rule)
        return present, rule
    sbd_train_set = set(sbd_train)
    derived = [
        i for i in voc_val
        if i not in sbd_train_set and (_id_year(i) or 0) <= 2011
    ]
    rule = "derived: VOC val ids not in SBD train, id year <= 2011 (no official id in VOC val)"
    return derived, rule


# ---------------------------------------------------------------- readers


def read_sbd_label(path: pathlib.Path) -> np.ndarray:
    """(H, W) uint8 class ids from an SBD cls/<id>.mat (struct GTcls, field Segmentation)."""
    try:
        mat = scipy.io.loadmat(path, variable_names=["GTcls"])
    except Exception as e:  # scipy raises many types for corrupt files
        raise BadExampleError(f"{path}: cannot read .mat file ({e})") from e
    gt = mat.get("GTcls")
    if gt is None or gt.dtype.names is None or "Segmentation" not in gt.dtype.names:
        raise BadExampleError(f"{path}: no struct GTcls with field Segmentation")
    label = np.asarray(gt["Segmentation"].flat[0])
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise BadExampleError(
            f"{path}: GTcls.Segmentation is {label.dtype} {label.shape}, expected an integer HxW map"
        )
    return check_label_values(label, path)


def read_example(files: ExampleFiles) -> dict:
    """The tfds example for one id, or BadExampleError naming the bad file."""
    for path in (files.image, files.label):
        if not path.is_file():
            raise BadExampleError(f"{path}: missing, but id {files.image_id!r} is listed in {files.listed_in}")
    image, (height, width) = stored_image(files.image)
    read_label = read_sbd_label if files.label.suffix == ".mat" else PRESETS["voc"].decode
    label = read_label(files.label)
    if label.shape != (height, width):
        raise BadExampleError(
            f"{files.label}: label is {label.shape[0]}x{label.shape[1]} but image "
            f"{files.image} is {height}x{width}"
        )
    return {"image": image, "label": label[:, :, None], "id": files.image_id}


# ---------------------------------------------------------------- splits


def check_layout(root: pathlib.Path) -> None:
    """Fails early, naming what is missing, if manual_dir is not VOC + SBD."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: manual_dir not found; it must contain {LAYOUT}")
    required = {
        VOC_DIR: ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation/train.txt",
                  "ImageSets/Segmentation/val.txt"],
        SBD_DIR: ["img", "cls", "train.txt", "val.txt"],
    }
    missing = []
    for tree, children in required.items():
        if not (root / tree).is_dir():
            missing.append(root / tree)
        else:
            missing += [root / tree / child for child in children if not (root / tree / child).exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(map(str, missing))}: not found; manual_dir must contain {LAYOUT}")


def split_files(root: pathlib.Path) -> tuple[dict[str, list[ExampleFiles]], str]:
    """Files of every split under manual_dir `root`, and the seg11valid rule used."""
    check_layout(root)
    voc, sbd = root / VOC_DIR, root / SBD_DIR
    lists = _list_files(root)
    ids = {name: read_id_list(path) for name, path in lists.items()}
    ids["seg11valid"], rule = seg11valid_ids(ids["voc_val"], ids["sbd_train"])
    seg11valid = set(ids["seg11valid"])
    ids["sbd_train_no_seg11valid"] = [i for i in ids["sbd_train"] if i not in seg11valid]
    listed_in = {**lists, "seg11valid": lists["voc_val"], "sbd_train_no_seg11valid": lists["sbd_train"]}
    for split in SPLITS:  # tfds would only say "No examples were yielded"
        if not ids[split]:
            raise BadExampleError(f"{listed_in[split]}: split {split} would be empty (the list holds no id"
                                  + (" it keeps" if split in ("seg11valid", "sbd_train_no_seg11valid") else "")
                                  + "); every split needs at least one image")

    def files(split: str, image_id: str) -> ExampleFiles:
        if split.startswith("sbd"):
            return ExampleFiles(image_id, sbd / "img" / f"{image_id}.jpg",
                                sbd / "cls" / f"{image_id}.mat", listed_in[split])
        return ExampleFiles(image_id, voc / "JPEGImages" / f"{image_id}.jpg",
                            voc / "SegmentationClass" / f"{image_id}.png", listed_in[split])

    return {split: [files(split, i) for i in ids[split]] for split in SPLITS}, rule
