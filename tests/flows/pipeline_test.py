"""flows/pipeline.py and flows/classifier.py: image-level labels, the classifier's batching, and a tiny classifier ->
FCN -> segment run whose report matches what each stage left on disk, and whose rerun trains nothing."""
import json
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import pipeline_demo
from fcn_jax import pipeline
from fcn_jax.core import metrics
from fcn_jax.data import dataset_info, voc_builder
from fcn_jax.data import synthetic as data_synthetic
from fcn_jax.data.dataset_info import PRESETS
from fcn_jax.flows import classifier as flows_classifier
from fcn_jax.flows import pipeline as flows_pipeline
from fcn_jax.flows import study as flows_study
from fcn_jax.models import classifier as models_classifier
from fcn_jax.train import job, preemption, step
from fcn_jax.weights import checkpoints

WIDTH = 1 / 32


def test_stage_config_errors(tmp_path):
    config = pipeline_demo.get_config()
    config.stages = ("fcn32s", "fcn32s")
    with pytest.raises(step.ConfigError, match="names a variant twice"):
        flows_pipeline.fcn_stage_configs(config, str(tmp_path))
    config.stages = ("fcn32s", "fcn16s", "fcn8s")
    stages = flows_pipeline.fcn_stage_configs(config, str(tmp_path))
    assert [(os.path.basename(d), c.model.variant, os.path.basename(c.init_from)) for d, c in stages] == [
        ("fcn32s", "fcn32s", "convolutionalized"), ("fcn16s", "fcn16s", "fcn32s"), ("fcn8s", "fcn8s", "fcn16s")]
    assert [c.optim.learning_rate for _, c in stages] == [config.fcn.optim.learning_rate] * 3
    config.stage_learning_rates = (3e-3, 3e-4, 3e-5)
    assert [c.optim.learning_rate
            for _, c in flows_pipeline.fcn_stage_configs(config, str(tmp_path))] == [3e-3, 3e-4, 3e-5]
    config.stage_learning_rates = (3e-3, 3e-4)
    with pytest.raises(step.ConfigError, match="2 values for 3 stages"):
        flows_pipeline.fcn_stage_configs(config, str(tmp_path))


# ----------------------------------------------------------------------------- a tiny end-to-end run


def tiny_config(root):

    manual_dir = data_synthetic.write_synthetic_voc(str(root / "voc"), num_train=16, num_val=8, seed=0)
    config = pipeline_demo.get_config()
    config.fcn.model.width = WIDTH
    config.fcn.data.crop_size = (32, 32)
    config.fcn.data.manual_dir, config.fcn.data.data_dir = manual_dir, str(root / "tfds")
    config.fcn.data.synthetic_train, config.fcn.data.synthetic_val = 16, 8
    config.fcn.eval.pad_size = (192, 192)
    config.fcn.optim.update(schedule="constant", warmup_steps=0)
    config.fcn.train.update(num_steps=2, log_every=1, eval_every=1000, checkpoint_every=1000, async_checkpoint=False)
    config.stages = ("fcn8s_atonce",)
    config.classifier.update(num_steps=3, batch_size=8, log_every=1, checkpoint_every=1000, warmup_steps=0)
    config.segment.update(num_images=3, pad_multiple=192)  # one padded shape: one compilation
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny pipeline, crashed once after the classifier's final checkpoint (before it was scored), then rerun."""
    root = tmp_path_factory.mktemp("pipeline")
    config = tiny_config(root)
    workdir = root / "run"

    def crash(*args):
        raise RuntimeError("simulated crash while scoring the classifier")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flows_classifier, "classifier_predictions", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            flows_pipeline.run_pipeline(config, str(workdir))
    crashed = {}
    crashed["checkpoints"] = sorted(os.listdir(workdir / "classifier" / "checkpoints"))
    crashed["metrics"] = (workdir / "classifier" / "metrics.jsonl").read_text()
    crashed["result_written"] = (workdir / "classifier" / "result.json").exists()
    traced = []
    real_step = flows_classifier.classifier_train_step

    def traced_step(state, batch, rng):
        traced.append(1)
        return real_step(state, batch, rng)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flows_classifier, "classifier_train_step", traced_step)
        results = flows_pipeline.run_pipeline(config, str(workdir))
    crashed["traced_on_resume"] = len(traced)
    return config, workdir, results, crashed


def test_a_classifier_with_a_finished_checkpoint_is_loaded_not_retrained(run):
    _, workdir, _, crashed = run
    assert crashed["checkpoints"] == ["3"] and not crashed["result_written"]
    assert crashed["traced_on_resume"] == 0  # the train step was never even compiled again
    lines = (workdir / "classifier" / "metrics.jsonl").read_text()
    assert lines.startswith(crashed["metrics"])  # steps 1..3 kept as they were, then the score
    assert [(r["step"], r["split"]) for r in map(json.loads, lines.splitlines())] == [
        (1, "train"), (2, "train"), (3, "train"), (3, "voc_val")]


