"""python -m fcn_jax.evaluate: its scores equal a direct per-image computation (no padding counted, no resizing)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import demo
from fcn_jax import evaluate
from fcn_jax.core import constants, metrics
from fcn_jax.data import dataset_info, visualize, voc_builder
from fcn_jax.data import examples as data_examples
from fcn_jax.data import synthetic as data_synthetic
from fcn_jax.data.dataset_info import PRESETS
from fcn_jax.infer import batching, evaluation
from fcn_jax.infer import network as infer_network
from fcn_jax.models import zoo
from fcn_jax.train import step
from fcn_jax.weights import artifacts, checkpoints

WIDTH = 1 / 32  # channels 2, 4, 8, 16, 16 and fc 128: fast, and random weights still predict many classes
NUM_CLASSES = 21
SIZES = ((37, 45), (50, 29), (37, 45))  # odd sizes, one repeated (batched together)
CAFFE_BGR_MEAN = np.array([104.00698793, 116.66876762, 122.67891434], np.float32)


def random_params(variant: str, seed: int = 0) -> dict:
    """He-scaled random params for every layer (score layers too, so predictions are not all background)."""
    model = zoo.create_model(variant, num_classes=NUM_CLASSES, width=WIDTH)
    template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"])
    rng = np.random.default_rng(seed)

    def draw(x):
        scale = np.sqrt(2 / np.prod(x.shape[:-1])) if len(x.shape) > 1 else 0.1
        return rng.normal(0, scale, x.shape).astype(np.float32)

    return jax.tree.map(draw, template)


def save_converted_weights(directory, params, variant="fcn8s"):
    checkpoints.save_params(str(directory), params, {
        "format": "caffe", "variant": variant, "num_classes": NUM_CLASSES, "width": WIDTH, "geometry": "caffe",
        "normalization": "caffe_bgr"})
    return str(directory)


def save_training_workdir(workdir, params):
    """What train_and_evaluate leaves: config.json and checkpoints/<step>/state with the params in it."""
    config = demo.get_config()  # geometry "same", caffe_bgr
    config.model.width = WIDTH
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    model = zoo.from_settings(config.model)
    state = step.TrainState.create(apply_fn=model.apply, params=params, tx=step.create_optimizer(config, params))
    manager = checkpoints.create_manager(os.path.join(workdir, "checkpoints"), async_save=False)
    checkpoints.save(manager, 7, state, jax.random.PRNGKey(1), {"step": 7})
    manager.wait_until_finished()
    manager.close()
    return str(workdir)


def caffe_bgr(image: np.ndarray) -> np.ndarray:
    return image[..., ::-1].astype(np.float32) - CAFFE_BGR_MEAN


def forward_fn(variant="fcn8s", geometry="caffe"):
    """The model's jitted apply, made once per test (jit caches per function object)."""
    return jax.jit(zoo.create_model(variant, num_classes=NUM_CLASSES, width=WIDTH, geometry=geometry).apply)


def direct_mask(forward, params, image: np.ndarray, pad_to=None) -> np.ndarray:
    """The argmax of one forward on the image alone (or zero-padded to `pad_to`), cropped to the image."""
    x = caffe_bgr(image)
    if pad_to is not None:
        x = np.pad(x, ((0, pad_to[0] - x.shape[0]), (0, pad_to[1] - x.shape[1]), (0, 0)))
    logits = forward({"params": params}, x[None])[0]
    return np.asarray(jnp.argmax(logits, -1))[:image.shape[0], :image.shape[1]]


def write_images(directory, sizes=SIZES, seed=0, suffix=".png") -> list[np.ndarray]:
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    for i, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(directory, f"img{i}{suffix}"))
    return images


def write_labels(directory, sizes=SIZES, seed=1) -> list[np.ndarray]:
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = []
    for i, (h, w) in enumerate(sizes):
        label = rng.integers(0, NUM_CLASSES, (h, w)).astype(np.uint8)
        label[:, :3] = 255  # an ignored border, as in VOC
        visualize.save_mask(label, os.path.join(directory, f"img{i}.png"))
        labels.append(label)
    return labels


