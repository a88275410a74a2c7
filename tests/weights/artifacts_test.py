"""weights/artifacts.py: atomic JSON, metrics.jsonl read back (a cut last line tolerated), config comparison,
results."""
import json
import os

import pytest

from fcn_jax.weights import artifacts


def test_write_json_is_atomic_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "x.json"
    artifacts.write_json(str(path), {"a": [1, 2.5, None]})
    assert json.loads(path.read_text()) == {"a": [1, 2.5, None]}
    assert sorted(os.listdir(tmp_path / "sub")) == ["x.json"]


def test_read_metrics_skips_a_cut_last_line_but_not_a_bad_middle_one(tmp_path):
    rows = [{"step": 1, "split": "train", "images_per_s": 3.0}, {"step": 2, "split": "train", "images_per_s": 5.0}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / artifacts.METRICS_FILE).write_text(text + '{"step": 3, "spl')  # a write cut by kill -9
    assert artifacts.read_metrics(str(tmp_path)) == rows
    assert artifacts.median_train_speed(str(tmp_path)) == 4.0
    artifacts.truncate_metrics(str(tmp_path), 1)
    assert (tmp_path / artifacts.METRICS_FILE).read_text() == json.dumps(rows[0]) + "\n"
    (tmp_path / artifacts.METRICS_FILE).write_text("not json\n" + text)
    with pytest.raises(artifacts.WorkdirError, match="line 1 is not JSON"):
        artifacts.read_metrics(str(tmp_path))
    assert artifacts.read_metrics(str(tmp_path / "none")) == []


def test_config_differences_name_every_differing_leaf():
    old = {"model": {"width": 1.0, "variant": "fcn8s"}, "seed": 0}
    new = {"model": {"width": 0.5, "variant": "fcn8s"}, "seed": 0, "extra": 1}
    assert artifacts.config_differences(old, new) == [("extra", None, 1), ("model.width", 1.0, 0.5)]


def test_results_are_returned_only_under_the_same_config(tmp_path):
    config = {"model": {"width": 1.0}, "train": {"num_steps": 3}}
    workdir = str(tmp_path)
    assert artifacts.read_result(config, workdir) is None
    artifacts.write_result(config, workdir, {"mean_iou": 0.5})
    assert artifacts.read_result(config, workdir) == {"mean_iou": 0.5}
    longer = {"model": {"width": 1.0}, "train": {"num_steps": 5}}
    assert artifacts.read_result(longer, workdir, may_differ=("train.num_steps",)) is None  # may go on
    with pytest.raises(artifacts.WorkdirError, match=r"finished with another config \(train.num_steps: 3 -> 5\)"):
        artifacts.read_result(longer, workdir)
    wider = {"model": {"width": 2.0}, "train": {"num_steps": 5}}
    with pytest.raises(artifacts.WorkdirError, match=r"\(model.width: 1.0 -> 2.0\); use a new workdir"):
        artifacts.read_result(wider, workdir, may_differ=("train",))


def test_check_same_config_reads_the_workdirs_config_json(tmp_path):
    artifacts.write_json(str(tmp_path / artifacts.CONFIG_FILE), {"a": 1, "eval": {"pad_size": [64, 64]}})
    artifacts.check_same_config({"a": 1, "eval": {"pad_size": [32, 32]}}, str(tmp_path), may_differ=("eval",))
    with pytest.raises(artifacts.WorkdirError, match=r"was trained with another config \(a: 1 -> 2\)"):
        artifacts.check_same_config({"a": 2, "eval": {"pad_size": [64, 64]}}, str(tmp_path))
    artifacts.check_same_config({"a": 2}, str(tmp_path / "fresh"))  # no config.json: nothing to compare


def test_model_settings_come_from_the_sidecar_or_the_runs_config(tmp_path):
    converted = tmp_path / "converted"
    artifacts.write_json(str(converted / artifacts.WEIGHTS_SIDECAR), {
        "variant": "fcn8s", "num_classes": 3, "width": 0.5, "geometry": "caffe", "normalization": "caffe_bgr",
        "format": "caffe"})
    assert artifacts.model_settings(str(converted), {"geometry": "same", "width": None}) == {
        "variant": "fcn8s", "num_classes": 3, "width": 0.5, "geometry": "same", "normalization": "caffe_bgr",
        "dtype": "float32", "heads": (), "resnet": {}}
    run = tmp_path / "run"
    artifacts.write_json(str(run / artifacts.CONFIG_FILE), {
        "model": {"variant": "fcn32s", "num_classes": 21, "width": 1, "geometry": "same", "dtype": "bfloat16"},
        "data": {"normalization": "imagenet_rgb"}})
    os.makedirs(run / "checkpoints")
    assert artifacts.model_settings(str(run / "checkpoints"))["dtype"] == "bfloat16"  # the workdir above it
    config = artifacts.read_json(str(run / artifacts.CONFIG_FILE))
    config["model"]["heads"] = [["sem", 33], ["geo", 3]]  # as JSON stores a multi-head run's
    artifacts.write_json(str(run / artifacts.CONFIG_FILE), config)
    assert artifacts.model_settings(str(run))["heads"] == (("sem", 33), ("geo", 3))
    with pytest.raises(ValueError, match="holds neither fcn_jax_weights.json nor a training config.json; pass "
                                         "--variant --num_classes --width --geometry --normalization"):
        artifacts.model_settings(str(tmp_path))
    with pytest.raises(ValueError, match="unknown normalization 'bgr'"):
        artifacts.model_settings(str(converted), {"normalization": "bgr"})


def test_a_config_json_edited_into_invalid_json_is_named(tmp_path):
    path = tmp_path / artifacts.CONFIG_FILE
    path.write_text('{"model": {"width": 1.0,}\n')
    with pytest.raises(artifacts.WorkdirError) as error:
        artifacts.check_same_config({"model": {"width": 1.0}}, str(tmp_path))
    assert str(error.value) == (f"{path}: not valid JSON (Expecting property name enclosed in double quotes at line 1, "
                                "column 25); fix or restore it")
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(artifacts.WorkdirError, match=rf"^{path}: not UTF-8 text \(invalid start byte at byte 7\); fix"):
        artifacts.model_settings(str(tmp_path))
