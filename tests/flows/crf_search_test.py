"""Tests for fcn_jax.flows.crf_search and its CLI, and the CRF inference mode through evaluate: the grid on a tiny
trained run scored against direct computations, the best settings stored and used by --crf."""
import dataclasses
import json

import pytest

from fcn_jax import crf_search as crf_search_cli
from fcn_jax import evaluate as evaluate_cli
from fcn_jax.data import subsets
from fcn_jax.flows import crf_search, study
from fcn_jax.infer import dense_crf, modes
from fcn_jax.infer.network import load_network
from fcn_jax.infer.runner import Runner
from fcn_jax.models import crf

GRID = "bilateral_weight=0,5;bilateral_srgb=10"


@pytest.fixture(scope="module")
def searched(tiny_folder_run):
    config, root, _ = tiny_folder_run
    options = crf_search.Options(grid=GRID, base=crf.CRFSettings(iterations=2), pad_multiple=1, progress=False)
    return config, root, crf_search.search(str(root / "run"), options)


def test_grid_rows_and_held_out_scores_are_direct_mean_ious(searched):
    _, root, result = searched
    network = load_network(str(root / "run"))
    _, _, evaluation = study.load_data(study.run_config(str(root / "run")))
    order = subsets.permutation(len(evaluation), 0)
    tune = [evaluation[int(i)] for i in order[:result["tune_images"]]]
    held_out = [evaluation[int(i)] for i in order[result["tune_images"]:]]
    assert len(held_out) == result["held_out_images"] >= 1

    def mean_iou(examples, settings):
        runner = Runner.of(network, mode=modes.Mode(crf=settings))
        return runner.scores(network.params, [(e["image"], e["label"]) for e in examples]).result()["mean_iou"]

    for row in result["tune"]["grid"]:
        assert row["mean_iou"] == pytest.approx(mean_iou(tune, crf.CRFSettings.from_mapping(row["settings"])),
                                                abs=1e-6)
    assert [row["settings"]["bilateral_weight"] for row in result["tune"]["grid"]] == [0.0, 5.0]
    best = crf.CRFSettings.from_mapping(result["best"])
    assert result["held_out"]["best"] == pytest.approx(mean_iou(held_out, best), abs=1e-6)
    assert max(r["mean_iou"] for r in result["tune"]["grid"]) == pytest.approx(
        mean_iou(tune, best), abs=1e-6)
    assert dense_crf.stored_settings(str(root / "run")) == best


def test_evaluate_with_the_stored_crf_and_flags_on_top(searched, tmp_path, capsys):
    _, root, result = searched
    output = tmp_path / "metrics.json"
    assert evaluate_cli.main(["--weights", str(root / "run"), "--split", "val", "--layout", "folder",
                              "--manual_dir", str(root / "shapes"), "--data_dir", str(root / "tfds"),
                              "--crf", "iterations=3",
                              "--output", str(output)]) == 0
    scored = json.loads(output.read_text())
    assert scored["mode"]["crf"] == dataclasses.asdict(dataclasses.replace(
        crf.CRFSettings.from_mapping(result["best"]), iterations=3))


def test_bad_input_is_one_line(searched, tmp_path, capsys):
    _, root, _ = searched
    run = str(root / "run")
    for argv, message in (
            (["--run", run, "--grid", "bilateral_srgb=-1"], "error: CRF bilateral_srgb must be > 0, got -1.0\n"),
            (["--run", run, "--grid", "srgb=3"], "error: unknown CRF parameter(s) srgb; expected iterations, "),
            (["--run", run, "--grid", "bilateral_weight"], "error: grid axis 'bilateral_weight' is not name=v1,v2,"),
            (["--run", run, "--base", "iterations=0"], "error: CRF iterations must be a whole number >= 1, got 0"),
            (["--run", str(tmp_path)], f"error: {tmp_path} holds no config.json")):
        assert crf_search_cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    assert evaluate_cli.main(["--weights", run, "--split", "val", "--layout", "folder", "--manual_dir",
                              str(root / "shapes"), "--data_dir", str(root / "tfds"), "--crf", "bilateral_sxy=0"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
