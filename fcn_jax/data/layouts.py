"""Where a dataset's images and labels lie on disk: the split -> (image, label) file lists of every layout.

Pure Python (TensorFlow only inside `tfds_build`): the tfds builder (data.folder_builder) and
data.examples.FolderSource read these lists.
Every layout checks that each listed image has its label (extensions in any case: `.PNG` too) and that no split is
empty, naming the file or list at fault. `tfds_build` wraps the builders' tfds builds: what a killed build left is
removed before the next one, and a stopped build removes its own.

  folder          ROOT/classes.json (the dataset description, data.dataset_info) and images + labels of
                  the same stems (labels are PNGs), split in one of three ways, tried in this order:
                    lists       ROOT/splits/<split>.txt name the stems of each split; ROOT/images/, ROOT/labels/
                    subfolders  ROOT/images/<split>/ and ROOT/labels/<split>/ (e.g. train/, val/)
                    ratio       ROOT/images/ and ROOT/labels/ only: a seeded random `val_fraction` is "val",
                                the rest "train"
  cityscapes      ROOT/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png and
                  ROOT/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png
  ade20k          ROOT/ADEChallengeData2016/images/{training,validation}/<id>.jpg and annotations/.../<id>.png;
                  splits train, val
  pascal_context  ROOT/VOCdevkit/VOC2010/JPEGImages/<id>.jpg, SegmentationClassContext/<id>.png (values 0..59,
                  0 = other), ImageSets/SegmentationContext/{train,val}.txt
  sift_flow       ROOT/Images/spatial_envelope_256x256_static_8outdoorcategories/<id>.jpg, SemanticLabels/.../<id>.mat
                  and GeoLabels/.../<id>.mat (variable S), ROOT/{trainval,test}.txt (the reference's layout): two
                  score heads, as the reference trains them (sem: 33 classes, geo: 3); sift_flow_semantic and
                  sift_flow_geometric: the same tree with one of the label sets
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import pathlib
import shutil
import signal
import threading

import numpy as np

from fcn_jax.data import dataset_info
from fcn_jax.data.image_io import IMAGE_EXTENSIONS, BadExampleError

SIFT_FLOW_DIR = "spatial_envelope_256x256_static_8outdoorcategories"
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExampleFiles:
    image_id: str
    image: pathlib.Path
    label: pathlib.Path
    listed_in: pathlib.Path  # the list or folder that named it, for messages
    extra_labels: tuple[pathlib.Path, ...] = ()  # the label files of the other score heads (SIFT Flow geometric)


Splits = dict[str, list[ExampleFiles]]


def read_id_list(path: pathlib.Path) -> list[str]:
    """The ids of a split list, one a line; an id listed twice would be trained or scored twice: an error."""
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    seen: dict[str, int] = {}
    for number, image_id in enumerate(ids, start=1):
        if image_id in seen:
            raise BadExampleError(f"{path}: id {image_id!r} is listed twice (entries {seen[image_id]} and {number})")
        seen[image_id] = number
    return ids


def check_splits(splits: Splits) -> Splits:
    """Every split non-empty and every listed file present (tfds would only say "No examples were yielded")."""
    if not splits:
        raise BadExampleError("no splits found")
    for split, files in splits.items():
        if not files:
            raise BadExampleError(f"split {split!r} would be empty: every split needs at least one image")
        for example in files:
            for path in (example.image, example.label, *example.extra_labels):
                if not path.is_file():
                    raise BadExampleError(f"{path}: missing, but id {example.image_id!r} is in {example.listed_in}")
    return splits


def read_examples(name: str, split: str, files: list[ExampleFiles], read, skip: bool):
    """(id, read(files)) of every example, for a tfds builder's _generate_examples. With `skip`, a bad example
    (BadExampleError) is logged, counted and left out; a split left with none is an error naming the first."""
    skipped, first = 0, None
    for example_files in files:
        try:
            example = read(example_files)
        except BadExampleError as error:
            if not skip:
                raise
            skipped, first = skipped + 1, first or error
            log.warning("%s %s: skipping bad example: %s", name, split, error)
            continue
        yield example_files.image_id, example
    if files and skipped == len(files):
        raise BadExampleError(f"{name} split {split!r}: all {skipped} examples are bad; the first: {first}")
    if skipped:
        log.warning("%s %s: skipped %d of %d bad examples", name, split, skipped, len(files))


def remove_incomplete(version_dir: str) -> list[pathlib.Path]:
    """Remove what a killed tfds build left (its `incomplete.*` folder beside `version_dir`, and in the dataset's
    .config/), one line each; the paths removed."""
    config_dir = pathlib.Path(version_dir).parent
    removed = sorted([*config_dir.glob("incomplete.*"), *(config_dir.parent / ".config").glob("incomplete.*")])
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        log.warning("removed %s, left by an interrupted build", path)
    return removed


BUILD_STOPPED = 130  # exit code of a build stopped by Ctrl-C or SIGTERM (128 + SIGINT, as a shell reports Ctrl-C)


def build_stopped_line(data_dir: str) -> str:
    """What the dataset CLIs print when tfds_build turned a signal into KeyboardInterrupt."""
    return f"stopped: an unfinished build leaves nothing in {data_dir}; run the same command again"


@contextlib.contextmanager
def tfds_build(version_dir: str):
    """Around a tfds build into `version_dir`: the leftovers of a killed one removed first, and SIGTERM raised as
    KeyboardInterrupt (where nothing else handles it), so that tfds removes its own partial folder when stopped.
    Building needs TensorFlow (tfds serialises with it; reading a prepared dataset does not): without it, one
    ImportError line saying what to install."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError("preparing a dataset needs TensorFlow: pip install \".[prepare]\" (training from an "
                          "already prepared data_dir does not)") from None
    try:
        tf.config.set_visible_devices([], "GPU")  # TF only writes the files; the accelerators stay JAX's
    except RuntimeError:  # TF's runtime already started (with its devices): too late to hide them, harmless
        pass
    remove_incomplete(version_dir)
    in_main = threading.current_thread() is threading.main_thread()
    take_sigterm = in_main and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    if take_sigterm:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        if take_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def read_labels(files: ExampleFiles, heads: dataset_info.Heads, size: tuple[int, int]) -> np.ndarray:
    """(H, W, heads) uint8 class ids of an example's label files (one a head, decoded by the head's description),
    or a BadExampleError naming a label whose size is not the image's `size`."""
    maps = []
    for path, (_, info) in zip((files.label, *files.extra_labels), heads):
        label = info.decode(path)
        if label.shape != tuple(size):
            raise BadExampleError(f"{path}: label is {label.shape[0]}x{label.shape[1]} but image "
                                  f"{files.image} is {size[0]}x{size[1]}")
        maps.append(label)
    return np.stack(maps, axis=-1)


