"""What a dataset's labels mean: class names, colours, the ignore label, and how label files encode classes.

Everything downstream reads one `DatasetInfo`: num_classes, per-class IU by name, sample masks, overlays,
`predict --figure` legends. It is stored as dataset.json in every training workdir and converted-weights
folder, so evaluate/predict on those weights name the right classes without flags. No TensorFlow here.

Label files come in three encodings (`encoding`):
  palette  palette ('P') PNGs whose indices are the class ids (VOC's SegmentationClass); the colours of the
           indices used must be the dataset's, or the indices may not be class ids;
  index    single-channel PNGs (8 or 16 bit, or a palette PNG read as its raw indices), or `.mat` files
           (variable `mat_key`), whose values are the class ids;
  rgb      colour-coded RGB(A) PNGs: every pixel's colour must be one of `colors` (or `ignore_color`).
Values equal to `ignore_label` mean "not labelled" (255 inside fcn_jax). An optional `id_map` maps raw values
to class ids first (Cityscapes labelIds -> trainIds, ADE20K's 0 = other -> ignore); with it, a raw value the
map does not name is an error, as is any value that is neither a class id nor the ignore label.

A user's dataset describes itself in a classes.json:
    {"name": "shapes", "classes": ["background", "triangle", ...], "colors": [[0, 0, 0], [200, 30, 30], ...],
     "encoding": "rgb", "ignore_color": [255, 255, 255], "background": 0}
`colors` may be left out (then VOC's colour map is used), `background` (the class overlays leave unpainted)
may be null, and "id_map": {"7": 0, "8": 1, ...} (raw value -> class id, 255 = ignore) is optional.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
from PIL import Image

from fcn_jax.core.constants import IGNORE_LABEL, VOC_CLASSES
from fcn_jax.data.image_io import BadExampleError, check_label_values, decode
from fcn_jax.data.visualize import voc_palette

ENCODINGS = ("palette", "index", "rgb")
DATASET_FILE = "dataset.json"  # next to a workdir's config.json and in converted-weights folders


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]  # one RGB colour per class
    encoding: str = "palette"
    ignore_label: int = IGNORE_LABEL  # the raw value meaning "not labelled" (palette / index encodings)
    ignore_color: tuple[int, int, int] | None = None  # rgb encoding: the colour meaning "not labelled"
    id_map: tuple[tuple[int, int], ...] = ()  # (raw value, class id or 255); () = raw values are class ids
    background: int | None = 0  # the class overlays leave unpainted; None: paint every class
    mat_key: str = ""  # .mat label files: the variable holding the (H, W) map

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 for palette PNGs and overlays: the class colours, VOC's colour map elsewhere."""
        palette = voc_palette()
        palette[:self.num_classes] = np.asarray(self.colors, np.uint8).reshape(-1, 3)
        return palette

    def with_num_classes(self, num_classes: int) -> DatasetInfo:
        """This description cut to, or extended (names class_<k>, VOC colours) to, num_classes classes."""
        names = self.classes[:num_classes] + tuple(f"class_{k}" for k in range(self.num_classes, num_classes))
        colours = self.colors[:num_classes] + tuple(map(tuple, voc_palette()[self.num_classes:num_classes].tolist()))
        return dataclasses.replace(self, classes=names, colors=colours)

    def to_json(self) -> dict:
        """The classes.json form (plain lists and dicts, so it equals what a JSON round trip gives back)."""
        out = dataclasses.asdict(self)
        out["id_map"] = {str(raw): mapped for raw, mapped in self.id_map}
        return json.loads(json.dumps(out))

    def decode(self, path) -> np.ndarray:
        """(H, W) uint8 class ids of a label file (255 = ignore), or a BadExampleError naming the file and values."""
        path = pathlib.Path(path)
        raw = self._read_raw(path)
        if self.id_map:
            return self._apply_id_map(raw, path)
        # colour-coded labels mark unlabelled pixels by ignore_color, the others by the raw ignore_label
        ids = raw if self.encoding == "rgb" else np.where(raw == self.ignore_label, IGNORE_LABEL, raw)
        return check_label_values(ids, path, self.classes)

    def _read_raw(self, path: pathlib.Path) -> np.ndarray:
        if path.suffix.lower() == ".mat":
            return _read_mat(path, self.mat_key)
        image = decode(path.read_bytes(), path)
        if self.encoding == "rgb":
            return self._colours_to_ids(image, path)
        if self.encoding == "palette":
            if image.mode != "P":
                raise BadExampleError(f"{path}: label PNG has mode {image.mode!r}, expected a palette ('P') PNG whose "
                                 "indices are class ids" + ("; colour-coded labels need \"encoding\": \"rgb\""
                                                             if image.mode in ("RGB", "RGBA") else ""))
            self._check_palette(image, path)
            return np.asarray(image, np.int64)
        if image.mode in ("RGB", "RGBA"):
            raise BadExampleError(f"{path}: label PNG is {image.mode}, but the dataset's encoding is 'index' "
                             "(one channel of class ids); colour-coded labels need \"encoding\": \"rgb\"")
        if image.mode in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
            return np.asarray(image, np.int64)
        raise BadExampleError(f"{path}: label image mode {image.mode!r} is not a map of class ids")

    def _check_palette(self, image: Image.Image, path: pathlib.Path) -> None:
        indices = np.asarray(image, np.uint8)
        palette = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)
        ours = self.palette()
        used = np.unique(indices)
        used = used[used != self.ignore_label]
        known = used[used < len(palette)]
        wrong = np.setdiff1d(used, known[(palette[known] == ours[known]).all(axis=1)])
        if wrong.size:
            raise BadExampleError(f"{path}: palette colours of indices {wrong.tolist()} differ from the {self.name} "
                             "colours, so the indices may not be class ids (if they are, use \"encoding\": \"index\")")

    def _colours_to_ids(self, image: Image.Image, path: pathlib.Path) -> np.ndarray:
        rgb = np.asarray(image.convert("RGB"), np.int64)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        table = {_code(c): i for i, c in enumerate(self.colors)}
        if self.ignore_color is not None:
            table[_code(self.ignore_color)] = IGNORE_LABEL
        unique, inverse = np.unique(codes, return_inverse=True)
        unknown = [int(u) for u in unique if int(u) not in table]
        if unknown:
            y, x = np.argwhere(codes == unknown[0])[0]
            shown = ", ".join(str(_rgb(u)) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise BadExampleError(f"{path}: colour(s) {shown} are not classes of {self.name} (first at row {y}, column "
                             f"{x}); known colours: {self._colour_names()}")
        return np.asarray([table[int(u)] for u in unique], np.int64)[inverse].reshape(codes.shape)

    def _colour_names(self) -> str:
        named = [f"{tuple(c)} {n}" for n, c in zip(self.classes, self.colors)][:8]
        if self.ignore_color is not None:
            named.append(f"{tuple(self.ignore_color)} ignore")
        return ", ".join(named) + (" ..." if self.num_classes > 8 else "")

    def _apply_id_map(self, raw: np.ndarray, path: pathlib.Path) -> np.ndarray:
        mapping = {self.ignore_label: IGNORE_LABEL, **dict(self.id_map)}  # the raw ignore value stays ignored
        unique, inverse = np.unique(raw, return_inverse=True)
        unknown = [int(u) for u in unique if int(u) not in mapping]
        if unknown:
            raise BadExampleError(f"{path}: label values {unknown[:10]} are not in the {self.name} id map (raw values "
                             f"{min(mapping)}..{max(mapping)})")
        return np.asarray([mapping[int(u)] for u in unique], np.uint8)[inverse].reshape(raw.shape)


def _code(colour) -> int:
    r, g, b = (int(v) for v in colour)
    return (r << 16) | (g << 8) | b


def _rgb(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def _read_mat(path: pathlib.Path, key: str) -> np.ndarray:
    import scipy.io

    try:
        value = scipy.io.loadmat(path, variable_names=[key]).get(key)
    except Exception as error:  # scipy raises many types for corrupt files
        raise BadExampleError(f"{path}: cannot read .mat file ({error})") from None
    if value is None or value.ndim != 2 or not np.issubdtype(value.dtype, np.number):
        raise BadExampleError(f"{path}: no (H, W) numeric variable {key!r}")
    return np.asarray(value).astype(np.int64)


# ----------------------------------------------------------------------------- reading and writing descriptions


def from_json(value: dict, source: str = "dataset description") -> DatasetInfo:
    """A DatasetInfo from its JSON form (classes.json / dataset.json); a bad field is a ValueError naming it."""
    if not isinstance(value, dict):
        raise ValueError(f"{source}: expected a JSON object with 'classes'")
    unknown = sorted(set(value) - {f.name for f in dataclasses.fields(DatasetInfo)})
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)}")
    classes = value.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise ValueError(f"{source}: 'classes' must be a non-empty list of class names")
    if len(classes) >= IGNORE_LABEL or len(set(classes)) != len(classes):
        raise ValueError(f"{source}: 'classes' must hold 1..{IGNORE_LABEL - 1} distinct names")
    colors = value["colors"] if value.get("colors") is not None else voc_palette()[:len(classes)].tolist()
    if len(colors) != len(classes) or not all(_is_colour(c) for c in colors):
        raise ValueError(f"{source}: 'colors' must be one [r, g, b] (0..255) per class ({len(classes)})")
    encoding = value.get("encoding", "palette")
    if encoding not in ENCODINGS:
        raise ValueError(f"{source}: 'encoding' is {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    ignore_color = value.get("ignore_color")
    if ignore_color is not None and not _is_colour(ignore_color):
        raise ValueError(f"{source}: 'ignore_color' must be [r, g, b] or null")
    if encoding == "rgb" and len({_code(c) for c in colors} | ({_code(ignore_color)} if ignore_color else set())) \
            != len(colors) + (ignore_color is not None):
        raise ValueError(f"{source}: two classes (or a class and ignore_color) share a colour")
    try:
        id_map = tuple(sorted((int(raw), int(mapped)) for raw, mapped in (value.get("id_map") or {}).items()))
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"{source}: 'id_map' must map raw values to class ids, e.g. {{\"7\": 0}}") from None
    if any(not (0 <= m < len(classes) or m == IGNORE_LABEL) for _, m in id_map):
        raise ValueError(f"{source}: 'id_map' maps to values outside 0..{len(classes) - 1} and {IGNORE_LABEL}")
    background = value.get("background", 0 if classes[0] == "background" else None)
    if background is not None and (isinstance(background, bool) or not isinstance(background, int)
                                   or not 0 <= background < len(classes)):
        raise ValueError(f"{source}: 'background' must be a class index or null")
    ignore_label = value.get("ignore_label", IGNORE_LABEL)
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, int) or ignore_label < 0:
        raise ValueError(f"{source}: 'ignore_label' must be a non-negative integer (the raw value meaning ignore)")
    if encoding == "rgb" and ignore_label != IGNORE_LABEL:
        raise ValueError(f"{source}: 'ignore_label' is for palette / index labels; colour-coded ones mark "
                         "unlabelled pixels with 'ignore_color'")
    if ignore_label < len(classes) and not id_map:
        raise ValueError(f"{source}: 'ignore_label' {ignore_label} is class {classes[ignore_label]!r}, which could "
                         f"then never be labelled; use a value of at least {len(classes)} (default {IGNORE_LABEL})")
    name = value.get("name", "dataset")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: 'name' must be a non-empty string")
    return DatasetInfo(name=name, classes=tuple(classes),
                       colors=tuple(tuple(int(v) for v in c) for c in colors), encoding=encoding,
                       ignore_label=ignore_label,
                       ignore_color=tuple(ignore_color) if ignore_color is not None else None, id_map=id_map,
                       background=background, mat_key=str(value.get("mat_key", "")))


