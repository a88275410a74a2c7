"""flows/ablation.py (python -m fcn_jax.ablate): a sweep that crashes half-way resumes only its unfinished variant (from
its checkpoint), writes the paper-style table (numbers from each run's result) and a plot, and never retrains a
finished variant."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from experiments import ablate_skips
from fcn_jax import ablate
from fcn_jax.data import synthetic as data_synthetic
from fcn_jax.data import voc_builder
from fcn_jax.flows import ablation
from fcn_jax.train import config_checks, job, validation
from fcn_jax.weights import artifacts, checkpoints, workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SWEEP = """
from experiments import demo


def get_sweep(num_steps=2):
    config = demo.get_config()
    config.model.width = 1 / 32
    config.data.crop_size = (32, 32)
    config.data.manual_dir, config.data.data_dir = {manual_dir!r}, {data_dir!r}
    config.data.synthetic_train, config.data.synthetic_val = 16, 8
    config.eval.pad_size = (192, 192)
    config.optim.update(schedule="constant", warmup_steps=0)
    config.train.update(num_steps=num_steps, log_every=1, eval_every=1000, checkpoint_every=1000,
                        async_checkpoint=False)
    return config, [("fcn32s", {{"model.variant": "fcn32s"}}), ("fcn8s", {{"train.checkpoint_every": 1}})]
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2-variant sweep whose second variant crashes in its final evaluation, then is run again to the end.

    The second run goes through --processes, with each "subprocess" run in this process (so calls are counted).
    """

    root = tmp_path_factory.mktemp("sweep")
    manual_dir = data_synthetic.write_synthetic_voc(str(root / "voc"), num_train=16, num_val=8, seed=0)
    voc_builder.prepare(str(root / "tfds"), manual_dir)
    sweep_file = root / "tiny_sweep.py"
    sweep_file.write_text(SWEEP.format(manual_dir=manual_dir, data_dir=str(root / "tfds")))
    workdir = str(root / "runs")
    real_train, real_validate = job.train_and_evaluate, validation.validate
    calls = []

    def counting_train(config, variant_workdir):
        calls.append(os.path.basename(variant_workdir))
        return real_train(config, variant_workdir)

    def crashing_validate(params, step, *, workdir, **kwargs):
        if os.path.basename(workdir) == "fcn8s" and step == 2:
            raise RuntimeError("simulated crash in fcn8s at step 2")
        return real_validate(params, step, workdir=workdir, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(job, "train_and_evaluate", counting_train)
        patch.setattr(validation, "validate", crashing_validate)
        with pytest.raises(RuntimeError, match="simulated crash"):
            ablation.run(str(sweep_file), workdir)
    first_calls, calls[:] = list(calls), []
    with open(os.path.join(workdir, "fcn8s", "metrics.jsonl")) as f:
        crashed_metrics = f.read()
    crashed_steps = sorted(os.listdir(os.path.join(workdir, "fcn8s", "checkpoints")))

    def in_process_child(command):
        assert command[1:3] == ["-m", "fcn_jax.ablate"]
        return ablate.main(command[3:])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(job, "train_and_evaluate", counting_train)
        patch.setattr(ablation, "run_child", in_process_child)
        results = ablation.run(str(sweep_file), workdir, processes=True)
    return {"file": str(sweep_file), "workdir": workdir, "first_calls": first_calls, "resume_calls": list(calls),
            "crashed_metrics": crashed_metrics, "crashed_steps": crashed_steps, "results": results}


def final_eval(workdir, name, num_steps=2):
    lines = artifacts.read_metrics(os.path.join(workdir, name))
    return [r for r in lines if r["split"] == "voc_val" and r["step"] == num_steps][-1]


def test_half_finished_sweep_resumes_only_the_unfinished_variant_from_its_checkpoint(sweep):
    assert sweep["first_calls"] == ["fcn32s", "fcn8s"]
    assert sweep["crashed_steps"] == ["1", "2"]  # fcn8s died in its step-2 evaluation, its step-2 checkpoint kept
    assert sweep["resume_calls"] == ["fcn8s"]  # fcn32s had finished: not trained again
    workdir = sweep["workdir"]
    with open(os.path.join(workdir, "fcn8s", "metrics.jsonl")) as f:
        resumed = f.read()
    # Resumed at step 1, not retrained from scratch: the step-1 line (with its measured images/s) is kept byte
    # for byte, and step 2 follows it once.
    step1 = sweep["crashed_metrics"].splitlines()[0]
    assert json.loads(step1)["step"] == 1 and resumed.startswith(step1 + "\n")
    assert [(r["step"], r["split"]) for r in map(json.loads, resumed.splitlines())] == [
        (1, "train"), (2, "train"), (2, "voc_val")]
    for name in ("fcn32s", "fcn8s"):
        with open(os.path.join(workdir, name, artifacts.RESULT_FILE)) as f:
            assert json.load(f)["result"]["mean_iou"] == final_eval(workdir, name)["mean_iou"]


def test_results_table_and_plot_hold_every_variant(sweep):
    workdir = sweep["workdir"]
    with open(os.path.join(workdir, "results.md")) as f:
        lines = f.readlines()
    assert f"Made by `python -m fcn_jax.ablate --sweep {sweep['file']} --workdir {workdir}`.\n" in lines
    table = [line for line in lines if line.startswith("| fcn")]
    assert [row.split(" | ")[0] for row in table] == ["| fcn32s", "| fcn8s"]
    params = {"fcn32s": 1_940_587, "fcn8s": 261_805}  # width 1/32, as train_and_evaluate logs them
    for row, result in zip(table, sweep["results"]):
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        name = cells[0]
        expected = final_eval(workdir, name)
        assert cells[3:11] == [f"{100 * expected[k]:.2f}" for k in (
            "pixel_acc", "mean_acc", "mean_iou", "fw_iou", "per_image_mean_iou", "mean_precision", "mean_recall",
            "mean_f1")]
        assert cells[11] == f"{params[name]:,}" and result["params"] == params[name]
        speeds = [r["images_per_s"] for r in artifacts.read_metrics(os.path.join(workdir, name))
                  if r["split"] == "train"]
        assert float(cells[12]) == pytest.approx(np.median(speeds), abs=0.05)
    assert cells[1] == "train.checkpoint_every=1" and cells[2] == "2"
    start = lines.index("## IU per class (%)\n")
    class_rows = lines[start + 4:lines.index("## precision per class (%)\n")]  # then precision, recall, F1
    by_class = {row.split(" | ")[0][2:]: row for row in class_rows if row.startswith("| ")}
    assert list(by_class)[:3] == ["background", "triangle", "unused (bicycle)"]  # the synthetic data's names
    for column, name in enumerate(("fcn32s", "fcn8s"), start=1):
        value = final_eval(workdir, name)["per_class_iou"]["triangle"]
        cell = by_class["triangle"].strip().strip("|").split("|")[column].strip()
        assert cell == ("n/a" if value is None or value != value else f"{100 * value:.1f}")
    with Image.open(os.path.join(workdir, "results.png")) as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 200
        assert np.asarray(image.convert("L")).std() > 10  # drawn, not blank


def test_rerun_trains_nothing_and_rewrites_the_same_table(sweep, monkeypatch):
    with open(os.path.join(sweep["workdir"], "results.md")) as f:
        before = f.read()

    def fail(*args):
        raise AssertionError("a finished variant was trained again")

    monkeypatch.setattr(job, "train_and_evaluate", fail)
    results = ablation.run(sweep["file"], sweep["workdir"])
    assert results == sweep["results"]
    with open(os.path.join(sweep["workdir"], "results.md")) as f:
        assert f.read() == before


def test_a_changed_config_is_an_error_not_a_silent_mix(sweep):
    with pytest.raises(ablation.SweepError, match=r"fcn32s finished with another config \(train.num_steps: 2 -> 3"):
        ablation.run(sweep["file"], sweep["workdir"], steps=3)


def test_default_sweep_covers_the_paper_ablations(tmp_path):
    base, overrides = ablation.load_sweep("experiments/ablate_skips.py", num_steps=50)
    variants = ablation.build_variants(base, overrides, str(tmp_path))
    by_name = {name: config for name, _, config in variants}
    assert list(by_name) == ["fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce", "fcn16s_staged", "fcn8s_staged",
                             "fcn8s_learned_upsample", "fcn8s_caffe_geometry", "fcn8s_sum_loss"]
    for config in by_name.values():
        config_checks.validate_config(config)
        assert config.train.num_steps == 50 and config.train.eval_every == 10
        assert config.data.source == "synthetic"  # runs anywhere, no download
    assert by_name["fcn8s_staged"].init_from == str(tmp_path / "fcn16s_staged")
    assert by_name["fcn8s_learned_upsample"].model.learnable_upsample
    assert by_name["fcn8s_caffe_geometry"].model.geometry == "caffe"
    assert by_name["fcn8s_sum_loss"].loss_reduction == "sum"
    assert ablation.total_steps(variants, str(tmp_path))["fcn8s_staged"] == 150
    assert ablation.load_sweep("experiments/ablate_skips.py")[0].train.num_steps == ablate_skips.NUM_STEPS


def test_the_backbone_sweep_sets_each_variants_backbone(tmp_path):
    base, overrides = ablation.load_sweep("experiments/ablate_backbones.py", num_steps=50)
    by_name = {name: config for name, _, config in ablation.build_variants(base, overrides, str(tmp_path))}
    for config in by_name.values():
        config_checks.validate_config(config)
    assert by_name["vgg16_fcn8s"].model.variant == "fcn8s" and by_name["vgg16_fcn8s"].aux_loss_weight == 0
    resnets = [by_name[n] for n in ("resnet_os8", "resnet_os16", "resnet_os8_frozen_bn")]
    assert all(c.model.variant == "fcn_resnet50" and c.model.resnet.layers == (1, 1, 1, 1) for c in resnets)
    assert [c.model.resnet.output_stride for c in resnets] == [8, 16, 8]
    assert [c.model.resnet.batch_norm for c in resnets] == ["sync", "sync", "frozen"]


@pytest.mark.parametrize("overrides, message", [
    ([("a", {"model.varient": "fcn32s"})], "variant 'a': unknown config key 'model.varient'"),
    ([("a", {"init_from": "@b"}), ("b", {})], "variant 'a': init_from '@b' names no earlier variant"),
    ([("a", {}), ("a", {})], "variant name 'a' appears twice"),
    ([("a/b", {})], "variant name 'a/b' must be"),
])
def test_bad_sweeps_fail_with_one_line(overrides, message, tmp_path):
    with pytest.raises(ablation.SweepError, match=message) as info:
        ablation.build_variants(ablate_skips.get_config(), overrides, str(tmp_path))
    assert "\n" not in str(info.value)


def test_set_points_a_sweep_at_another_dataset(sweep, tmp_path):
    """--set overrides the sweep's base for every variant: here the folder example instead of the VOC data."""

    root = data_synthetic.write_synthetic_folder(str(tmp_path / "shapes"), num_train=8, num_val=2)
    settings = ["data.source=folder", f"data.manual_dir={root}", f"data.data_dir={tmp_path / 'tfds'}",
                "data.train_split=train", "data.eval_split=val", "model.num_classes=0", "eval.pad_size=()"]
    ablation.run(sweep["file"], str(tmp_path / "runs"), only="fcn32s", settings=settings)
    stored = artifacts.read_json(tmp_path / "runs" / "fcn32s" / "config.json")
    assert stored["data"]["source"] == "folder" and stored["model"]["num_classes"] == 6
    assert stored["model"]["variant"] == "fcn32s" and stored["eval"]["pad_size"] == []
    evaluation = [r for r in artifacts.read_metrics(str(tmp_path / "runs" / "fcn32s")) if r["split"] == "val"][-1]
    assert list(evaluation["per_class_iou"])[1:3] == ["triangle", "rectangle"]
    calls = []
    with pytest.MonkeyPatch.context() as patch:  # a rerun finds the variant finished (num_classes 0 resolved to 6)
        patch.setattr(job, "train_and_evaluate", lambda *args: calls.append(args))
        ablation.run(sweep["file"], str(tmp_path / "runs"), only="fcn32s", settings=settings)
    assert calls == []
    with pytest.raises(ablation.SweepError, match=r"variant '--set': train.num_steps=1000.0: "):
        ablation.run(sweep["file"], str(tmp_path / "runs"), only="fcn32s", settings=["train.num_steps=1e3"])
    with pytest.raises(ablation.SweepError, match=r"--set 'data.source': expected key=value"):
        ablation.run(sweep["file"], str(tmp_path / "runs"), only="fcn32s", settings=["data.source"])
    with pytest.raises(ablation.SweepError, match=r"variant '--set': unknown config key 'data.sorce'"):
        ablation.run(sweep["file"], str(tmp_path / "runs"), only="fcn32s", settings=["data.sorce=folder"])


