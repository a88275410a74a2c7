"""Multi-process data parallelism, end to end through launch.sh.

Three runs of the demo config at a tiny size (width 1/32, 32x32 crops, global batch 4, dropout on):
  A  `launch.sh cpu-procs 2`: 2 processes x 2 fake CPU devices, steps 1..N, fresh data dir (process 0 writes and
     prepares the dataset while process 1 waits at the barrier);
  B  `launch.sh local`: 1 process x 4 devices, steps 1..N+2, same global batch;
  C  `launch.sh local`: 1 process x 2 devices resuming a copy of A's workdir, steps N+1..N+2.
A must match B step for step, C must continue exactly where B goes, and A's params must load in this
(1-process, 8-device) pytest process.

Tolerance, not bitwise: A and B often agree to the last bit, but nothing makes the cross-process (gloo) all-reduce
sum the 4 per-device partials in the same order as the in-process one (another configuration differed by 1.6e-7
at step 2), and C's 2 devices do sum in another order (~1e-7 here); hence rtol 1e-5.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
N = 3  # steps of the 2-process run; B and C go to N + 2
TIMEOUT_S = 420
# Half the XLA:CPU compile time (most of each run); applied to every run alike, so comparisons are unaffected.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
RTOL = 1e-5


def _overrides(data: pathlib.Path, num_steps: int) -> list[str]:
    return [
        "--config.model.width=0.03125",
        "--config.model.dropout_rate=0.5",  # dropout keys must not depend on the process count either
        "--config.data.crop_size=(32,32)",
        "--config.data.synthetic_train=8",
        "--config.data.synthetic_val=4",
        f"--config.data.manual_dir={data / 'raw'}",
        f"--config.data.data_dir={data / 'tfds'}",
        "--config.train.global_batch_size=4",
        "--config.eval.batch_size=4",
        "--config.eval.num_samples=2",
        f"--config.train.num_steps={num_steps}",
        "--config.train.log_every=1",
        f"--config.train.eval_every={N}",
        f"--config.train.checkpoint_every={N}",
        "--config.optim.optimizer=adam",
        "--config.optim.learning_rate=3e-3",
        "--config.optim.schedule=constant",  # the lr must not depend on num_steps (A stops at N, B at N + 2)
        "--config.optim.warmup_steps=0",
    ]


def _start(log: pathlib.Path, args: list[str], local_devices: int | None = None, **env: str) -> subprocess.Popen:
    """launch.sh in its own process group (so that everything it starts can be killed together), output to log."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PORT", "CPU_DEVICES")}
    xla_flags = FAST_COMPILE if local_devices is None else (
        f"{FAST_COMPILE} --xla_force_host_platform_device_count={local_devices}")
    full_env.update(env, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
    with open(log, "w") as f:  # a file, not a pipe: runs side by side must never block on a full pipe
        proc = subprocess.Popen([str(ROOT / "launch.sh"), *args], cwd=ROOT, env=full_env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    return proc


def _finish(proc: subprocess.Popen) -> str:
    """Wait (bounded) for a _start-ed run; on timeout or failure kill its process group and fail."""
    name = " ".join(proc.args[1:3])
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"launch.sh {name} timed out after {TIMEOUT_S}s:\n{proc.log.read_text()[-4000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of a failed multi-process run
        except ProcessLookupError:
            pass
    out = proc.log.read_text()
    assert proc.returncode == 0, f"launch.sh {name} failed ({proc.returncode}):\n{out[-4000:]}"
    return out


def _metrics(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _entries(workdir: pathlib.Path, split: str) -> dict[int, dict]:
    entries = [m for m in _metrics(workdir) if m["split"] == split]
    steps = [m["step"] for m in entries]
    assert len(steps) == len(set(steps)), f"{workdir.name}: {split} steps written more than once: {steps}"
    return {m["step"]: m for m in entries}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    data = tmp / "data"  # not prepared yet: A's two processes start on it together
    a, b, c = tmp / "a", tmp / "b", tmp / "c"
    out_a = _finish(_start(tmp / "a.log", ["cpu-procs", "2", "experiments/demo.py", str(a), *_overrides(data, N)],
                           CPU_DEVICES="2"))
    shutil.copytree(a, c)  # C resumes a copy, so A's own files stay as A left them
    # B and C side by side: XLA compiles on one thread, so two single-process runs share 2 cores well.
    procs = [_start(tmp / f"{workdir.name}.log", ["local", "experiments/demo.py", str(workdir),
                                                 *_overrides(data, N + 2)], local_devices=devices)
             for workdir, devices in ((b, 4), (c, 2))]
    try:
        _, out_c = [_finish(proc) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return {"a": a, "b": b, "c": c, "out_a": out_a, "out_c": out_c}


def _assert_train_close(got: dict, want: dict, steps) -> None:
    for step in steps:
        for key in ("loss", "pixel_acc", "learning_rate"):
            np.testing.assert_allclose(got[step][key], want[step][key], rtol=RTOL,
                                       err_msg=f"train {key} at step {step}")


def _assert_eval_close(got: dict, want: dict) -> None:
    for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou", "loss"):
        np.testing.assert_allclose(got[key], want[key], rtol=RTOL, err_msg=f"eval {key} at step {got['step']}")
    assert list(got["per_class_iou"]) == list(want["per_class_iou"])  # class names, in order
    np.testing.assert_allclose(np.array(list(got["per_class_iou"].values()), float),
                               np.array(list(want["per_class_iou"].values()), float), rtol=RTOL, equal_nan=True)


def test_two_processes_train_and_evaluate_like_one(runs):
    a_train, b_train = _entries(runs["a"], "train"), _entries(runs["b"], "train")
    assert sorted(a_train) == list(range(1, N + 1))
    _assert_train_close(a_train, b_train, range(1, N + 1))
    assert a_train[N]["loss"] < a_train[1]["loss"] - 0.05  # it trained: the comparison is not of constants
    a_eval, b_eval = _entries(runs["a"], "voc_val"), _entries(runs["b"], "voc_val")
    assert sorted(a_eval) == [N]
    _assert_eval_close(a_eval[N], b_eval[N])


def test_only_process_zero_writes_logs_and_samples(runs):
    assert runs["out_a"].count("final validation metrics:") == 1  # printed by process 0 only
    assert len(list((runs["a"] / "tensorboard").iterdir())) == 1  # one events file
    samples = sorted(p.name for p in (runs["a"] / "samples" / f"step_{N:06d}").iterdir())
    assert len(samples) == 4  # num_samples=2 images x (pred, gt), not 2 per process
    assert samples == sorted(p.name for p in (runs["b"] / "samples" / f"step_{N:06d}").iterdir())


def test_checkpoint_of_two_processes_resumes_in_one_process_on_two_devices(runs):
    assert f"resumed from {runs['c']} at step {N}" in runs["out_c"]
    c_train, b_train = _entries(runs["c"], "train"), _entries(runs["b"], "train")
    assert sorted(c_train) == list(range(1, N + 3))  # A's history up to N, then C's own steps
    _assert_train_close(c_train, b_train, range(N + 1, N + 3))
    _assert_eval_close(_entries(runs["c"], "voc_val")[N + 2], _entries(runs["b"], "voc_val")[N + 2])


def test_checkpoint_of_two_processes_loads_as_params_in_this_process(runs, tmp_path):
    from fcn_jax.weights import checkpoints

    assert jax.process_count() == 1  # A saved from 2 processes over 4 devices; here 1 process, conftest's devices
    shutil.copytree(runs["b"] / "checkpoints" / str(N), tmp_path / "checkpoints" / str(N))  # B at A's last step
    params_a, params_b = checkpoints.load_params(str(runs["a"])), checkpoints.load_params(str(tmp_path))
    assert jax.tree.structure(params_a) == jax.tree.structure(params_b)
    for leaf_a, leaf_b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_allclose(leaf_a, leaf_b, rtol=RTOL, atol=1e-6)
    final_b, final_c = checkpoints.load_params(str(runs["b"])), checkpoints.load_params(str(runs["c"]))
    for leaf_c, leaf_b in zip(jax.tree.leaves(final_c), jax.tree.leaves(final_b)):  # 2 more steps on other devices:
        np.testing.assert_allclose(leaf_c, leaf_b, rtol=RTOL, atol=1e-5)  # float noise of the reduction order
    moved = max(np.abs(x - y).max() for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(final_c)))
    assert moved > 1e-4  # C really trained on from A's step-N params


def _wait_for_train_step(workdir: pathlib.Path, proc: subprocess.Popen, at_least: int) -> None:
    deadline = time.time() + TIMEOUT_S
    while True:
        assert proc.poll() is None and time.time() < deadline, f"the run ended or hung:\n{proc.log.read_text()[-3000:]}"
        path = workdir / "metrics.jsonl"
        if path.exists() and any(m["step"] >= at_least for m in map(json.loads, path.read_text().splitlines())):
            return
        time.sleep(0.1)


def test_sigterm_stops_both_processes_at_one_saved_step_and_the_run_resumes(runs, tmp_path):
    """launch.sh forwards SIGTERM to its 2 processes; JAX's preemption sync makes them save the same step."""
    data, workdir = runs["a"].parent / "data", tmp_path / "preempted"
    proc = _start(tmp_path / "preempted.log", ["cpu-procs", "2", "experiments/demo.py", str(workdir),
                                               *_overrides(data, 10_000)], CPU_DEVICES="2")
    try:
        _wait_for_train_step(workdir, proc, N + 1)  # past the step-N checkpoint
        os.kill(proc.pid, signal.SIGTERM)  # launch.sh alone, as a scheduler stopping the job script would
        proc.wait(timeout=TIMEOUT_S)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out = proc.log.read_text()
    assert proc.returncode == 75, out[-4000:]
    lines = [line for line in out.splitlines() if line.startswith("fcn_jax: preempted by SIGTERM: checkpoint of step")]
    assert len(lines) == 2 and lines[0] == lines[1], lines  # both processes, one step
    k = int(lines[0].split("checkpoint of step ")[1].split()[0])
    assert k > N and k in checkpoints_steps(workdir)

    # Resumed on 2 processes and stopped again before its first step (while the job is built, restored or
    # compiled): the processes agree on step k (nothing new to save) or k + 1, instead of missing the notice.
    proc = _start(tmp_path / "again.log", ["cpu-procs", "2", "experiments/demo.py", str(workdir),
                                           *_overrides(data, 10_000)], CPU_DEVICES="2")
    try:
        deadline = time.time() + TIMEOUT_S
        while f"resumed from {workdir} at step {k}" not in proc.log.read_text():
            assert proc.poll() is None and time.time() < deadline, proc.log.read_text()[-3000:]
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=TIMEOUT_S)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out = proc.log.read_text()
    assert proc.returncode == 75, out[-4000:]
    lines = [line for line in out.splitlines() if line.startswith("fcn_jax: preempted by SIGTERM: ")]
    assert len(lines) == 2 and lines[0] == lines[1], lines
    assert (f"nothing to save since step {k};" in lines[0]) or (f"checkpoint of step {k + 1} saved" in lines[0])
    k = checkpoints_steps(workdir)[-1]

    resumed = _finish(_start(tmp_path / "resumed.log", ["local", "experiments/demo.py", str(workdir),
                                                         *_overrides(data, k + 1)], local_devices=2))
    assert f"resumed from {workdir} at step {k}" in resumed
    train = _entries(workdir, "train")  # each step once: nothing written twice by the two processes or the resume
    assert sorted(train) == list(range(1, k + 2))
    _assert_train_close(train, _entries(runs["b"], "train"), range(1, min(k, N + 2) + 1))


def checkpoints_steps(workdir: pathlib.Path) -> list[int]:
    from fcn_jax.weights import checkpoints

    return checkpoints.checkpoint_steps(str(workdir / "checkpoints"))