def direct_scores(forward, params, images, labels, pad_multiple=1, pad_to=None) -> tuple[np.ndarray, dict]:
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for image, label in zip(images, labels):
        if pad_to is None and pad_multiple > 1:
            pad_to = batching.padded_shape(*label.shape, pad_multiple)
        mask = direct_mask(forward, params, image, pad_to)
        confusion += np.asarray(metrics.confusion_matrix(mask, label, NUM_CLASSES))
    return confusion, metrics.segmentation_metrics(confusion)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The same random fcn8s params as converted weights (caffe geometry) and as a training workdir (same)."""
    root = tmp_path_factory.mktemp("weights")
    params = random_params("fcn8s")
    return {"params": params,
            "converted": save_converted_weights(root / "converted", params),
            "workdir": save_training_workdir(str(root / "run"), params)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"images": write_images(root / "images"), "labels": write_labels(root / "labels"),
            "images_dir": str(root / "images"), "labels_dir": str(root / "labels")}


@pytest.mark.parametrize("kind,geometry", [("converted", "caffe"), ("workdir", "same")])
def test_folder_scores_equal_a_direct_per_image_computation(weights, folder, tmp_path, capsys, kind, geometry):
    out = tmp_path / "sub" / "metrics.json"
    figure = tmp_path / "confusion.png"
    rc = evaluate.main(["--weights", weights[kind], "--images", folder["images_dir"], "--labels",
                        folder["labels_dir"], "--batch_size", "2", "--output", str(out), "--figure", str(figure)])
    assert rc == 0
    assert Image.open(figure).size[0] > 900  # 21 named classes drawn
    confusion, expected = direct_scores(forward_fn(geometry=geometry), weights["params"], folder["images"],
                                        folder["labels"])
    assert len(np.flatnonzero(confusion.sum(0))) > 5  # random weights predict many classes: a real check

    result = json.loads(out.read_text())
    np.testing.assert_array_equal(result["confusion"], confusion)
    for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"):
        assert result[key] == pytest.approx(expected[key], rel=1e-12)
    assert list(result["per_class_iou"]) == list(constants.VOC_CLASSES)
    assert list(result["per_class_iou"].values()) == pytest.approx(expected["per_class_iou"], rel=1e-12)
    assert result["num_pixels"] == sum(int((label != 255).sum()) for label in folder["labels"])
    assert result["num_images"] == 3 and result["compilations"] == 2  # one per distinct image size
    assert result["settings"]["geometry"] == geometry and result["settings"]["width"] == WIDTH

    printed = capsys.readouterr().out
    assert f"{'mean IU':<19}{100 * expected['mean_iou']:8.2f}" in printed
    assert f"{'background':<19}{100 * expected['per_class_iou'][0]:10.2f}" in printed


def test_a_tfds_split_scores_as_a_direct_computation_on_its_examples(weights, tmp_path, capsys):
    manual_dir = data_synthetic.write_synthetic_voc(str(tmp_path / "voc"), num_train=2, num_val=3, num_sbd_only=0)
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--weights", weights["workdir"], "--split", "voc_val", "--data_dir", str(tmp_path / "tfds"),
                          "--manual_dir", manual_dir, "--batch_size", "8", "--output", str(out)]) == 0
    source = voc_builder.load_split(str(tmp_path / "tfds"), "voc_val")
    examples = [source[i] for i in range(len(source))]
    confusion, expected = direct_scores(forward_fn(geometry="same"), weights["params"], [e["image"] for e in examples],
                                        [e["label"] for e in examples])
    result = json.loads(out.read_text())
    np.testing.assert_array_equal(result["confusion"], confusion)
    assert result["mean_iou"] == pytest.approx(expected["mean_iou"], rel=1e-12)
    assert result["num_images"] == 3 and result["data"] == f"voc_sbd voc_val ({tmp_path / 'tfds'})"
    assert "fcn8s (same geometry, width 0.03125) on voc_sbd voc_val" in capsys.readouterr().out


def test_padding_to_a_multiple_of_32_is_never_counted(weights, folder):
    network = infer_network.load_network(weights["converted"])
    result = evaluation.evaluate(network,
                                 data_examples.FolderSource(folder["images_dir"], folder["labels_dir"], PRESETS["voc"]),
                                 batch_size=3, pad_multiple=32)
    confusion, expected = direct_scores(forward_fn(), weights["params"], folder["images"], folder["labels"], 32)
    np.testing.assert_array_equal(result["confusion"], confusion)
    assert result["mean_iou"] == pytest.approx(expected["mean_iou"], rel=1e-12)
    assert result["compilations"] == 2  # (37, 45) twice -> 64x64, (50, 29) -> 64x32
    assert result["num_pixels"] == sum(int((label != 255).sum()) for label in folder["labels"])


def test_one_bucket_compiles_once_and_never_counts_its_padding(weights, folder):
    network = infer_network.load_network(weights["converted"])
    source = data_examples.FolderSource(folder["images_dir"], folder["labels_dir"], PRESETS["voc"])
    assert source.sizes() == list(SIZES)
    result = evaluation.evaluate(network, source, batch_size=2, buckets=1)
    confusion, _ = direct_scores(forward_fn(), weights["params"], folder["images"], folder["labels"], pad_to=(50, 45))
    np.testing.assert_array_equal(result["confusion"], confusion)
    assert result["compilations"] == 1
    assert result["num_pixels"] == sum(int((label != 255).sum()) for label in folder["labels"])


def test_weights_load_from_workdir_checkpoints_dir_and_converted_dir(weights):
    for path, geometry in ((weights["workdir"], "same"), (os.path.join(weights["workdir"], "checkpoints"), "same"),
                           (weights["converted"], "caffe")):
        network = infer_network.load_network(path)
        assert {k: network.settings[k] for k in artifacts.SETTINGS} == {
            "variant": "fcn8s", "num_classes": 21, "width": WIDTH, "geometry": geometry,
            "normalization": "caffe_bgr"}
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(network.params), weights["params"])
    # flags override what is stored
    network = infer_network.load_network(weights["converted"], {"geometry": "same", "normalization": "imagenet_rgb"})
    assert network.model.geometry == "same" and network.settings["normalization"] == "imagenet_rgb"
    with pytest.raises(ValueError, match=r"does not fit variant=fcn32s, num_classes=21, .*unexpected: score_pool3"):
        infer_network.load_network(weights["converted"], {"variant": "fcn32s"})


def test_weights_without_stored_settings_need_the_flags(weights, tmp_path):
    bare = tmp_path / "bare"
    os.symlink(os.path.join(weights["workdir"], "checkpoints"), bare)  # a checkpoints dir with no config.json above
    with pytest.raises(ValueError, match=f"{bare} holds neither fcn_jax_weights.json nor a training config.json; "
                                         "pass --variant --num_classes --width --geometry --normalization"):
        infer_network.load_network(str(bare))
    with pytest.raises(FileNotFoundError, match=f"--weights {tmp_path / 'nope'} does not exist"):
        infer_network.load_network(str(tmp_path / "nope"))
    (tmp_path / "fcn8s.caffemodel").write_bytes(b"")
    with pytest.raises(ValueError, match="fcn8s.caffemodel is a file; pass a training workdir or a folder written "
                                         "by python -m fcn_jax.convert"):
        infer_network.load_network(str(tmp_path / "fcn8s.caffemodel"))
    network = infer_network.load_network(str(bare), {"variant": "fcn8s", "num_classes": 21, "width": WIDTH,
                                               "geometry": "same", "normalization": "caffe_bgr"})
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(network.params), weights["params"])


def _error(capsys, argv) -> str:
    assert evaluate.main(argv) == 1
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar, if it started
    assert last.startswith("error: ")
    return last


def test_folder_errors_name_the_file(weights, folder, tmp_path, capsys):
    base = ["--weights", weights["converted"]]
    images, labels = str(tmp_path / "images"), str(tmp_path / "labels")
    os.makedirs(images)
    os.makedirs(labels)
    assert _error(capsys, base + ["--images", images, "--labels", labels]) == (
        f"error: input folder {images} holds no images "
        "(.jpg, .jpeg, .png, .bmp, .gif, .tif, .tiff, .webp, .ppm, .pgm)")
    assert _error(capsys, base + ["--images", str(tmp_path / "nope"), "--labels", labels]) == (
        f"error: --images folder {tmp_path / 'nope'} does not exist")

    write_images(images, sizes=((20, 30), (21, 30)))
    write_labels(labels, sizes=((20, 30),))
    assert _error(capsys, base + ["--images", images, "--labels", labels]) == (
        f"error: no label {labels}/img1.png for image {images}/img1.png")
    write_labels(labels, sizes=((20, 30), (30, 21)))
    assert _error(capsys, base + ["--images", images, "--labels", labels]) == (
        f"error: label {labels}/img1.png is 30x21 but image {images}/img1.png is 21x30")
    Image.fromarray(np.zeros((21, 30, 3), np.uint8)).save(f"{labels}/img1.png")  # RGB, not class ids
    assert _error(capsys, base + ["--images", images, "--labels", labels]).startswith(
        f"error: {labels}/img1.png: label PNG has mode 'RGB', expected a palette ('P') PNG")
    assert _error(capsys, base + ["--images", folder["images_dir"], "--labels", folder["labels_dir"],
                                  "--output", str(tmp_path)]) == (
        f"error: --output {tmp_path} is a folder; give a file name such as metrics.json")


def test_report_and_json_mark_absent_classes(tmp_path):
    confusion = np.zeros((3, 3), np.int64)
    confusion[0, 0], confusion[0, 1], confusion[1, 1] = 6, 2, 2  # class 2 absent from labels and predictions
    result = metrics.segmentation_metrics(confusion)
    heads = (("", dataset_info.from_json({"classes": ["background", "cat", "dog"]})),)
    result["per_image_mean_iou"] = 0.5
    assert evaluation.report(result, heads).splitlines() == [
        "pixel acc             80.00", "mean acc              87.50", "mean IU               62.50",
        "fw IU                 70.00", "mean IU per image     50.00", "mean precision        75.00",
        "mean recall           87.50", "mean F1 (Dice)        76.19", "",
        "class                      IU precision    recall        F1",
        "background              75.00    100.00     75.00     85.71",
        "cat                     50.00     50.00    100.00     66.67",
        "dog                       n/a       n/a       n/a       n/a",
        "warning: no labelled pixel of class dog in these labels: no score measures it (its IU is n/a, or 0 where "
        "predicted)"]
    out = json.loads(evaluation.to_json(result, heads, data="x"))
    assert out["per_class_iou"] == {"background": 0.75, "cat": 0.5, "dog": None}
    assert out["per_class_precision"] == {"background": 1.0, "cat": 0.5, "dog": None}
    assert out["per_class_recall"] == {"background": 0.75, "cat": 1.0, "dog": None}
    assert out["per_class_f1"] == pytest.approx({"background": 6 / 7, "cat": 2 / 3, "dog": None})


def test_0_255_masks_scored_as_background_alone_are_not_a_silent_100(tmp_path):
    """The hostile tour's binary masks: every object pixel 255 (ignored), so the background scores 100.00 alone."""
    confusion = np.array([[9, 0], [0, 0]], np.int64)
    result = {**metrics.segmentation_metrics(confusion), "confusion": confusion.tolist()}
    heads = (("", dataset_info.from_json({"classes": ["background", "object"], "encoding": "index"})),)
    lines = evaluation.report(result, heads).splitlines()
    assert lines[2] == "mean IU              100.00"
    assert lines[-2] == "object                    n/a       n/a       n/a       n/a"
    assert lines[-1] == (
        "warning: no labelled pixel of class object in these labels: no score measures it (its IU is n/a, or 0 where "
        "predicted); the labels hold only 0 and 255, and 255 is the ignore label: for 0/255 masks (255 = object) add "
        '"id_map": {"0": 0, "255": 1} to the dataset\'s classes.json')
    predicted = {**metrics.segmentation_metrics([[7, 2], [0, 0]]), "confusion": [[7, 2], [0, 0]]}
    assert evaluation.report(predicted, heads).splitlines()[-1].startswith(  # predicted, never labelled: IU 0
        "warning: no labelled pixel of class object in these labels")


def test_a_label_saved_as_stem_dot_upper_case_png_is_found(weights, folder, tmp_path, capsys):
    """The hostile tour's `img1.PNG`: paired with img1.png's image, scored as the lower-case one."""
    import shutil

    labels = tmp_path / "labels"
    shutil.copytree(folder["labels_dir"], labels)
    os.rename(labels / "img1.png", labels / "img1.PNG")
    outputs = []
    for labels_dir in (folder["labels_dir"], str(labels)):
        outputs.append(tmp_path / f"{len(outputs)}.json")
        assert evaluate.main(["--weights", weights["converted"], "--images", folder["images_dir"], "--labels",
                              labels_dir, "--output", str(outputs[-1])]) == 0
    original, upper = (json.loads(path.read_text()) for path in outputs)
    assert upper["confusion"] == original["confusion"] and upper["num_images"] == 3
    assert upper["num_pixels"] == sum(int((label != 255).sum()) for label in folder["labels"])