def files_by_stem(directory: pathlib.Path, extensions=IMAGE_EXTENSIONS) -> dict[str, pathlib.Path]:
    """stem -> file of a folder's files with those extensions; two files of one stem are an error."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: folder not found")
    found: dict[str, pathlib.Path] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix.lower() in extensions:
            if path.stem in found:
                raise BadExampleError(f"{found[path.stem]} and {path} have the same stem; rename one")
            found[path.stem] = path
    return found


# ----------------------------------------------------------------------------- the generic folder


def folder_pairs(images_dir: pathlib.Path, labels_dir: pathlib.Path, stems=None,
                 listed_in=None) -> list[ExampleFiles]:
    """The images of a folder (or those of `stems`, in that order) with their labels `<labels_dir>/<stem>.png`
    (the extension in any case: `.PNG` too)."""
    images = files_by_stem(images_dir)
    stems = sorted(images) if stems is None else stems
    missing = [s for s in stems if s not in images]
    if missing:
        raise BadExampleError(f"{listed_in}: id {missing[0]!r} has no image in {images_dir}")
    labels = files_by_stem(labels_dir, (".png",)) if labels_dir.is_dir() else {}
    return [ExampleFiles(s, images[s], labels.get(s, labels_dir / f"{s}.png"), listed_in or images_dir)
            for s in stems]


def folder(root: pathlib.Path, *, val_fraction: float = 0.2, split_seed: int = 0) -> tuple[Splits, str]:
    """The generic layout's splits and which of the three split rules made them."""
    images, labels = root / "images", root / "labels"
    for directory in (images, labels):
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: not found; a folder dataset holds images/, labels/ and "
                                    "classes.json (see docs/data.md)")
    lists = sorted((root / "splits").glob("*.txt")) if (root / "splits").is_dir() else []
    if lists:
        return {p.stem: folder_pairs(images, labels, read_id_list(p), p) for p in lists}, "lists in splits/"
    subfolders = sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = files_by_stem(images)
    if subfolders and loose:
        shown = ", ".join(p.name for p in list(loose.values())[:3]) + (" ..." if len(loose) > 3 else "")
        raise BadExampleError(f"{images} holds split folders ({', '.join(subfolders)}) and images next to them "
                              f"({shown}), which no split would read; move them into a split folder")
    if subfolders:
        return {s: folder_pairs(images / s, labels / s) for s in subfolders}, f"subfolders {', '.join(subfolders)}"
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1) to split {images} into train and val")
    examples = folder_pairs(images, labels)
    if len(examples) < 2:
        raise BadExampleError(f"{images}: {len(examples)} image(s); a train/val split needs at least 2")
    num_val = min(len(examples) - 1, max(1, round(val_fraction * len(examples))))
    order = np.random.default_rng(split_seed).permutation(len(examples))
    val = set(order[:num_val].tolist())
    return ({"train": [e for i, e in enumerate(examples) if i not in val],
             "val": [e for i, e in enumerate(examples) if i in val]},
            f"seeded ratio: {num_val} of {len(examples)} images in val (val_fraction {val_fraction}, "
            f"seed {split_seed})")