def _is_colour(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)


def _load_json(path: pathlib.Path):
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid UTF-8 JSON ({error})") from None


def read(path) -> DatasetInfo:
    """A classes.json / dataset.json file."""
    return from_json(_load_json(pathlib.Path(path)), str(path))


def dumps(value: dict) -> str:
    """JSON with one field a line and each field's value on that line (class lists stay readable)."""
    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()) + "\n}\n"


Heads = tuple[tuple[str, DatasetInfo], ...]  # (head name, its description); one head: (("", info),)


def write(heads: Heads, directory: str) -> None:
    """directory/dataset.json, atomically: the description, or {"heads": {name: description}} for several heads."""
    value = heads[0][1].to_json() if len(heads) == 1 else {"heads": {name: info.to_json() for name, info in heads}}
    path = pathlib.Path(directory) / DATASET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(dumps(value) if len(heads) == 1 else json.dumps(value, indent=1) + "\n")
    tmp.replace(path)


def read_heads(path) -> Heads:
    """The heads of a dataset.json (one unnamed head for a plain description)."""
    path = pathlib.Path(path)
    value = _load_json(path)
    if isinstance(value, dict) and set(value) == {"heads"}:
        return tuple((name, from_json(v, f"{path} head {name}")) for name, v in value["heads"].items())
    return (("", from_json(value, str(path))),)


