"""train/job.py and train/step.py: optimiser groups, data-parallel equivalence, NaN guard, config errors, exact resume
after kill -9."""
import functools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import demo
from fcn_jax.core import losses, parallel
from fcn_jax.data import synthetic as data_synthetic
from fcn_jax.data import voc_builder
from fcn_jax.models import zoo
from fcn_jax.train import job
from fcn_jax.train import step as step_module
from fcn_jax.weights import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(**train_overrides):
    config = demo.get_config()
    config.model.width = 1 / 32
    config.model.dropout_rate = 0.5  # exercised: dropout masks must not depend on the sharding
    config.data.crop_size = (32, 32)
    config.train.global_batch_size = 8
    config.train.update(train_overrides)
    config.optim.update(schedule="constant", warmup_steps=0)
    return config


def tiny_state(config, seed=0):
    model = zoo.from_settings(config.model)
    shape = (config.train.global_batch_size, *config.data.crop_size, 3)
    create = jax.jit(functools.partial(step_module.create_train_state, config, model, image_shape=shape))
    return create(step_module.init_key(seed))


def random_batch(config, seed=0):
    rs = np.random.RandomState(seed)
    b, (h, w) = config.train.global_batch_size, config.data.crop_size
    label = rs.randint(0, 21, (b, h, w)).astype(np.int32)
    label[:, :3] = 255
    return {"image": rs.randn(b, h, w, 3).astype(np.float32), "label": label}


def test_param_labels_freeze_upsampling_and_split_biases():
    config = tiny_config()
    params = tiny_state(config).params
    labels = step_module.param_labels(params, learnable_upsample=False)
    assert labels["upscore8"]["kernel"] == labels["upscore2"]["kernel"] == "frozen"
    assert labels["score_fr"]["bias"] == labels["backbone"]["conv1_1"]["bias"] == "bias"
    assert labels["score_fr"]["kernel"] == labels["backbone"]["fc6"]["kernel"] == "weight"
    learnable = step_module.param_labels(params, learnable_upsample=True)
    assert learnable["upscore8"]["kernel"] == "weight"


def test_sgd_groups_follow_the_reference_recipe():
    """One SGD step: kernels get -lr*(g + wd*w), biases -2*lr*g (no decay), frozen deconvolutions nothing."""
    config = tiny_config()
    config.optim.update(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.01, bias_lr_mult=2.0,
                        schedule="constant", warmup_steps=0)
    config.model.learnable_upsample = False
    params = {"backbone": {"conv1_1": {"kernel": jnp.ones((1, 1, 1, 2)), "bias": jnp.ones(2)}},
              "upscore8": {"kernel": jnp.ones((2, 2, 1, 1))}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    tx = step_module.create_optimizer(config, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["backbone"]["conv1_1"]["kernel"], -0.1 * (0.5 + 0.01 * 1.0), rtol=1e-6)
    np.testing.assert_allclose(updates["backbone"]["conv1_1"]["bias"], -0.2 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(updates["upscore8"]["kernel"], 0.0)


def test_schedules_and_bad_optimizer():
    config = tiny_config(num_steps=100)
    config.optim.update(learning_rate=1.0, warmup_steps=10, schedule="cosine")
    schedule = step_module.learning_rate_schedule(config.optim, 100)
    assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0) and float(schedule(100)) == pytest.approx(0.0, abs=1e-6)
    config.optim.grad_accum_steps = 4  # the schedule runs over optimiser updates, not micro steps
    assert step_module.num_updates(config) == 25
    config.optim.grad_accum_steps = 1
    config.optim.schedule = "step"
    with pytest.raises(step_module.ConfigError, match="config.optim.schedule='step'"):
        step_module.learning_rate_schedule(config.optim, 100)
    config.optim.update(schedule="constant", optimizer="lion")
    with pytest.raises(step_module.ConfigError, match="config.optim.optimizer='lion'"):
        step_module.create_optimizer(config, {"w": jnp.zeros(1)})


def _step_on(devices, config, state, batch, rng):
    mesh = parallel.create_mesh(devices)
    step = functools.partial(step_module.train_step, loss_reduction=config.loss_reduction, num_classes=21)
    state = parallel.replicate(jax.device_get(state), mesh)
    new_state, metrics = jax.jit(step, out_shardings=parallel.replicated(mesh))(
        state, parallel.host_to_global(batch, mesh), parallel.replicate(rng, mesh))
    return jax.device_get(new_state.params), float(metrics["loss"])


def test_train_step_on_8_devices_equals_1_device():
    assert jax.device_count() == 8
    config = tiny_config()
    config.model.width = 1 / 16
    config.model.learnable_upsample = True
    # SGD: updates proportional to gradients (Adam's first step is ~lr*sign(g), which amplifies float noise)
    config.optim.update(optimizer="sgd", learning_rate=1e-2, momentum=0.9)
    state, batch, rng = tiny_state(config), random_batch(config), jax.random.PRNGKey(3)
    # random (not constant: a constant score_fr makes its backward sum_c (p_c - y_c) = 0) score layers,
    # so that every layer gets a real gradient
    rs = np.random.RandomState(1)
    state = state.replace(params=jax.tree.map(lambda p: p + 0.01 * rs.randn(*p.shape).astype(p.dtype), state.params))
    params_8, loss_8 = _step_on(jax.devices(), config, state, batch, rng)
    params_1, loss_1 = _step_on(jax.devices()[:1], config, state, batch, rng)
    assert loss_8 == pytest.approx(loss_1, rel=1e-5)
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params_1, jax.device_get(state.params))
    # the gradient reached every layer, the first conv included (some ReLUs of a random tiny net may be dead)
    assert all(moved[name]["kernel"] > 0 for name in ("score_fr", "score_pool3", "upscore8"))
    assert all(layer["kernel"] > 0 for layer in moved["backbone"].values())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params_8, params_1)


