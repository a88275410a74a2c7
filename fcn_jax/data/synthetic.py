"""A small VOC2012 + SBD look-alike on disk, so everything runs without the real data.

Five VOC classes, each drawn as its own shape in its own colour family on
textured, low-saturation backgrounds, so a small net learns them in minutes.
Files use the real formats (JPEG images, VOC-palette PNG labels with 3 px 255
borders around objects, SBD .mat labels without borders) and the real layout,
so data.voc_builder reads them exactly like the real download.

Ids look like `2009_s00042`: a year prefix like VOC ids but never a real id,
so the shipped official seg11valid list does not apply and data.voc
derives seg11valid. Years run 2007..2012; the 2012 ones stand for VOC
segmentation images SBD never saw. SBD covers every other VOC id plus
SBD-only images, and about a third of the VOC val ids it covers are in SBD
train, as on the real data (375 of VOC2011's 1111).

`write_synthetic_folder` writes the same kind of scenes as a dataset of your own would look: images/{train,val}/,
colour-coded RGB label PNGs in labels/{train,val}/ (white = ignore borders) and a classes.json naming the
shapes for what they are (data.layouts, "folder").

Same arguments and seed -> byte-identical files. A marker file makes it
idempotent: a complete tree is never rewritten.
"""

from __future__ import annotations

import colorsys
import io
import json
import pathlib

import numpy as np
import scipy.io
import scipy.ndimage
from PIL import Image
from tqdm import tqdm

from fcn_jax.core.constants import IGNORE_LABEL
from fcn_jax.data.dataset_info import PRESETS, dumps
from fcn_jax.data.voc import SBD_DIR, VOC_DIR

# (VOC class id, shape, hue of its colour family)
SHAPE_CLASSES = (
    (1, "triangle", 0.0),  # aeroplane: red
    (7, "rectangle", 0.15),  # car: yellow
    (8, "disc", 0.33),  # cat: green
    (12, "ring", 0.6),  # dog: blue
    (15, "cross", 0.83),  # person: magenta
)
MIN_SIDE, MAX_SIDE = 96, 192
MARKER = "SYNTHETIC_COMPLETE.json"
JPEG_QUALITY = 90
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by fcn_jax.synthetic".ljust(116)


# ---------------------------------------------------------------- drawing


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float texture: gradient, stripes, checkerboard or blotchy noise, low saturation."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = (_hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.2, 0.9)) for _ in range(2))
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    kind = rng.integers(4)
    if kind == 0:  # linear gradient
        t = (along - along.min()) / max(np.ptp(along), 1.0)
    elif kind == 1:  # stripes
        t = (np.floor(along / rng.uniform(4, 16)) % 2)
    elif kind == 2:  # checkerboard
        cell = rng.uniform(6, 20)
        t = (np.floor(xx / cell) + np.floor(yy / cell)) % 2
    else:  # blotches: upsampled coarse noise
        coarse = rng.random((height // 16 + 2, width // 16 + 2))
        t = scipy.ndimage.zoom(coarse, 16, order=1)[:height, :width]
    texture = c0 + t[..., None] * (c1 - c0)
    return texture + rng.normal(0, rng.uniform(2, 12), (height, width, 1))


def shape_mask(kind: str, height: int, width: int, cy: float, cx: float, r: float) -> np.ndarray:
    """(H, W) bool mask of a shape of radius r centred at (cy, cx)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    if kind == "disc":
        return dy**2 + dx**2 <= r**2
    if kind == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if kind == "rectangle":  # wide, like a car
        return (np.abs(dx) <= r) & (np.abs(dy) <= 0.55 * r)
    if kind == "cross":
        arm = 0.3 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if kind == "triangle":  # apex up, base at cy + r/2
        return (dy <= 0.5 * r) & (np.abs(dx) <= (dy + r) * 0.6)
    raise ValueError(f"unknown shape {kind!r}")


def scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 and its class map (H, W) uint8 without borders."""
    height, width = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    image = background(rng, height, width)
    classes = np.zeros((height, width), np.uint8)
    side = min(height, width)
    for _ in range(rng.integers(1, 4)):
        class_id, kind, hue = SHAPE_CLASSES[rng.integers(len(SHAPE_CLASSES))]
        r = rng.uniform(0.12, 0.3) * side
        mask = shape_mask(kind, height, width, rng.uniform(r, height - r), rng.uniform(r, width - r), r)
        colour = _hsv(hue + rng.uniform(-0.04, 0.04), rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))
        image[mask] = colour + rng.normal(0, 6, (int(mask.sum()), 3))
        classes[mask] = class_id
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), classes