def stored(weights: str) -> Heads | None:
    """The dataset.json stored with weights (a workdir, its checkpoints/ dir, or converted weights), if any."""
    path = pathlib.Path(weights).expanduser()
    for directory in (path, path.parent) if path.name == "checkpoints" else (path,):
        if (directory / DATASET_FILE).is_file():
            return read_heads(directory / DATASET_FILE)
    return None


def for_weights(weights: str | None, heads, dataset: str | None = None) -> Heads:
    """The descriptions to name classes by: `dataset` (a preset, a multi-head preset such as sift_flow, or a
    classes.json) if given, else the one stored with the weights (None: none), else VOC's for 21 classes, else
    generic names. `heads`: the network's ((name, classes), ...), or one class count; the descriptions must fit."""
    specs = (("", heads),) if isinstance(heads, int) else tuple(heads)
    found = resolve_heads(dataset) if dataset else (stored(weights) if weights else None)
    if found is None:
        found = tuple((name, PRESETS["voc"] if k == len(VOC_CLASSES) else generic(k)) for name, k in specs)
    counts, wanted = [info.num_classes for _, info in found], [k for _, k in specs]
    if counts != wanted:
        raise ValueError(f"the {found[0][1].name} description has {'+'.join(map(str, counts))} classes but the "
                         f"weights {'+'.join(map(str, wanted))}; pass --dataset with a matching description")
    return tuple((name, info) for (name, _), (_, info) in zip(specs, found))  # the network's head names