# ----------------------------------------------------------------------------- the benchmarks' own layouts


def cityscapes(root: pathlib.Path) -> tuple[Splits, str]:
    splits = {}
    for split in ("train", "val"):
        images_root = root / "leftImg8bit" / split
        if not images_root.is_dir():
            raise FileNotFoundError(f"{images_root}: not found; Cityscapes needs leftImg8bit/ and gtFine/")
        files = []
        for image in sorted(images_root.glob("*/*_leftImg8bit.png")):
            name = image.name[:-len("_leftImg8bit.png")]
            label = root / "gtFine" / split / image.parent.name / f"{name}_gtFine_labelIds.png"
            files.append(ExampleFiles(name, image, label, images_root))
        splits[split] = files
    return splits, "leftImg8bit/{train,val}"


def ade20k(root: pathlib.Path) -> tuple[Splits, str]:
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    splits = {}
    for split, folder_name in (("train", "training"), ("val", "validation")):
        images = base / "images" / folder_name
        splits[split] = folder_pairs(images, base / "annotations" / folder_name)
    return splits, "images/{training,validation}"


def pascal_context(root: pathlib.Path) -> tuple[Splits, str]:
    voc = root / "VOCdevkit" / "VOC2010"
    splits = {}
    for split in ("train", "val"):
        listed = voc / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        if not listed.is_file():
            raise FileNotFoundError(f"{listed}: not found; PASCAL-Context needs VOCdevkit/VOC2010/{{JPEGImages, "
                                    "SegmentationClassContext, ImageSets/SegmentationContext/{train,val}.txt}")
        splits[split] = [ExampleFiles(i, voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClassContext" /
                                      f"{i}.png", listed) for i in read_id_list(listed)]
    return splits, "ImageSets/SegmentationContext lists"


