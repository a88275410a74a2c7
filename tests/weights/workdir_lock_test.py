"""weights/workdir_lock.py: a second run on a workdir being trained is refused in one line naming the holder; the
lock dies with its holder (kill -9 included), so it never blocks a resume."""
import errno
import logging
import os
import signal
import subprocess
import sys

import pytest
from loop_test import cadence, config, run, toy_job

from fcn_jax.weights import artifacts, workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_second_run_on_a_held_workdir_is_refused_and_the_holder_keeps_it(tmp_path):
    workdir = str(tmp_path)
    with workdir_lock.hold(workdir):
        with pytest.raises(artifacts.WorkdirError, match=rf"{workdir} is being trained by pid {os.getpid()} on "
                                                         r".*; wait for it to end \(or stop it\), or use another"):
            run(config(3), workdir, cadence(3), toy_job)
        assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))  # the refused run wrote nothing
        with pytest.raises(artifacts.WorkdirError):  # still held after the refusal
            with workdir_lock.hold(workdir):
                pass
    assert "error" in run(config(3), workdir, cadence(3), toy_job)  # released: trains


def test_processes_other_than_the_first_take_no_lock(tmp_path):
    with workdir_lock.hold(str(tmp_path)), workdir_lock.hold(str(tmp_path), active=False):
        pass  # process 0 holds it for the run's other processes
    with workdir_lock.hold(str(tmp_path / "other"), active=False):
        assert not os.path.exists(tmp_path / "other")


def test_the_lock_of_a_killed_holder_is_free(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from fcn_jax.weights import workdir_lock\n"
         f"with workdir_lock.hold({str(tmp_path)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(artifacts.WorkdirError, match=f"being trained by pid {holder.pid} on "):
            with workdir_lock.hold(str(tmp_path)):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with workdir_lock.hold(str(tmp_path)):  # taken at once
        pass


def test_a_file_system_without_locks_trains_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(workdir_lock.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING):
        assert "error" in run(config(3), str(tmp_path), cadence(3), toy_job)
    assert "does not lock files (No locks available)" in caplog.text

    def broken(handle, operation):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(workdir_lock.fcntl, "flock", broken)
    with pytest.raises(OSError, match="Input/output error"):  # other failures are not taken for a lockless system
        with workdir_lock.hold(str(tmp_path / "other")):
            pass