def resolve_heads(name_or_path: str) -> Heads:
    """resolve, with the multi-head presets (HEAD_PRESETS) as well."""
    if name_or_path in HEAD_PRESETS:
        return tuple((head, PRESETS[preset]) for head, preset in HEAD_PRESETS[name_or_path])
    return (("", resolve(name_or_path)),)


def resolve(name_or_path: str) -> DatasetInfo:
    """A preset name (voc, cityscapes, ...) or the path of a classes.json."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "classes.json"
    if not path.is_file():
        raise FileNotFoundError(f"dataset {name_or_path!r} is neither a preset ({', '.join((*PRESETS, *HEAD_PRESETS))})"
                                " nor a classes.json file")
    return read(path)


def generic(num_classes: int) -> DatasetInfo:
    return DatasetInfo("unnamed", tuple(f"class_{i}" for i in range(num_classes)),
                       tuple(map(tuple, voc_palette()[:num_classes].tolist())), encoding="index")


# ----------------------------------------------------------------------------- presets


def _preset(name: str, classes, *, shifted_colours: bool, **fields) -> DatasetInfo:
    """A preset whose colours are VOC's colour map (from index 1 when class 0 is not a black background)."""
    start = 1 if shifted_colours else 0
    colours = tuple(map(tuple, voc_palette()[start:start + len(classes)].tolist()))
    return DatasetInfo(name, tuple(classes), colours, **fields)


def _shift_map(num_classes: int) -> tuple[tuple[int, int], ...]:
    """Raw 0 = unlabelled -> ignore, raw k -> class k - 1 (ADE20K, PASCAL-Context 59, SIFT Flow)."""
    return ((0, IGNORE_LABEL),) + tuple((k, k - 1) for k in range(1, num_classes + 1))


