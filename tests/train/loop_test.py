"""train/loop.py on a toy job (a linear model): finished workdirs are returned, other configs refused, a failing
evaluation keeps its step's checkpoint, and a finished run can be extended to more steps."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from fcn_jax.core import parallel
from fcn_jax.train import loop
from fcn_jax.weights import artifacts, checkpoints

BATCH = 8


def toy_job(evaluate=None, calls=None, spike_at=None):
    mesh = parallel.create_mesh()
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    state = jax.device_put(train_state.TrainState.create(
        apply_fn=None, params={"w": jnp.zeros((3,))}, tx=optax.sgd(0.1)), replicated)

    def step_fn(state, batch, rng):
        def loss_fn(params):
            return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss, "finite": jnp.isfinite(loss)}

    def batches(start_step):
        for step in range(start_step + 1, 1000):
            rng = np.random.default_rng(step)  # a pure function of the step: resumable
            x = rng.normal(size=(BATCH, 3)).astype(np.float32)
            y = x @ np.array([1.0, -2.0, 0.5], np.float32)
            yield {"x": x, "y": y * 1e4 if step == spike_at else y}

    def default_evaluate(params, step):
        if calls is not None:
            calls.append(step)
        return {"error": float(np.abs(np.asarray(params["w"]) - [1.0, -2.0, 0.5]).sum())}

    return loop.Job(state=state, rng=jax.device_put(jax.random.PRNGKey(0), replicated), step_fn=step_fn,
                    abstract_batch={"x": jax.ShapeDtypeStruct((BATCH, 3), jnp.float32, sharding=sharded),
                                    "y": jax.ShapeDtypeStruct((BATCH,), jnp.float32, sharding=sharded)},
                    batches=batches, batch_size=BATCH, mesh=mesh, log_keys=("loss",),
                    evaluate=evaluate or default_evaluate, eval_split="val")


def cadence(num_steps=6):
    return loop.Cadence(num_steps=num_steps, log_every=2, checkpoint_every=3, eval_every=3, async_checkpoint=False)


def config(num_steps=6, lr=0.1):
    return {"lr": lr, "train": {"num_steps": num_steps}}


def run(config, workdir, cadence, make_job, resumable_keys=("train.num_steps",)):
    """loop.run with the toy config's step count resumable, as train.job makes the FCN's cadence keys."""
    return loop.run(config, workdir, cadence, make_job, resumable_keys=resumable_keys)


def test_only_the_keys_the_caller_names_may_change_on_resume(tmp_path):
    run(config(num_steps=3), str(tmp_path), cadence(3), toy_job)
    with pytest.raises(artifacts.WorkdirError, match=r"finished with another config \(train.num_steps: 3 -> 6"):
        run(config(num_steps=6), str(tmp_path), cadence(6), toy_job, resumable_keys=())
    with pytest.raises(artifacts.WorkdirError, match=r"finished with another config \(lr: 0.1 -> 0.2"):
        run(config(num_steps=6, lr=0.2), str(tmp_path), cadence(6), toy_job)


def test_a_run_trains_writes_its_result_and_a_rerun_builds_nothing(tmp_path):
    workdir = str(tmp_path)
    result = run(config(), workdir, cadence(), toy_job)
    assert result["steps"] == 6 and result["params"] == 3 and result["error"] < 2.0
    rows = artifacts.read_metrics(workdir)
    assert [(r["step"], r["split"]) for r in rows] == [(2, "train"), (3, "val"), (4, "train"), (6, "train"),
                                                       (6, "val")]
    assert checkpoints.checkpoint_steps(os.path.join(workdir, "checkpoints")) == [3, 6]
    assert artifacts.read_json(os.path.join(workdir, artifacts.RESULT_FILE))["result"] == result

    def fail():
        raise AssertionError("a finished workdir built its job again")

    assert run(config(), workdir, cadence(), fail) == result
    with pytest.raises(artifacts.WorkdirError, match=r"finished with another config \(lr: 0.1 -> 0.2\)"):
        run(config(lr=0.2), workdir, cadence(), fail)
    (tmp_path / artifacts.RESULT_FILE).unlink()  # unfinished: the config.json of the run is what is compared
    with pytest.raises(artifacts.WorkdirError, match=r"was trained with another config \(lr: 0.1 -> 0.2\)"):
        run(config(lr=0.2), workdir, cadence(), fail)
    assert artifacts.read_json(os.path.join(workdir, artifacts.CONFIG_FILE)) == config()  # not overwritten


def test_a_failing_evaluation_keeps_the_checkpoint_of_its_step_and_the_rerun_only_scores(tmp_path):
    workdir = str(tmp_path)

    def broken(params, step):
        raise RuntimeError("evaluation broke")

    with pytest.raises(RuntimeError, match="evaluation broke"):
        run(config(num_steps=3), workdir, cadence(3), lambda: toy_job(evaluate=broken))
    assert checkpoints.checkpoint_steps(os.path.join(workdir, "checkpoints")) == [3]  # no training lost
    calls = []
    result = run(config(num_steps=3), workdir, cadence(3), lambda: toy_job(calls=calls))
    assert calls == [3] and "error" in result  # restored at step 3: scored, not trained again
    assert [(r["step"], r["split"]) for r in artifacts.read_metrics(workdir)] == [(2, "train"), (3, "train"),
                                                                                  (3, "val")]


def test_a_finished_run_goes_on_with_more_steps_like_an_uninterrupted_one(tmp_path):
    short, extended, straight = str(tmp_path / "a"), str(tmp_path / "a"), str(tmp_path / "b")
    run(config(num_steps=3), short, cadence(3), toy_job)
    result = run(config(num_steps=6), extended, cadence(6), toy_job)  # train.num_steps may change
    assert result["error"] == run(config(num_steps=6), straight, cadence(6), toy_job)["error"]


def test_a_loss_spike_stops_the_run_before_its_state_is_saved_and_names_the_last_checkpoint(tmp_path):
    workdir = str(tmp_path)
    spiky = loop.Cadence(num_steps=30, log_every=1, checkpoint_every=3, eval_every=0, async_checkpoint=False,
                         loss_spike_factor=10.0)
    with pytest.raises(FloatingPointError, match=r"loss spike at step 14: .* x .*, the median of the last 10 logged "
                                                 r"losses .*; the last checkpoint before it is step 12 in "):
        run(config(num_steps=30), workdir, spiky, lambda: toy_job(spike_at=14))
    assert checkpoints.checkpoint_steps(os.path.join(workdir, "checkpoints")) == [6, 9, 12]  # step 15 never saved


def _truncate_data(step_dir):
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            if os.sep + "d" in root:  # the array chunks
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(3)


def _drop_metadata(step_dir):
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _empty(step_dir):
    import shutil

    for name in os.listdir(step_dir):
        path = os.path.join(step_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


@pytest.mark.parametrize("damage", [_truncate_data, _drop_metadata, _empty])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, damage, caplog):
    workdir, straight = str(tmp_path / "a"), str(tmp_path / "b")
    run(config(num_steps=6), workdir, cadence(6), toy_job)
    damage(os.path.join(workdir, "checkpoints", "6"))
    np.testing.assert_array_equal(  # predict / init_from read the newest intact params too
        checkpoints.load_params(workdir)["w"], checkpoints.load_params(os.path.join(workdir, "checkpoints"))["w"])
    result = run(config(num_steps=9), workdir, cadence(9), toy_job)  # resumes from step 3, not 6
    assert "checkpoint step 6" in caplog.text and "damaged, skipped" in caplog.text
    assert result["error"] == run(config(num_steps=9), straight, cadence(9), toy_job)["error"]
    assert checkpoints.checkpoint_steps(os.path.join(workdir, "checkpoints")) == [3, 6, 9]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "6.damaged"))  # kept for inspection
    rows = artifacts.read_metrics(workdir)
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4, 6, 8, 9]  # no gap, no duplicate


def test_no_intact_checkpoint_is_one_clear_error(tmp_path):
    workdir = str(tmp_path)
    run(config(num_steps=3), workdir, cadence(3), toy_job)
    _drop_metadata(os.path.join(workdir, "checkpoints", "3"))
    with pytest.raises(ValueError, match=r"no intact checkpoint in .*checkpoints \(step 3: .*\); delete it"):
        checkpoints.load_params(workdir)


def test_an_unwritable_checkpoint_folder_fails_before_the_job_is_built(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the folder should be")

    def fail():
        raise AssertionError("the job was built")

    with pytest.raises(artifacts.WorkdirError, match=r"cannot write checkpoints to .*checkpoints: "):
        run(config(), str(tmp_path), cadence(), fail)


def test_the_step_is_compiled_with_the_training_options_of_the_meshs_platform(monkeypatch):
    platforms, received = [], []
    real_jit = jax.jit

    memory_scheduler = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}

    def options(platform):
        platforms.append(platform)
        return dict(memory_scheduler)

    def jit(fn, **kwargs):
        received.append(kwargs.get("compiler_options"))
        return real_jit(fn, **kwargs)

    monkeypatch.setattr(loop.xla_options, "training", options)
    monkeypatch.setattr(loop.jax, "jit", jit)
    job = toy_job()
    loop.compile_step(job, job.state, job.rng)
    assert platforms == ["cpu"] and received == [memory_scheduler]


def test_checkpoints_of_another_model_are_a_mismatch_and_leave_the_workdir_as_it_was(tmp_path):
    workdir = str(tmp_path)
    run(config(num_steps=3), workdir, cadence(3), toy_job)
    os.remove(os.path.join(workdir, "config.json"))

    def wider_job():
        job = toy_job()
        state = job.state.replace(params={"w": jnp.zeros((4,))}, opt_state=job.state.tx.init({"w": jnp.zeros((4,))}))
        return loop.Job(**{**job.__dict__, "state": state})

    with pytest.raises(checkpoints.ModelMismatchError, match="written by another model or config"):
        run(config(num_steps=6), workdir, cadence(6), wider_job)
    assert not os.path.exists(os.path.join(workdir, "config.json"))  # not rewritten with the mismatching config
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]  # nothing set aside as damaged
    assert "error" in run(config(num_steps=6), workdir, cadence(6), toy_job)  # the right model resumes