def with_borders(classes: np.ndarray) -> np.ndarray:
    """VOC-style label: a 3 px band of 255 wherever two classes meet.

    Pixels left of / above a class change, dilated by one pixel.
    """
    edge = np.zeros(classes.shape, bool)
    edge[:, :-1] |= classes[:, :-1] != classes[:, 1:]
    edge[:-1, :] |= classes[:-1, :] != classes[1:, :]
    return np.where(scipy.ndimage.binary_dilation(edge), np.uint8(255), classes)


# ---------------------------------------------------------------- file formats


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def palette_png_bytes(label: np.ndarray) -> bytes:
    """A VOC SegmentationClass PNG: palette mode, indices = class ids."""
    image = Image.fromarray(label)  # mode L; putpalette makes it P
    image.putpalette(PRESETS["voc"].palette().tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sbd_mat_bytes(classes: np.ndarray) -> bytes:
    """An SBD cls/<id>.mat: struct GTcls with Segmentation and CategoriesPresent.

    savemat stamps the creation time into the 116-byte text header; it is
    replaced by a fixed text so files are reproducible.
    """
    present = np.unique(classes)
    gt = {"Segmentation": classes, "CategoriesPresent": present[present > 0].astype(np.uint8)[:, None]}
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"GTcls": gt}, do_compression=True)
    return _MAT_HEADER + buffer.getvalue()[len(_MAT_HEADER):]


# ---------------------------------------------------------------- layout


def assign_ids(num_train: int, num_val: int, num_sbd_only: int, seed: int) -> dict[str, list[str]]:
    """Id lists of VOC train/val and SBD train/val (see the module docstring)."""
    rng = np.random.default_rng((seed, 0))
    total = num_train + num_val + num_sbd_only
    years = np.concatenate([
        rng.integers(2007, 2013, num_train + num_val),  # VOC: up to 2012
        rng.integers(2007, 2012, num_sbd_only),  # SBD-only: up to 2011
    ])
    ids = [f"{year}_s{n:05d}" for n, year in enumerate(years)]
    voc_train, voc_val, sbd_only = (
        ids[:num_train], ids[num_train:num_train + num_val], ids[num_train + num_val:total])
    def in_sbd(image_id: str) -> bool:  # SBD was made from VOC2011's images
        return int(image_id[:4]) <= 2011

    val_in_sbd = [i for i in voc_val if in_sbd(i)]
    sbd_train = ({i for i in voc_train if in_sbd(i)} | set(val_in_sbd[::3])
                 | {i for k, i in enumerate(sbd_only) if k % 4 != 3})
    sbd_val = (set(val_in_sbd) | set(sbd_only)) - sbd_train
    return {"voc_train": sorted(voc_train), "voc_val": sorted(voc_val), "sbd_train": sorted(sbd_train),
            "sbd_val": sorted(sbd_val), "all": ids}


def already_written(marker: pathlib.Path, params: dict) -> bool:
    """True if a complete tree was written there with `params`; another tree there is an error."""
    if not marker.exists():
        return False
    written = json.loads(marker.read_text())
    if written != params:
        raise ValueError(f"{marker}: synthetic data written with {written}, not {params}; use another root")
    return True