def test_sigterm_to_a_sweep_with_processes_stops_its_variant_with_a_checkpoint_and_a_rerun_resumes_it(sweep, tmp_path):
    """The parent signalled alone (as a scheduler stopping the job script would): its child variant saves and stops
    too, instead of training on as an orphan beside the rerun."""
    sweep_file = tmp_path / "long_sweep.py"
    source = open(sweep["file"]).read()  # the same variants, fcn32s short, fcn8s as long as --steps
    short = source.replace('[("fcn32s", {"model.variant": "fcn32s"}), ("fcn8s", {"train.checkpoint_every": 1})]',
                           '[("fcn32s", {"model.variant": "fcn32s", "train.num_steps": 2}), ("fcn8s", {})]')
    assert short != source
    sweep_file.write_text(short)
    workdir = tmp_path / "runs"
    command = [sys.executable, "-m", "fcn_jax.ablate", "--sweep", str(sweep_file), "--workdir", str(workdir),
               "--processes"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    command += ["--steps", "200"]  # fcn8s: long enough to be signalled mid-run, short to finish on the rerun
    parent = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = workdir / "fcn8s" / "metrics.jsonl"
    try:
        deadline = time.time() + 300
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert parent.poll() is None and time.time() < deadline, "the sweep ended or hung"
            time.sleep(0.1)
        os.kill(parent.pid, signal.SIGTERM)
        _, stderr = parent.communicate(timeout=120)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    assert parent.returncode == 75, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (
        "ablate: variant fcn8s stopped by a signal, its checkpoint and the finished variants kept; run the same "
        "command to resume (exit code 75)")
    with workdir_lock.hold(str(workdir / "fcn8s")):  # no orphan left training it
        pass
    k = checkpoints.checkpoint_steps(str(workdir / "fcn8s" / "checkpoints"))[-1]
    finished = (workdir / "fcn32s" / artifacts.RESULT_FILE).read_text()

    assert ablate.main(command[3:]) == 0  # the same command (its children run in processes): resumes fcn8s at k
    assert (workdir / "fcn32s" / artifacts.RESULT_FILE).read_text() == finished  # not trained again
    rows = [(r["step"], r["split"]) for r in artifacts.read_metrics(str(workdir / "fcn8s"))]
    assert 2 <= k < 200
    assert [s for s, split in rows if split == "train"] == list(range(1, 201))  # each step once, in order
    assert [s for s, split in rows if split == "voc_val"] == [200]