def test_classifier_is_labelled_by_largest_objects_and_scored_on_val(run):
    config, workdir, results, _ = run
    source = voc_builder.load_split(config.fcn.data.data_dir, "voc_val")
    examples = flows_classifier.classifier_examples(source)
    labels = np.array([label for _, label in examples])
    assert set(labels) <= {1, 7, 8, 12, 15} and len(examples) == 8  # the synthetic shape classes
    model = models_classifier.VGG16Classifier(num_classes=21, width=WIDTH)
    params = checkpoints.load_params(str(workdir / "classifier"))
    images = np.stack([flows_classifier.classifier_input(image, 224, "caffe_bgr") for image, _ in examples])
    predicted = np.asarray(jnp.argmax(model.apply({"params": params}, images), -1))
    cls = results["classifier"]
    assert cls["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert cls["majority_accuracy"] == pytest.approx(np.bincount(labels).max() / len(labels))
    assert cls["steps"] == 3 and cls["num_train_images"] == 16


def test_converted_weights_are_the_classifier_in_the_fcn_backbone(run):
    _, workdir, results, _ = run
    classifier = checkpoints.load_params(str(workdir / "classifier"))
    converted = checkpoints.load_params(str(workdir / "convolutionalized"))
    np.testing.assert_array_equal(converted["backbone"]["conv5_3"]["kernel"], classifier["conv5_3"]["kernel"])
    fc6 = classifier["fc6"]["kernel"]  # (7*7*C, F) Dense on the (H, W, C)-flattened pool5
    np.testing.assert_array_equal(converted["backbone"]["fc6"]["kernel"], fc6.reshape(7, 7, -1, fc6.shape[1]))
    np.testing.assert_array_equal(converted["score_fr"]["kernel"], 0.0)  # fc8 dropped, as in the paper
    conv = results["convolutionalize"]
    assert conv["variant"] == "fcn8s_atonce" and conv["unused"] == ["fc8"]
    assert conv["dense_vs_conv_max_abs_diff"] < 1e-4
    with open(workdir / "fcn" / "fcn8s_atonce" / "config.json") as f:
        assert json.load(f)["init_from"] == str(workdir / "convolutionalized")


def test_segment_scores_equal_a_recount_of_the_saved_masks(run):
    _, workdir, results, _ = run
    seg = results["segment"]
    assert seg["num_images"] == 3 and len(seg["outputs"]) == 3
    confusion = np.zeros((21, 21), np.int64)
    for entry in seg["outputs"]:
        stem = pathlib.Path(entry["image"]).stem
        mask = np.asarray(Image.open(workdir / "segment" / "predictions" / f"{stem}.png"))
        label = PRESETS["voc"].decode(workdir / "segment" / "heldout" / "labels" / f"{stem}.png")
        assert mask.shape == label.shape == np.asarray(Image.open(workdir / entry["image"])).shape[:2]
        assert (workdir / entry["overlay"]).is_file() and (workdir / entry["gt_overlay"]).is_file()
        confusion += np.asarray(metrics.confusion_matrix(mask, label, 21))
    expected = metrics.segmentation_metrics(confusion)
    for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"):
        assert seg[key] == pytest.approx(expected[key])


def test_report_holds_every_stage_and_a_rerun_trains_nothing(run, monkeypatch):
    config, workdir, results, _ = run
    report = (workdir / "report.md").read_text()
    final = [r for r in map(json.loads, open(workdir / "fcn" / "fcn8s_atonce" / "metrics.jsonl"))
             if r["split"] == "voc_val"][-1]
    row = "| fcn8s_atonce | `convolutionalized` | 2 | " + " | ".join(
        f"{100 * final[k]:.2f}" for k in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"))
    assert row in report
    assert f"**{100 * results['classifier']['accuracy']:.2f}%**" in report
    assert f"mean IU {100 * results['segment']['mean_iou']:.2f}" in report
    for entry in results["segment"]["outputs"]:
        assert f"![]({entry['overlay']})" in report and (workdir / entry["overlay"]).is_file()

    def fail(*args):
        raise AssertionError("a finished stage ran again")

    study = results["study"]
    assert "## 5. Studying the samples (`study/`, its [report](study/report.md))" in report
    assert (workdir / "study" / "report.md").is_file() and (workdir / "study" / "confusion.png").is_file()
    assert [r["split"] for r in study["suspect_labels"]] == ["voc_val"] * 6  # folds 0: the held-out split only
    qualities = [r["label_quality"] for r in study["suspect_labels"]]
    assert qualities == sorted(qualities)
    assert f"{study['suspect_labels'][0]['id']} ({qualities[0]:.3f})" in report
    assert sorted(os.path.basename(r["path"]) for r in study["annotate_next"]) == sorted(
        os.path.basename(e["image"]) for e in results["segment"]["outputs"])  # the new images, ranked

    monkeypatch.setattr(flows_classifier, "classifier_job", fail)
    monkeypatch.setattr(flows_pipeline, "segment_images", fail)
    monkeypatch.setattr(flows_study, "run", fail)
    monkeypatch.setattr(job, "fcn_job", fail)  # built only when an FCN stage has training (or scoring) left
    monkeypatch.setattr(flows_pipeline.checkpoints, "save_params", fail)
    assert flows_pipeline.run_pipeline(config, str(workdir)) == results
    assert (workdir / "report.md").read_text() == report


def test_cli_flags_parse_overrides():
    config, workdir = pipeline.parse_args(["pipeline", "--config", "experiments/pipeline_demo.py",
                                            "--workdir", "runs/x", "--config.classifier.num_steps=7",
                                            "--config.stages=('fcn8s_atonce',)"])
    assert config.classifier.num_steps == 7 and tuple(config.stages) == ("fcn8s_atonce",) and workdir == "runs/x"
    with pytest.raises(SystemExit, match="num_stepz"):
        pipeline.parse_args(["pipeline", "--config", "experiments/pipeline_demo.py", "--workdir", "x",
                              "--config.classifier.num_stepz=7"])


def test_the_pipeline_on_a_folder_dataset_reports_its_class_names(tmp_path):
    """Own samples: the folder example (RGB colour labels, classes.json) through all four stages."""

    root = data_synthetic.write_synthetic_folder(str(tmp_path / "shapes"), num_train=16, num_val=4)
    config = tiny_config(tmp_path)
    config.fcn.model.num_classes = 0  # from classes.json: 6
    config.fcn.data.update(source="folder", manual_dir=root, data_dir=str(tmp_path / "tfds_shapes"),
                           train_split="train", eval_split="val")
    config.segment.update(images=f"{root}/images/val", labels=f"{root}/labels/val")
    results = flows_pipeline.run_pipeline(config, str(tmp_path / "run"))
    shapes = {"triangle", "rectangle", "disc", "ring", "cross"}
    assert results["classifier"]["num_train_images"] == 16 and results["segment"]["num_images"] == 4
    assert all(set(entry["classes"]) <= shapes for entry in results["segment"]["outputs"])
    info = dataset_info.read_heads(tmp_path / "run" / "fcn" / "fcn8s_atonce" / "dataset.json")[0][1]
    correct = total = 0  # the scores are of the saved masks against the colour-coded labels, decoded
    for stem in (f"shapes_{n:05d}" for n in range(16, 20)):
        mask = np.asarray(Image.open(tmp_path / "run" / "segment" / "predictions" / f"{stem}.png"))
        label = info.decode(f"{root}/labels/val/{stem}.png")
        correct, total = correct + int(((mask == label) & (label != 255)).sum()), total + int((label != 255).sum())
    assert results["segment"]["pixel_acc"] == pytest.approx(correct / total, rel=1e-12)
    meta = json.loads((tmp_path / "run" / "convolutionalized" / "dataset.json").read_text())
    assert meta["classes"] == ["background", *[kind for _, kind, _ in data_synthetic.SHAPE_CLASSES]]
    with pytest.raises(step.ConfigError, match="config.segment.images is empty"):
        config.segment.images = ""
        flows_pipeline.run_pipeline(config, str(tmp_path / "run2"))


@pytest.mark.parametrize("stop", [preemption.Preempted("SIGTERM", 5, "runs/x/fcn/fcn32s", saved=True),
                                  KeyboardInterrupt()])
def test_a_signalled_pipeline_exits_75_in_one_line(stop, monkeypatch, capsys):
    """A stage stopped by a signal (its checkpoint saved by the loop) or a signal between stages: exit code 75, and
    the rerun skips the finished stages (test_report_holds_every_stage_and_a_rerun_trains_nothing)."""
    def stopped(config, workdir):
        raise stop

    monkeypatch.setattr(flows_pipeline, "run_pipeline", stopped)
    assert pipeline.main(["--config", "experiments/pipeline_demo.py", "--workdir", "runs/x"]) == 75
    line = capsys.readouterr().err.strip()
    assert line == "pipeline: " + preemption.stopped_message(stop) and "run the same command to resume" in line