# PASCAL-Context 59: numbered 1..59 in alphabetical order, as the common label conversion (the Detail API via
# mmsegmentation's pascal_context.py: SegmentationClassContext PNGs) writes them.
PASCAL_CONTEXT_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building", "bus",
    "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat",
    "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight",
    "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator",
    "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan",
    "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag")
SIFT_FLOW_CLASSES = (
    "awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk", "desert", "door",
    "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole", "river", "road", "rock", "sand", "sea",
    "sidewalk", "sign", "sky", "staircase", "streetlight", "sun", "tree", "window")
SIFT_FLOW_GEOMETRIC_CLASSES = ("sky", "horizontal", "vertical")
# Cityscapes: (labelId, name, colour) of the 19 evaluated classes, in trainId order; the other labelIds are ignored.
CITYSCAPES = (
    (7, "road", (128, 64, 128)), (8, "sidewalk", (244, 35, 232)), (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)), (13, "fence", (190, 153, 153)), (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)), (20, "traffic sign", (220, 220, 0)), (21, "vegetation", (107, 142, 35)),
    (22, "terrain", (152, 251, 152)), (23, "sky", (70, 130, 180)), (24, "person", (220, 20, 60)),
    (25, "rider", (255, 0, 0)), (26, "car", (0, 0, 142)), (27, "truck", (0, 0, 70)), (28, "bus", (0, 60, 100)),
    (31, "train", (0, 80, 100)), (32, "motorcycle", (0, 0, 230)), (33, "bicycle", (119, 11, 32)))
CITYSCAPES_LABEL_IDS = 34  # labelIds 0..33 in *_gtFine_labelIds.png

# The synthetic VOC-format demo data: VOC class ids, but what they really are is a shape (data.synthetic.SHAPE_CLASSES).
_SYNTHETIC_NAMES = {1: "triangle", 7: "rectangle", 8: "disc", 12: "ring", 15: "cross"}

PRESETS = {
    "voc": _preset("voc", VOC_CLASSES, shifted_colours=False),
    "synthetic": _preset("synthetic", tuple(_SYNTHETIC_NAMES.get(i, n if i == 0 else f"unused ({n})")
                                            for i, n in enumerate(VOC_CLASSES)), shifted_colours=False),
    "pascal_context": _preset("pascal_context", PASCAL_CONTEXT_CLASSES, shifted_colours=True, encoding="index",
                              id_map=_shift_map(len(PASCAL_CONTEXT_CLASSES)), background=None),
    "ade20k": _preset("ade20k", ADE20K_CLASSES, shifted_colours=True, encoding="index",
                      id_map=_shift_map(len(ADE20K_CLASSES)), background=None),
    "sift_flow_semantic": _preset("sift_flow_semantic", SIFT_FLOW_CLASSES, shifted_colours=True, encoding="index",
                                  mat_key="S",
                         id_map=_shift_map(len(SIFT_FLOW_CLASSES)), background=None),
    "sift_flow_geometric": _preset("sift_flow_geometric", SIFT_FLOW_GEOMETRIC_CLASSES, shifted_colours=True,
                                   encoding="index", mat_key="S", background=None,
                                   id_map=((-1, IGNORE_LABEL),) + _shift_map(len(SIFT_FLOW_GEOMETRIC_CLASSES))),
    "cityscapes": DatasetInfo(
        "cityscapes", tuple(n for _, n, _ in CITYSCAPES), tuple(c for _, _, c in CITYSCAPES), encoding="index",
        background=None, id_map=tuple((raw, next((t for t, (i, _, _) in enumerate(CITYSCAPES) if i == raw),
                                                 IGNORE_LABEL)) for raw in range(CITYSCAPES_LABEL_IDS))),
}
# Datasets with several score heads: (head name, preset) each, in the order of their label files.
HEAD_PRESETS = {"sift_flow": (("sem", "sift_flow_semantic"), ("geo", "sift_flow_geometric"))}