def test_frozen_upsampling_gets_no_gradient_and_the_same_step():
    """learnable_upsample=False stops the frozen kernels' gradients (never computed), the others' are unchanged, and
    the SGD step is the one with the gradients computed and discarded by the optimiser."""

    config = tiny_config()
    config.model.learnable_upsample = False
    config.optim.update(optimizer="sgd", learning_rate=1e-2, momentum=0.9)
    state, batch = tiny_state(config), random_batch(config)
    rs = np.random.RandomState(2)
    state = state.replace(params=jax.tree.map(lambda p: p + 0.01 * rs.randn(*p.shape).astype(p.dtype), state.params))

    def loss(params, learnable):
        logits = state.apply_fn({"params": step_module.without_frozen_gradients(params, learnable)}, batch["image"])
        return losses.pixel_cross_entropy(logits, batch["label"], reduction="sum")[0]

    grad = jax.jit(jax.grad(loss), static_argnums=1)  # compiled: op-by-op the FCN's backward pass is slower
    frozen, full = (grad(state.params, learnable) for learnable in (False, True))
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        assert float(jnp.abs(full[name]["kernel"]).max()) > 0
        np.testing.assert_array_equal(frozen[name]["kernel"], 0.0)
    np.testing.assert_array_equal(frozen["score_fr"]["kernel"], full["score_fr"]["kernel"])
    steps = [jax.jit(functools.partial(step_module.train_step, loss_reduction="sum", num_classes=21,
                                       learnable_upsample=learnable))(state, batch, jax.random.PRNGKey(0))[0]
             for learnable in (False, True)]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(steps[0].params), jax.device_get(steps[1].params))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, None])
def test_all_finite(bad):
    tree = {"a": np.ones((3, 2), np.float32), "b": [np.full(4, 1e38, np.float32)]}  # 1e38 * 0 stays finite
    if bad is not None:
        tree["b"][0][2] = bad
    assert bool(step_module.all_finite(jax.tree.map(jnp.asarray, tree))) == (bad is None)  # as under jit


