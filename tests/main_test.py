"""main.py's multi-process detection and flags, and launch.sh's validation and exact commands (fast: no training)."""
from __future__ import annotations

import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest
from absl import app

from fcn_jax import main
from fcn_jax.train import config_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = str(ROOT / "launch.sh")
SLURM_STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "16",
              "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}

# ----------------------------------------------------------------------------- main.py


@pytest.mark.parametrize("environ, expected", [
    ({}, False),
    (SLURM_STEP, True),  # srun step with 16 tasks
    ({**SLURM_STEP, "SLURM_NTASKS": "1"}, False),  # a single task is a plain run
    ({k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}, False),  # batch script, outside srun
    ({"TPU_WORKER_HOSTNAMES": "t1v-n-0,t1v-n-1"}, True),  # GKE multi-host TPU slice
    ({"TPU_WORKER_HOSTNAMES": "t1v-n-0"}, False),  # single-host TPU
])
def test_is_multi_process_env(environ, expected):
    assert main.is_multi_process_env(environ) is expected


def test_distributed_init_kwargs_single_process_by_default():
    assert main.distributed_init_kwargs(None, None, None, environ={}) is None


def test_distributed_init_kwargs_auto_detection():
    assert main.distributed_init_kwargs(None, None, None, environ=SLURM_STEP) == {}  # jax reads SLURM itself
    assert main.distributed_init_kwargs(None, None, None, force=True, environ={}) == {}  # --distributed


def test_distributed_init_kwargs_explicit_flags_win():
    kwargs = main.distributed_init_kwargs("10.0.0.1:1234", 4, 3, environ=SLURM_STEP)
    assert kwargs == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}


@pytest.mark.parametrize("args, message", [
    (("127.0.0.1:1234", None, None), "missing --num_processes, --process_id"),
    ((None, 2, 0), "missing --coordinator_address"),
    (("127.0.0.1", 2, 0), "expected host:port"),
    (("127.0.0.1:port", 2, 0), "expected host:port"),
    (("127.0.0.1:1234", 2, 2), r"--process_id=2 is not in \[0, --num_processes=2\)"),
    (("127.0.0.1:1234", 0, 0), "is not in"),
])
def test_distributed_init_kwargs_bad_flags(args, message):
    with pytest.raises(app.UsageError, match=message):
        main.distributed_init_kwargs(*args, environ={})


