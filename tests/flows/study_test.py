"""Tests for fcn_jax.flows.study and its CLI: a tiny trained run studied end to end; every number checked against a
direct computation (counts, the confusion evaluate finds, label quality, the fold that held each image out)."""
import json
import os

import numpy as np
import pytest

from experiments import folder as folder_experiment
from fcn_jax import study as study_cli
from fcn_jax.core import sample_quality
from fcn_jax.data import class_balance, sources, subsets
from fcn_jax.data import synthetic as data_synthetic
from fcn_jax.flows import study
from fcn_jax.infer import evaluation
from fcn_jax.infer.network import load_network
from fcn_jax.infer.runner import Runner
from fcn_jax.train import job


def tiny_run(root):
    """A 3-step run of the folder recipe on 8 + 3 images (the tiny_folder_run fixture of conftest.py)."""
    manual_dir = data_synthetic.write_synthetic_folder(str(root / "shapes"), num_train=8, num_val=3)
    config = folder_experiment.get_config()
    config.model.width = 1 / 32
    config.data.crop_size = (32, 32)
    config.data.update(manual_dir=manual_dir, data_dir=str(root / "tfds"))
    config.train.update(global_batch_size=8, num_steps=3, log_every=3, eval_every=3, checkpoint_every=3,
                        async_checkpoint=False)
    config.eval.batch_size = 8
    config.optim.update(schedule="constant", warmup_steps=0)
    job.train_and_evaluate(config, str(root / "run"))
    return config, manual_dir


@pytest.fixture(scope="module")
def studied(tiny_folder_run):
    config, root, manual_dir = tiny_folder_run
    options = study.Options(folds=2, fractions=(0.5, 1.0), target=0.9, unlabelled=f"{manual_dir}/images/val",
                            worst=2, progress=False)
    result = study.run(str(root / "run"), str(root / "out"), options)
    return config, root, result


def test_data_counts_equal_a_direct_count(studied):
    config, _, result = studied
    train, evaluation_source = sources.get(config.data.source).load(config.data)
    for split, source in (("train", train), ("val", evaluation_source)):
        (direct,) = class_balance.count_labels((source[i]["label"] for i in range(len(source))), (6,))
        stored = result["splits"][split]
        assert stored["pixels"] == direct.pixels.tolist() and stored["images"] == direct.images.tolist()
        assert stored["num_images"] == len(source)


def test_model_scores_are_evaluates(studied):
    config, root, result = studied
    network = load_network(str(root / "run"))
    _, evaluation_source = sources.get(config.data.source).load(config.data)
    scored = evaluation.evaluate(network, evaluation_source, pad_multiple=32)  # padded as the study pads
    assert result["model"]["confusion"] == scored["confusion"]
    assert result["model"]["mean_iou"] == pytest.approx(scored["mean_iou"], nan_ok=True)
    names = result["classes"]
    for key in ("per_class_precision", "per_class_recall"):
        np.testing.assert_allclose([result["model"][key][n] if result["model"][key][n] is not None else np.nan
                                    for n in names], scored[key], equal_nan=True)


def test_every_training_image_is_ranked_once_by_the_fold_model_that_held_it_out(studied):
    config, root, result = studied
    train, _ = sources.get(config.data.source).load(config.data)
    suspects = result["suspect_labels"]
    qualities = [r["label_quality"] for r in suspects]
    assert qualities == sorted(qualities)
    by_id = {r["id"]: r for r in suspects if r["split"] == "train"}
    assert sorted(by_id) == sorted(train[i]["id"] for i in range(len(train)))
    assert {r["by"] for r in suspects if r["split"] == "val"} == {"the run's model"}
    for fold in range(2):
        for i in subsets.fold_indices(len(train), 2, fold, seed=0):
            assert by_id[train[int(i)]["id"]]["by"] == f"fold_{fold}"
    # one image's label quality recomputed from its fold model's logits
    first = int(subsets.fold_indices(len(train), 2, 1, seed=0)[0])
    network = load_network(str(root / "out" / "folds" / "fold_1"))
    (_, logits), = Runner.of(network, pad_multiple=32).logits(network.params, [(0, train[first]["image"])])
    expected = sample_quality.image_label_quality(sample_quality.softmax(logits), train[first]["label"])
    assert by_id[train[first]["id"]]["label_quality"] == pytest.approx(expected, rel=1e-5)
    with open(root / "out" / "folds" / "fold_1" / "config.json") as f:
        assert json.load(f)["data"]["folds"] == 2


def test_learning_curve_annotate_next_and_report(studied):
    _, root, result = studied
    curve = result["learning_curve"]
    assert curve["images"] == [4, 8]
    assert not (root / "out" / "fractions" / "fraction_1").exists()  # all of the split: the run itself
    with open(root / "run" / "result.json") as f:
        assert curve["mean_iou"][-1] == pytest.approx(json.load(f)["result"]["mean_iou"])
    ranked = [r["uncertainty"] for r in result["annotate_next"]]
    assert len(ranked) == 3 and ranked == sorted(ranked, reverse=True)
    report = (root / "out" / "report.md").read_text()
    for heading in ("## The data", "## The model on `val`", "## Suspect labels", "## Annotate next",
                    "## How many images"):
        assert heading in report
    for name in ("confusion.png", "learning_curve.png", "worst_0.png", "suspect_0.png", "suspect_1.png",
                 "study.json"):
        assert (root / "out" / name).is_file(), name
    assert "![" + result["suspect_labels"][1]["id"] + "](suspect_1.png)" in report


def test_bad_input_is_one_line(studied, tmp_path, capsys):
    config, root, _ = studied
    assert study_cli.main(["--run", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path} holds no config.json: give the workdir of a finished " \
                                      "training run\n"
    assert study_cli.main(["--run", str(root / "run"), "--fractions", "0,1"]) == 1
    assert "--fractions '0,1': give at least two fractions in (0, 1]" in capsys.readouterr().err
    moved = tmp_path / "run"  # the run without its dataset
    os.makedirs(moved)
    for name in os.listdir(root / "run"):
        if name != "study":
            os.symlink(root / "run" / name, moved / name)
    with open(root / "run" / "config.json") as f:
        run_config = json.load(f)
    run_config["data"]["manual_dir"] = str(tmp_path / "gone")
    os.remove(moved / "config.json")
    (moved / "config.json").write_text(json.dumps(run_config))
    assert study_cli.main(["--run", str(moved), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the run's dataset cannot be read (config.data.manual_dir=") and err.count("\n") == 1