def test_non_finite_step_leaves_state_unchanged():
    config = tiny_config()
    state, batch = tiny_state(config), random_batch(config)
    batch["image"][0, 0, 0, 0] = np.nan
    step = jax.jit(functools.partial(step_module.train_step, loss_reduction="mean", num_classes=21))
    new_state, metrics = step(state, batch, jax.random.PRNGKey(0))
    assert not bool(metrics["finite"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(new_state.params), jax.device_get(state.params))
    assert int(new_state.step) == int(state.step)


# ----------------------------------------------------------------------------- whole runs on a tiny synthetic dataset


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    """A tiny synthetic VOC tree + its prepared tfds dataset, shared by the run tests."""

    root = tmp_path_factory.mktemp("data")
    manual_dir = data_synthetic.write_synthetic_voc(str(root / "voc"), num_train=16, num_val=8, seed=0)
    voc_builder.prepare(str(root / "tfds"), manual_dir)
    return manual_dir, str(root / "tfds")


def run_config(data_dirs, **train_overrides):
    config = tiny_config(log_every=1, eval_every=1000, checkpoint_every=1000, async_checkpoint=False)
    config.train.update(train_overrides)
    config.data.manual_dir, config.data.data_dir = data_dirs
    config.data.synthetic_train, config.data.synthetic_val = 16, 8
    config.eval.pad_size = (192, 192)
    return config


def test_nan_loss_stops_with_message_and_restorable_checkpoint(data_dirs, tmp_path):
    config = run_config(data_dirs, num_steps=10, checkpoint_every=1)
    config.optim.update(optimizer="sgd", learning_rate=1e30, momentum=0.0)
    config.loss_reduction = "sum"
    with pytest.raises(FloatingPointError,
                       match=r"non-finite loss or gradient at step (\d+) .*last good checkpoint is step") as info:
        job.train_and_evaluate(config, str(tmp_path))
    bad_step = int(info.value.args[0].split("at step ")[1].split()[0])
    manager = checkpoints.create_manager(str(tmp_path / "checkpoints"), async_save=False)
    assert manager.latest_step() == bad_step - 1
    params = checkpoints.load_params(str(tmp_path))
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert all(np.isfinite(line["loss"]) for line in lines)


def test_logged_learning_rate_is_the_schedule_at_each_update(data_dirs, tmp_path):
    config = run_config(data_dirs, num_steps=6)
    config.optim.update(schedule="cosine", warmup_steps=2, grad_accum_steps=2)  # 3 updates: 0, lr/2, lr
    job.train_and_evaluate(config, str(tmp_path))
    logged = [(r["step"], r["learning_rate"]) for r in map(json.loads, open(tmp_path / "metrics.jsonl"))
              if r["split"] == "train"]
    lr = config.optim.learning_rate
    assert logged == [(1, 0.0), (2, 0.0), (3, pytest.approx(lr / 2)), (4, pytest.approx(lr / 2)),
                      (5, pytest.approx(lr)), (6, pytest.approx(lr))]


@pytest.mark.parametrize("override, message", [
    ({"train.global_batch_size": 6}, "not divisible by the 8 devices"),
    ({"model.variant": "fcn4s"}, "config.model.variant='fcn4s'"),
    ({"data.source": "voc", "data.manual_dir": "/nonexistent/voc"}, "does not exist"),
    ({"data.source": "voc", "data.manual_dir": ""}, "config.data.manual_dir is empty"),
    ({"model.dtype": "float16"}, "config.model.dtype='float16'"),
    ({"data.train_split": "voc_tran"}, "config.data.train_split='voc_tran': expected one of voc_train, "),
    ({"optim.learning_rate": -1e-3}, r"config.optim.learning_rate=-0.001 must not be negative"),
    ({"optim.momentum": 1.0}, r"config.optim.momentum=1.0 must be in \[0, 1\)"),
    ({"model.num_classes": 256}, "config.model.num_classes=256 must be in 1..255"),
    ({"eval.pad_size": (32,)}, r"config.eval.pad_size=\(32,\) must be \(height, width\), both positive, or \(\)"),
    ({"eval.pad_size": (64, 64)}, r"config.eval.pad_size=\(64, 64\) is smaller than voc_val image 20\d\d_s\d+ "
                                  r"\(\d+x\d+\); raise it"),  # found before training, not at the first evaluation
])
def test_bad_config_fails_with_one_clear_line(data_dirs, tmp_path, override, message):
    config = run_config(data_dirs)
    for key, value in override.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(step_module.ConfigError, match=message) as info:
        job.train_and_evaluate(config, str(tmp_path))
    assert "\n" not in str(info.value)


def test_a_workdir_that_is_a_file_is_one_line(data_dirs, tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(step_module.ConfigError, match=r"^--workdir .*run is a file, not a folder$"):
        job.train_and_evaluate(run_config(data_dirs), str(tmp_path / "run"))


def test_labels_beyond_num_classes_name_the_example_instead_of_a_nan_loss(data_dirs, tmp_path):
    config = run_config(data_dirs, num_steps=2)
    config.model.num_classes = 3  # the synthetic labels go up to 15
    with pytest.raises(ValueError, match=r"^example '20\d\d_s\d+': label values \[.*\] outside 0..2 and 255$"):
        job.train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints" / "1")


def test_init_from_shape_mismatch_is_one_clear_error(data_dirs, tmp_path):
    source = run_config(data_dirs, num_steps=1)
    source.model.num_classes = 25  # a superset of the synthetic classes, so stage 1 trains fine
    job.train_and_evaluate(source, str(tmp_path / "stage1"))
    config = run_config(data_dirs, num_steps=1)
    config.init_from = str(tmp_path / "stage1")
    with pytest.raises(ValueError, match="shape mismatch: .*score_fr") as info:
        job.train_and_evaluate(config, str(tmp_path / "stage2"))
    assert "\n" not in str(info.value)


def test_unknown_config_key_via_cli(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fcn_jax.main", "--config", "experiments/demo.py", "--workdir", str(tmp_path),
         "--config.train.num_stepz=3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "num_stepz" in result.stderr


# ----------------------------------------------------------------------------- kill -9 and resume


def _cli(workdir, data_dirs, num_steps, checkpoint_every):
    manual_dir, data_dir = data_dirs
    # Without TensorFlow, as on GPU images: the data_dirs fixture prepared the dataset.
    return [sys.executable, "-m", "tests.no_tensorflow", "fcn_jax.main", "--config", "experiments/demo.py",
            f"--workdir={workdir}", "--config.model.width=0.03125", "--config.data.crop_size=(32, 32)",
            "--config.train.log_every=1",
            f"--config.train.num_steps={num_steps}", f"--config.train.checkpoint_every={checkpoint_every}",
            "--config.train.eval_every=100000", f"--config.data.manual_dir={manual_dir}",
            f"--config.data.data_dir={data_dir}", "--config.data.synthetic_train=16", "--config.data.synthetic_val=8",
            "--config.eval.pad_size=(192, 192)", "--config.optim.schedule=constant", "--config.optim.warmup_steps=0"]


def _env():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = REPO
    return env


def test_kill_9_then_resume_equals_uninterrupted_run_without_tensorflow(data_dirs, tmp_path):
    n = 6
    reference = tmp_path / "reference"
    subprocess.run(_cli(reference, data_dirs, 2 * n, 2 * n), cwd=REPO, env=_env(), check=True, timeout=300,
                   capture_output=True)

    killed = tmp_path / "killed"
    # A long run that checkpoints every n steps; SIGKILL it once step n is committed, long before step 2n.
    process = subprocess.Popen(_cli(killed, data_dirs, 10_000, n), cwd=REPO, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (killed / "checkpoints" / str(n) / "_CHECKPOINT_METADATA").exists():
            assert process.poll() is None and time.time() < deadline, "the run to be killed ended or hung"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert 2 * n not in checkpoints.create_manager(str(killed / "checkpoints"), async_save=False).all_steps()

    resumed = subprocess.run(_cli(killed, data_dirs, 2 * n, n), cwd=REPO, env=_env(), timeout=300,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed} at step {n}" in resumed.stderr

    expected, actual = checkpoints.load_params(str(reference)), checkpoints.load_params(str(killed))
    jax.tree.map(np.testing.assert_array_equal, actual, expected)  # bit for bit
    losses = lambda d: [r["loss"] for r in map(json.loads, open(d / "metrics.jsonl")) if r["split"] == "train"]  # noqa: E731
    assert losses(killed) == losses(reference)  # metrics.jsonl was rewound to step n, then continued


# ----------------------------------------------------------------------------- SIGTERM, the workdir lock


def _wait_for_train_step(workdir, process, at_least):
    """The last logged train step once it reaches `at_least` (the run to be signalled must still be running)."""
    deadline = time.time() + 300
    while True:
        assert process.poll() is None and time.time() < deadline, "the run to be signalled ended or hung"
        path = workdir / "metrics.jsonl"
        steps = [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []
        if steps and steps[-1] >= at_least:
            return steps[-1]
        time.sleep(0.05)


def test_sigterm_saves_the_step_in_flight_exits_75_and_resumes_exactly(data_dirs, tmp_path):
    stopped = tmp_path / "stopped"
    # No checkpoint before step 10000: whatever the signal saves is the step in flight.
    process = subprocess.Popen(_cli(stopped, data_dirs, 10_000, 10_000), cwd=REPO, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_train_step(stopped, process, 2)
        second = subprocess.run(_cli(stopped, data_dirs, 10_000, 10_000), cwd=REPO, env=_env(), timeout=300,
                                capture_output=True, text=True)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: {stopped} is being trained by pid {process.pid} on {os.uname().nodename}; wait for it to end "
            "(or stop it), or use another --workdir")
        assert process.poll() is None  # the first run is unharmed
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 75, stderr[-3000:]
    saved = checkpoints.checkpoint_steps(str(stopped / "checkpoints"))
    assert len(saved) == 1 and saved[0] >= 2
    k = saved[0]
    assert stderr.strip().splitlines()[-1] == (
        f"fcn_jax: preempted by SIGTERM: checkpoint of step {k} saved in {stopped}; run the same command to resume "
        "(exit code 75)")
    train_steps = lambda d: [r["step"] for r in map(json.loads, open(d / "metrics.jsonl")) if r["split"] == "train"]  # noqa: E731
    assert train_steps(stopped)[-1] == k  # the rows are flushed up to the saved step

    resumed = subprocess.run(_cli(stopped, data_dirs, k + 2, 10_000), cwd=REPO, env=_env(), timeout=300,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {stopped} at step {k}" in resumed.stderr
    reference = tmp_path / "reference"
    subprocess.run(_cli(reference, data_dirs, k + 2, 10_000), cwd=REPO, env=_env(), check=True, timeout=300,
                   capture_output=True)
    jax.tree.map(np.testing.assert_array_equal, checkpoints.load_params(str(stopped)),
                 checkpoints.load_params(str(reference)))  # bit for bit
    losses = lambda d: [r["loss"] for r in map(json.loads, open(d / "metrics.jsonl")) if r["split"] == "train"]  # noqa: E731
    assert train_steps(stopped) == list(range(1, k + 3)) and losses(stopped) == losses(reference)


@pytest.mark.parametrize("optimizer, accum, clip", [("sgd", 1, 0.0), ("adam", 2, 1.0), ("adamw", 1, 0.0)])
def test_a_checkpoint_of_the_same_fcn_shows_no_model_difference(tmp_path, optimizer, accum, clip):
    """A damaged checkpoint is told from another model's by its stored array paths and shapes: for every optimiser
    state the FCN's training builds (multi_transform groups, chains, MultiSteps) they must read back as the live
    state's, or damage would be reported as a model mismatch; another width must show."""
    config = tiny_config()
    config.optim.update(optimizer=optimizer, grad_accum_steps=accum, grad_clip_norm=clip)
    state = tiny_state(config)
    manager = checkpoints.create_manager(str(tmp_path), async_save=False)
    checkpoints.save(manager, 1, state, jax.random.PRNGKey(0), {"step": 1})
    stored = checkpoints._stored_shapes(manager, 1)
    assert checkpoints.tree_differences(stored, checkpoints._shapes(state)) == ""
    config.model.width = 1 / 16
    assert "in the checkpoint" in checkpoints.tree_differences(stored, checkpoints._shapes(tiny_state(config)))
    manager.close()


def test_counted_class_weights_count_the_train_split_and_name_the_classes(caplog):
    from fcn_jax.data import class_balance, dataset_info

    config = demo.get_config()
    info = (("", dataset_info.from_json({"classes": ["background", "thing"]})),)
    labels = [np.array([[0, 0, 0, 1]], np.uint8), np.array([[0, 0, 255, 0]], np.uint8)]
    source = [{"label": y} for y in labels]
    assert job.counted_class_weights(config, source, info) is None  # "none"
    config.loss.class_weights = "inverse_sqrt"
    with caplog.at_level("INFO"):
        weights = job.counted_class_weights(config, source, info)
    assert weights == class_balance.class_weights("inverse_sqrt", class_balance.count_labels(labels, (2,)))
    assert weights[0][1] > weights[0][0]  # 6 background pixels, 1 thing: 1/sqrt(6/7), 1/sqrt(1/7), scaled
    assert "class weights (inverse_sqrt, voc_train): background 0.828, thing 2.03" in caplog.text