def sift_flow(root: pathlib.Path, labels: tuple[str, ...] = ("SemanticLabels", "GeoLabels")) -> tuple[Splits, str]:
    """SIFT Flow with the label sets `labels` (the first is the label, the others the extra heads' labels)."""
    splits = {}
    for split in ("trainval", "test"):
        listed = root / f"{split}.txt"
        if not listed.is_file():
            raise FileNotFoundError(f"{listed}: not found; SIFT Flow needs trainval.txt, test.txt, Images/, "
                                    "SemanticLabels/ and GeoLabels/ (the reference's data/sift-flow)")
        splits[split] = [ExampleFiles(i, root / "Images" / SIFT_FLOW_DIR / f"{i}.jpg",
                                      root / labels[0] / SIFT_FLOW_DIR / f"{i}.mat", listed,
                                      tuple(root / extra / SIFT_FLOW_DIR / f"{i}.mat" for extra in labels[1:]))
                         for i in read_id_list(listed)]
    return splits, f"trainval.txt, test.txt ({', '.join(labels)})"


LAYOUTS = {
    "folder": folder, "cityscapes": cityscapes, "ade20k": ade20k, "pascal_context": pascal_context,
    "sift_flow": sift_flow, "sift_flow_semantic": lambda root: sift_flow(root, ("SemanticLabels",)),
    "sift_flow_geometric": lambda root: sift_flow(root, ("GeoLabels",)),
}
HEADS = dataset_info.HEAD_PRESETS  # layouts with several score heads


def split_files(layout: str, root: pathlib.Path, *, val_fraction: float = 0.2,
                split_seed: int = 0) -> tuple[Splits, str]:
    """(split -> files, how the splits were made), checked; val_fraction and split_seed: the folder layout's."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    splits, rule = (folder(root, val_fraction=val_fraction, split_seed=split_seed) if layout == "folder"
                    else LAYOUTS[layout](root))
    return check_splits(splits), rule


def check_disjoint(splits: Splits, first: str, second: str) -> None:
    """Training and validation splits must not share an image file: validation would score what was trained on."""
    shared = sorted({e.image.resolve() for e in splits[first]} & {e.image.resolve() for e in splits[second]})
    shared = [path.name for path in shared]
    if shared and first != second:
        raise BadExampleError(f"splits {first!r} and {second!r} share {len(shared)} image(s) ({', '.join(shared[:3])}"
                              f"{' ...' if len(shared) > 3 else ''}); validation would score training images")


def describe(layout: str, root: str, classes: str = "") -> dataset_info.DatasetInfo:
    """The dataset description of a layout: `classes` (a classes.json) if given, else ROOT/classes.json for the
    folder layout, else the benchmark's preset."""
    if classes:
        return dataset_info.resolve(classes)
    if layout == "folder":
        path = pathlib.Path(root).expanduser() / "classes.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; a folder dataset describes its classes there (see "
                                    "docs/data.md), or pass config.data.classes / --classes")
        return dataset_info.read(path)
    if layout not in dataset_info.PRESETS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    return dataset_info.PRESETS[layout]


def describe_heads(layout: str, root: str, classes: str = "") -> dataset_info.Heads:
    """((head name, description), ...): the layout's HEADS, or one unnamed head described by `describe`."""
    if layout in HEADS:
        if classes:
            raise ValueError(f"the {layout} layout has {len(HEADS[layout])} score heads with fixed descriptions; "
                             "a classes file cannot replace them")
        return dataset_info.resolve_heads(layout)
    return (("", describe(layout, root, classes)),)


def fingerprint(splits: Splits, description: dict) -> str:
    """sha256 over every listed file's path, size and mtime and the dataset description: a prepared data_dir
    remembers what it was built from, so an edited folder is not read stale."""
    digest = hashlib.sha256(repr(sorted(description.items())).encode())
    for split in sorted(splits):
        for example in splits[split]:
            for path in (example.image, example.label, *example.extra_labels):
                stat = os.stat(path)
                digest.update(f"{split}\0{example.image_id}\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
