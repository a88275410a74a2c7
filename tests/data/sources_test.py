"""data/sources.py (and train on it): own data end to end, from a folder or SIFT Flow's two heads to named scores and
masks."""
import json

import numpy as np
import pytest
import scipy.io
from PIL import Image

from experiments import folder as folder_experiment
from fcn_jax import evaluate, predict
from fcn_jax.data import dataset_info, layouts, sources
from fcn_jax.data import synthetic as data_synthetic
from fcn_jax.train import config_checks, job, step
from fcn_jax.weights import artifacts


def tiny(config, tmp_path, steps=3):
    config.model.width = 1 / 32
    config.data.crop_size = (32, 32)
    config.train.update(global_batch_size=8, num_steps=steps, log_every=steps, eval_every=steps,
                        checkpoint_every=steps, async_checkpoint=False)
    config.eval.batch_size = 8
    config.optim.update(schedule="constant", warmup_steps=0)
    return config


def test_describe_dataset_for_every_source(tmp_path):
    config = folder_experiment.get_config()
    config.data.source = "synthetic"
    assert sources.describe_dataset(config)[0][1] == dataset_info.PRESETS["synthetic"]
    config.data.source = "synthetic_folder"
    assert sources.describe_dataset(config)[0][1].classes[1:] == tuple(k for _, k, _ in data_synthetic.SHAPE_CLASSES)
    config.data.update(source="cityscapes", manual_dir=str(tmp_path))
    assert sources.describe_dataset(config) == (("", dataset_info.PRESETS["cityscapes"]),)
    config.data.source = "sift_flow"
    assert [(n, i.num_classes) for n, i in sources.describe_dataset(config)] == [("sem", 33), ("geo", 3)]
    config.data.source = "folder"
    with pytest.raises(FileNotFoundError, match="classes.json: not found"):
        sources.describe_dataset(config)
    config.data.classes = "ade20k"  # a preset, or a classes.json path, overrides
    assert sources.describe_dataset(config)[0][1].num_classes == 150


def test_a_folder_dataset_trains_and_everything_downstream_names_its_classes(tmp_path):
    root = data_synthetic.write_synthetic_folder(str(tmp_path / "shapes"), num_train=16, num_val=4)
    config = tiny(folder_experiment.get_config(), tmp_path)
    config.data.update(manual_dir=root, data_dir=str(tmp_path / "tfds"))
    workdir = tmp_path / "run"
    result = job.train_and_evaluate(config, str(workdir))
    shapes = ("background", "triangle", "rectangle", "disc", "ring", "cross")
    stored = artifacts.read_json(workdir / "config.json")
    assert stored["model"]["num_classes"] == 6  # 0 in the experiment: taken from classes.json
    assert dataset_info.read_heads(workdir / "dataset.json")[0][1].classes == shapes
    evaluation = [row for row in artifacts.read_metrics(str(workdir)) if row["split"] == "val"][-1]
    assert list(evaluation["per_class_iou"]) == list(shapes)
    assert result["mean_iou"] == pytest.approx(evaluation["mean_iou"])

    out = tmp_path / "scores.json"
    assert evaluate.main(["--weights", str(workdir), "--images", f"{root}/images/val", "--labels",
                          f"{root}/labels/val", "--output", str(out)]) == 0  # rgb labels decoded by dataset.json
    scores = json.loads(out.read_text())
    assert list(scores["per_class_iou"]) == list(shapes) and scores["num_images"] == 4
    assert predict.main(["--weights", str(workdir), "--input", f"{root}/images/val", "--output",
                         str(tmp_path / "pred")]) == 0
    mask = Image.open(tmp_path / "pred" / "shapes_00016.png")
    assert np.asarray(mask.getpalette()[:18]).reshape(6, 3).tolist() == data_synthetic.folder_description()["colors"]


def test_a_dataset_count_other_than_the_config_is_kept_with_named_extra_classes(tmp_path):
    config = folder_experiment.get_config()
    config.data.source, config.model.num_classes = "synthetic_folder", 8
    heads = config_checks.resolve_num_classes(config)
    assert heads[0][1].classes[-3:] == ("cross", "class_6", "class_7") and config.model.num_classes == 8


def test_the_first_heads_name_survives_a_class_count_of_its_own():
    from experiments import sift_flow

    config = sift_flow.get_config()
    config.data.manual_dir, config.model.num_classes = "/", 40
    heads = config_checks.resolve_num_classes(config)
    assert [(n, i.num_classes) for n, i in heads] == [("sem", 40), ("geo", 3)]
    assert config.model.heads == (("sem", 40), ("geo", 3))


def test_evaluate_scores_the_split_the_run_validated_on(tmp_path):
    """A folder split by a seeded ratio is re-drawn with the run's val_fraction and seed, not the defaults."""
    config = folder_experiment.get_config()
    config.data.update(val_fraction=0.3, split_seed=7, classes="my/classes.json")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(config.to_json())
    args = evaluate.parse_args(["--weights", str(tmp_path / "run"), "--split", "val", "--layout", "folder"])
    assert evaluate.split_options(args) == {"classes": "my/classes.json", "val_fraction": 0.3, "split_seed": 7}
    args = evaluate.parse_args(["--weights", str(tmp_path / "run" / "checkpoints"), "--split", "val", "--layout",
                                "folder", "--split_seed", "1"])
    assert evaluate.split_options(args)["split_seed"] == 1