def write_synthetic_voc(root: str, *, num_train: int = 300, num_val: int = 60,
                        num_sbd_only: int = 100, seed: int = 0) -> str:
    """Writes the VOCdevkit + SBD trees under root once; returns root (a manual_dir)."""
    for name, value, least in (("num_train", num_train, 1), ("num_val", num_val, 1), ("num_sbd_only", num_sbd_only, 0)):
        if value < least:  # every split needs an image
            raise ValueError(f"synthetic data: {name}={value} must be at least {least}")
    out = pathlib.Path(root)
    params = {"num_train": num_train, "num_val": num_val, "num_sbd_only": num_sbd_only, "seed": seed}
    marker = out / MARKER
    if already_written(marker, params):
        return root
    voc, sbd = out / VOC_DIR, out / SBD_DIR
    for folder in (voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets/Segmentation",
                   sbd / "img", sbd / "cls"):
        folder.mkdir(parents=True, exist_ok=True)
    ids = assign_ids(num_train, num_val, num_sbd_only, seed)
    voc_ids = set(ids["voc_train"]) | set(ids["voc_val"])
    sbd_ids = set(ids["sbd_train"]) | set(ids["sbd_val"])
    for n, image_id in enumerate(tqdm(ids["all"], desc="synthetic VOC", disable=len(ids["all"]) < 50)):
        image, classes = scene(np.random.default_rng((seed, 1, n)))
        encoded = jpeg_bytes(image)
        if image_id in voc_ids:
            (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(encoded)
            (voc / "SegmentationClass" / f"{image_id}.png").write_bytes(palette_png_bytes(with_borders(classes)))
        if image_id in sbd_ids:
            (sbd / "img" / f"{image_id}.jpg").write_bytes(encoded)
            (sbd / "cls" / f"{image_id}.mat").write_bytes(sbd_mat_bytes(classes))
    for name, path in (("voc_train", voc / "ImageSets/Segmentation/train.txt"),
                       ("voc_val", voc / "ImageSets/Segmentation/val.txt"),
                       ("sbd_train", sbd / "train.txt"), ("sbd_val", sbd / "val.txt")):
        path.write_text("".join(f"{i}\n" for i in ids[name]))
    marker.write_text(json.dumps(params))
    return root


# ---------------------------------------------------------------- the folder layout


FOLDER_IGNORE_COLOUR = (255, 255, 255)


def folder_description() -> dict:
    """classes.json of the folder example: background and the five shapes, each in its own colour family."""
    colours = [[0, 0, 0]] + [[int(v) for v in np.rint(_hsv(hue, 0.8, 0.9))] for _, _, hue in SHAPE_CLASSES]
    return {"name": "shapes", "classes": ["background"] + [kind for _, kind, _ in SHAPE_CLASSES],
            "colors": colours, "encoding": "rgb", "ignore_color": list(FOLDER_IGNORE_COLOUR), "background": 0}


def rgb_label_png_bytes(label: np.ndarray, colours: list, ignore_colour=FOLDER_IGNORE_COLOUR) -> bytes:
    """A colour-coded label: each class id (0..K-1) painted in its colour, 255 in the ignore colour."""
    table = np.zeros((256, 3), np.uint8)
    table[:len(colours)] = colours
    table[255] = ignore_colour
    buffer = io.BytesIO()
    Image.fromarray(table[label]).save(buffer, format="PNG")
    return buffer.getvalue()


def folder_label_png_bytes(label: np.ndarray) -> bytes:
    """The folder example's label of a scene's VOC-id label (scene(), with_borders()): shape k of SHAPE_CLASSES
    becomes class k, each painted in its classes.json colour, 255 in white."""
    to_class = np.zeros(256, np.uint8)
    to_class[IGNORE_LABEL] = IGNORE_LABEL
    for k, (voc_id, _, _) in enumerate(SHAPE_CLASSES, start=1):
        to_class[voc_id] = k
    return rgb_label_png_bytes(to_class[label], folder_description()["colors"])


def write_synthetic_folder(root: str, *, num_train: int = 240, num_val: int = 60, seed: int = 0) -> str:
    """Writes the folder-layout example under root once (classes.json, images/, labels/); returns root."""
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if value < 1:
            raise ValueError(f"synthetic data: {name}={value} must be at least 1")
    out = pathlib.Path(root)
    params = {"layout": "folder", "num_train": num_train, "num_val": num_val, "seed": seed}
    marker = out / MARKER
    if already_written(marker, params):
        return root
    n = 0
    for split, count in (("train", num_train), ("val", num_val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for _ in tqdm(range(count), desc=f"synthetic folder {split}", disable=count < 50):
            image, classes = scene(np.random.default_rng((seed, 3, n)))
            stem = f"shapes_{n:05d}"
            (out / "images" / split / f"{stem}.jpg").write_bytes(jpeg_bytes(image))
            (out / "labels" / split / f"{stem}.png").write_bytes(folder_label_png_bytes(with_borders(classes)))
            n += 1
    (out / "classes.json").write_text(dumps(folder_description()))
    marker.write_text(json.dumps(params))
    return root


def write_scenes(directory: str, num_images: int, seed: int, kind: str) -> tuple[str, str]:
    """Fresh scenes (never seen in training: their own seed stream) as directory/images/*.jpg and
    directory/labels/*.png, labels encoded as the synthetic dataset `kind` encodes them ("voc": VOC palette PNGs,
    "folder": the folder example's colour-coded RGB); returns (images dir, labels dir)."""
    encode = folder_label_png_bytes if kind == "folder" else palette_png_bytes
    images_dir, labels_dir = pathlib.Path(directory, "images"), pathlib.Path(directory, "labels")
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for n in range(num_images):
        image, classes = scene(np.random.default_rng((seed, 7, n)))
        (images_dir / f"heldout_{n:03d}.jpg").write_bytes(jpeg_bytes(image))
        (labels_dir / f"heldout_{n:03d}.png").write_bytes(encode(with_borders(classes)))
    return str(images_dir), str(labels_dir)