def test_cli_rejects_partial_distributed_flags_before_importing_anything_slow(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fcn_jax.main", "--config", "experiments/demo.py", "--workdir", str(tmp_path),
         "--num_processes=2"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "missing --coordinator_address, --process_id" in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("overrides, message", [
    (["--config.model.widht=2"], 'error: unknown config key widht Did you mean "width" instead of "widht"?'),
    (["--config.eval.pad_size=(64,64)", "--config.eval.pad_size=(32,32)"],
     "error: --config.eval.pad_size given more than once; give each config key once"),  # absl would concatenate
])
def test_bad_overrides_are_one_line_before_anything_runs(tmp_path, overrides, message):
    result = subprocess.run([sys.executable, "-m", "fcn_jax.main", "--config", "experiments/demo.py", "--workdir",
                             str(tmp_path / "w"), *overrides], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "w").exists()


FAILING_SAVE = """
import sys, threading
from absl import app
from fcn_jax import main
from fcn_jax.train import config_flags
from fcn_jax.weights import checkpoints

def failing_save(*args, **kwargs):  # as orbax does when a save fails: a background thread left waiting forever
    threading.Thread(target=threading.Event().wait, name="stuck-save").start()
    raise OSError("simulated failing checkpoint save")

checkpoints.save = failing_save
sys.argv = ["main", "--config", "experiments/demo.py", "--workdir", sys.argv[1]] + sys.argv[2:]
app.run(main.main, flags_parser=config_flags.parse_flags)
"""


def test_a_failing_checkpoint_save_ends_the_run_with_one_line_instead_of_hanging(tmp_path):
    overrides = ["--config.model.width=0.03125", "--config.data.crop_size=(32,32)", "--config.data.synthetic_train=8",
                 "--config.data.synthetic_val=4", f"--config.data.manual_dir={tmp_path}/raw",
                 f"--config.data.data_dir={tmp_path}/tfds", "--config.train.num_steps=2",
                 "--config.train.checkpoint_every=1", "--config.eval.pad_size=(192,192)"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    proc = subprocess.Popen([sys.executable, "-c", FAILING_SAVE, str(tmp_path / "w"), *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)  # a hang (joining the stuck thread at exit) fails here
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the process hung after its checkpoint save failed")
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1] == "error: simulated failing checkpoint save"


def test_repeated_overrides_are_found_by_key():
    assert config_flags.repeated_overrides(
        ["--config.a=1", "--config.b=2", "--config.a=3", "--workdir=x"]) == ["--config.a"]
    assert config_flags.repeated_overrides(["--config.a=1", "--config.b=2"]) == []


def test_simulated_slurm_step_is_detected_and_initialises_jax_distributed():
    """Two processes with the variables srun sets: main's detection says multi-process, and jax's own SLURM
    detection (what jax.distributed.initialize() does with no arguments) then joins them into one job."""
    probe = ("import jax; from fcn_jax import main; kwargs = main.distributed_init_kwargs(None, None, None); "
             "jax.distributed.initialize(**kwargs); "
             "print(kwargs, jax.process_index(), jax.process_count(), jax.device_count())")
    port = _free_port()
    procs = []
    try:
        for task in range(2):
            env = {**os.environ, **SLURM_STEP, "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
                   "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task), "JAX_COORDINATOR_PORT": str(port),
                   "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
            procs.append(subprocess.Popen([sys.executable, "-c", probe], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, start_new_session=True))
        outputs = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    for task, (proc, (out, err)) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, err[-2000:]
        assert out.split() == ["{}", str(task), "2", "4"]  # auto-detected; 2 processes x 2 devices


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- launch.sh


def _launch(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("PORT", "CPU_DEVICES", "TPU_REPO", "TPU_PYTHON")}
    full_env.update({"PYTHON": "python3", "XLA_FLAGS": "", **env})
    proc = subprocess.Popen([LAUNCH, *args], cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # launch.sh and whatever it left behind
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _commands(result: subprocess.CompletedProcess, returncode: int = 0) -> list[list[str]]:
    """The printed '+ cmd' lines, split back into argv as a shell would."""
    assert result.returncode == returncode, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


TRAIN = ["-m", "fcn_jax.main", "--config", "experiments/demo.py", "--workdir", "runs/x"]


@pytest.mark.parametrize("args, message", [
    ((), "missing MODE"),
    (("warp", "experiments/demo.py", "runs/x"), "unknown mode 'warp'"),
    (("local",), "missing CONFIG"),
    (("local", "--config.seed=1"), "missing CONFIG"),
    (("local", "experiments/demo.py"), "missing WORKDIR"),
    (("local", "experiments/nope.py", "runs/x"), "config file 'experiments/nope.py' does not exist"),
    (("local", "experiments/demo.py", "runs/x", "stray"), "unexpected argument 'stray'"),
    (("cpu-procs", "two", "experiments/demo.py", "runs/x"), "cpu-procs N must be a positive integer, got 'two'"),
    (("cpu-procs", "0", "experiments/demo.py", "runs/x"), "positive integer, got '0'"),
    (("slurm", "2", "8x", "experiments/demo.py", "runs/x"), "TASKS_PER_NODE must be a positive integer, got '8x'"),
    (("slurm", "-1", "8", "experiments/demo.py", "runs/x"), "NODES must be a positive integer"),
    (("tpu", "my-tpu"), "tpu needs NAME and ZONE"),
])
def test_launch_validates_arguments(args, message):
    result = _launch("--dry-run", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "usage: launch.sh" in result.stderr
    assert result.stdout == ""  # nothing printed as if it were run


def test_launch_validates_environment_counts():
    result = _launch("--dry-run", "cpu-procs", "2", "experiments/demo.py", "runs/x", CPU_DEVICES="many")
    assert result.returncode == 2 and "CPU_DEVICES must be a positive integer, got 'many'" in result.stderr


def test_launch_help():
    result = _launch("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: launch.sh")


def test_launch_local_dry_run_prints_the_exact_command():
    result = _launch("--dry-run", "local", "experiments/demo.py", "runs/x", "--config.data.crop_size=(64, 64)",
                     PYTHON="false")  # would fail if it ran
    assert _commands(result) == [["false", *TRAIN, "--config.data.crop_size=(64, 64)"]]


def test_launch_gpus_dry_run_sets_xla_and_nccl_and_keeps_user_xla_flags():
    result = _launch("--dry-run", "gpus", "experiments/demo.py", "runs/x", XLA_FLAGS="--xla_dump_to=/tmp/d",
                     NCCL_DEBUG="INFO")
    assert _commands(result) == [[
        "env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90",
        "XLA_FLAGS=--xla_dump_to=/tmp/d --xla_gpu_enable_latency_hiding_scheduler=true", "NCCL_DEBUG=INFO",
        "python3", *TRAIN]]


def test_launch_gpus_flags_are_known_to_the_installed_xla():
    """XLA aborts on an unknown XLA_FLAGS entry at backend start; the control shows that this check can fail."""
    [command] = _commands(_launch("--dry-run", "gpus", "experiments/demo.py", "runs/x"))
    gpu_env = dict(item.split("=", 1) for item in command[1:command.index("python3")])
    probe = [sys.executable, "-c", "import jax; print(jax.numpy.ones(2).sum())"]

    def start(xla_flags):
        env = {**os.environ, **gpu_env, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
        return subprocess.Popen(probe, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    real, control = start(gpu_env["XLA_FLAGS"]), start("--xla_gpu_enable_no_such_flag=true")
    real_out, real_err = real.communicate(timeout=120)
    _, control_err = control.communicate(timeout=120)
    assert real.returncode == 0 and real_out.strip() == "2.0", real_err[-2000:]
    assert control.returncode != 0 and "xla_gpu_enable_no_such_flag" in control_err


def test_launch_slurm_dry_run():
    result = _launch("--dry-run", "slurm", "2", "8", "experiments/demo.py", "runs/x", "--config.seed=3")
    [command] = _commands(result)
    srun = command.index("srun")
    assert command[srun:] == ["srun", "--nodes=2", "--ntasks-per-node=8", "--kill-on-bad-exit=1", "python3", *TRAIN,
                              "--config.seed=3", "--distributed"]
    assert "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true" in command[:srun]


def test_launch_tpu_dry_run_quotes_the_remote_command():
    result = _launch("--dry-run", "tpu", "my-tpu", "us-central2-b", "experiments/demo.py", "runs/x",
                     "--config.data.crop_size=(500, 500)", TPU_REPO="/opt/fcn jax")
    [command] = _commands(result)
    assert command[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=us-central2-b"]
    assert command[7] == "--worker=all" and command[8].startswith("--command=")
    remote = command[8][len("--command="):]
    # TPU_REPO is used as given (so that ~ expands on the worker); the training arguments survive quoting intact.
    assert remote.startswith("cd /opt/fcn jax && python3 ")
    assert shlex.split(remote.split(" && ", 1)[1]) == [
        "python3", *TRAIN, "--config.data.crop_size=(500, 500)", "--distributed"]


def test_launch_cpu_procs_dry_run_prints_one_command_per_process():
    result = _launch("--dry-run", "cpu-procs", "3", "experiments/demo.py", "runs/x", PORT="4567", CPU_DEVICES="4",
                     XLA_FLAGS="--xla_backend_optimization_level=0")
    assert _commands(result) == [
        ["env", "JAX_PLATFORMS=cpu",
         "XLA_FLAGS=--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=4", "python3", *TRAIN,
         "--coordinator_address=127.0.0.1:4567", "--num_processes=3", f"--process_id={i}"]
        for i in range(3)]


def test_launch_cpu_procs_picks_a_free_port_when_none_is_given():
    commands = _commands(_launch("--dry-run", "cpu-procs", "2", "experiments/demo.py", "runs/x"))
    ports = {arg.rsplit(":", 1)[1] for command in commands for arg in command if arg.startswith("--coordinator")}
    assert len(ports) == 1 and ports.pop().isdigit()


def test_launch_cpu_procs_first_failure_stops_the_others(tmp_path):
    """Process 1 fails while process 0 would wait (as in a collective): launch.sh exits with 1's status, 0 is killed."""
    fake_python = tmp_path / "python"
    fake_python.write_text(f"""#!/usr/bin/env bash
for arg in "$@"; do case "$arg" in --process_id=*) id="${{arg#*=}}";; esac; done
echo $$ > "{tmp_path}/pid.$id.tmp" && mv "{tmp_path}/pid.$id.tmp" "{tmp_path}/pid.$id"
if [[ $id == 1 ]]; then
  while [[ ! -f "{tmp_path}/pid.0" ]]; do sleep 0.05; done
  exit 3
fi
exec sleep 120
""")
    fake_python.chmod(0o755)
    result = _launch("cpu-procs", "2", "experiments/demo.py", "runs/x", PYTHON=str(fake_python), PORT="4567")
    assert len(_commands(result, returncode=3)) == 2  # printed before running; process 1's status
    waiting = int((tmp_path / "pid.0").read_text())
    try:
        for _ in range(100):  # a killed process may take a moment to disappear
            if not _alive(waiting):
                break
            time.sleep(0.05)
        assert not _alive(waiting), "process 0 was left running"
    finally:
        if _alive(waiting):
            os.kill(waiting, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