def _sift_flow(root, rng, ids):
    for split, names in ids.items():
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        for name in names:
            for tree in ("Images", "SemanticLabels", "GeoLabels"):
                (root / tree / layouts.SIFT_FLOW_DIR).mkdir(parents=True, exist_ok=True)
            top = rng.integers(8, 24)  # sky above, ground below: both label sets follow the same scene
            image = np.zeros((32, 32, 3), np.uint8)
            image[:top] = (90, 140, 230)
            image[top:] = (60, 160, 40)
            Image.fromarray(image).save(root / "Images" / layouts.SIFT_FLOW_DIR / f"{name}.jpg")
            semantic = np.where(np.arange(32)[:, None] < top, 28, 15) * np.ones((1, 32), int)  # sky / grass
            geometric = np.where(np.arange(32)[:, None] < top, 1, 2) * np.ones((1, 32), int)  # sky / horizontal
            semantic[0, :4] = 0  # unlabelled
            scipy.io.savemat(root / "SemanticLabels" / layouts.SIFT_FLOW_DIR / f"{name}.mat", {"S": semantic})
            scipy.io.savemat(root / "GeoLabels" / layouts.SIFT_FLOW_DIR / f"{name}.mat", {"S": geometric})


def test_sift_flow_trains_two_heads_and_scores_each(tmp_path):
    from experiments import sift_flow

    root = tmp_path / "sift"
    _sift_flow(root, np.random.default_rng(0), {"trainval": [f"coast_{i}" for i in range(8)],
                                                "test": ["street_a", "street_b"]})
    config = tiny(sift_flow.get_config(), tmp_path, steps=2)
    config.model.geometry = "same"
    config.data.update(manual_dir=str(root), data_dir=str(tmp_path / "tfds"))
    config.init_from = ""
    config.eval.pad_size = ()  # the images' own 32x32: validation then runs what evaluate runs
    config.loss_reduction, config.optim.optimizer, config.optim.learning_rate = "mean", "adam", 1e-3
    workdir = tmp_path / "run"
    job.train_and_evaluate(config, str(workdir))
    assert artifacts.read_json(workdir / "config.json")["model"]["heads"] == [["sem", 33], ["geo", 3]]
    row = [row for row in artifacts.read_metrics(str(workdir)) if row["split"] == "test"][-1]
    assert list(row["per_class_iou_geo"]) == ["sky", "horizontal", "vertical"] and "geo_mean_iou" not in row
    assert "mean_iou_geo" in row and len(row["per_class_iou"]) == 33

    out = tmp_path / "scores.json"
    assert evaluate.main(["--weights", str(workdir), "--split", "test", "--layout", "sift_flow", "--manual_dir",
                          str(root), "--data_dir", str(tmp_path / "tfds"), "--output", str(out)]) == 0
    scores = json.loads(out.read_text())
    for key in ("mean_iou", "mean_iou_geo", "pixel_acc_geo"):  # the evaluate CLI scores what validation scored
        assert scores[key] == pytest.approx(row[key], rel=1e-9, abs=1e-12)
    assert predict.main(["--weights", str(workdir),
                         "--input", str(root / "Images" / layouts.SIFT_FLOW_DIR / "street_a.jpg"),
                         "--output", str(tmp_path / "p")]) == 0
    semantic, geometric = (np.asarray(Image.open(tmp_path / "p" / name))
                           for name in ("street_a.png", "street_a_geo.png"))
    assert semantic.shape == geometric.shape == (32, 32) and geometric.max() < 3
    assert evaluate.main(["--weights", str(workdir), "--images", str(root / "Images" / layouts.SIFT_FLOW_DIR),
                          "--labels", str(root)]) == 1  # two heads need the split holding both labels


def test_validation_with_flip_and_scales_scores_each_image_at_its_size(tmp_path):
    """config.eval.flip / scales: validation scores what `evaluate --flip --scales` scores on the same split."""
    root = data_synthetic.write_synthetic_folder(str(tmp_path / "shapes"), num_train=8, num_val=3)
    config = tiny(folder_experiment.get_config(), tmp_path, steps=2)
    config.data.update(manual_dir=root, data_dir=str(tmp_path / "tfds"))
    config.eval.update(flip=True, scales=(1.0, 0.5))
    result = job.train_and_evaluate(config, str(tmp_path / "run"))
    out = tmp_path / "scores.json"
    assert evaluate.main(["--weights", str(tmp_path / "run"), "--images", f"{root}/images/val", "--labels",
                          f"{root}/labels/val", "--flip", "--scales", "1", "0.5", "--output", str(out)]) == 0
    scores = json.loads(out.read_text())
    for key in ("pixel_acc", "mean_iou", "loss"):
        assert scores[key] == pytest.approx(result[key], rel=1e-5)
    config.eval.update(stride=(8, 8))
    with pytest.raises(step.ConfigError, match="config.eval: stride .* needs a window"):
        config_checks.validate_config(config)
