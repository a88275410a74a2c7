"""train/preemption.py: signals become a checkpoint of the step in flight and Preempted (exit code 75); in-process,
on loop_test's toy job, so that each signal lands exactly where the test puts it. The CLI, two processes and
launch.sh are in job_test and multihost_test."""
import os
import signal
import threading

import numpy as np
import pytest
from loop_test import cadence, config, run, toy_job

from fcn_jax.train import loop, preemption
from fcn_jax.weights import artifacts, checkpoints


def _signal_self(signum=signal.SIGTERM):
    """From the main thread: handled before this returns (os.kill may land on another thread, handled a moment
    later). From another thread: as from outside the process."""
    if threading.current_thread() is threading.main_thread():
        signal.raise_signal(signum)
    else:
        os.kill(os.getpid(), signum)


def _rows(workdir):
    return [(r["step"], r["split"]) for r in artifacts.read_metrics(workdir)]


def _params(workdir):
    return checkpoints.load_params(workdir)["w"]


def test_the_watcher_notes_the_first_signal_restores_the_handlers_and_passes_an_unanswered_signal_on():
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever ran before
    try:
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        with preemption.Watcher(multi_process=False) as watcher:
            assert not watcher.should_stop(1)
            _signal_self(signal.SIGINT)
            _signal_self(signal.SIGTERM)  # a second signal changes nothing
            assert watcher.signal_name == "SIGINT" and watcher.should_stop(2)  # answered: not passed on
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
        with pytest.raises(KeyboardInterrupt):  # never asked about: SIGINT's own handler, once the watcher is gone
            with preemption.Watcher(multi_process=False):
                _signal_self(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, outer)


def test_a_signal_aborts_an_interruptible_phase_at_once_and_only_that():
    with preemption.Watcher(multi_process=False) as watcher:
        with pytest.raises(preemption.Interrupted, match="SIGTERM"):
            with watcher.interruptible():
                _signal_self()
                for _ in range(10_000):  # the handler raises at the next bytecode
                    pass
                pytest.fail("the phase went on after the signal")
        with pytest.raises(preemption.Interrupted):  # a phase begun after the signal stops at once too
            with watcher.interruptible():
                pytest.fail("the phase began")


def test_a_long_call_run_interruptibly_is_left_behind_on_a_signal():
    released, finished = threading.Event(), threading.Event()

    def long_compile():
        _signal_self(signal.SIGINT)
        released.wait(60)
        finished.set()

    try:
        with preemption.Watcher(multi_process=False) as watcher, pytest.raises(preemption.Interrupted):
            watcher.run_interruptibly(long_compile)
        assert not finished.is_set()  # the main thread did not wait for it
    finally:
        released.set()
    with preemption.Watcher(multi_process=False) as watcher:
        assert watcher.run_interruptibly(lambda: 42) == 42


def _signalling_job(signal_at, signum=signal.SIGTERM):
    """toy_job whose input, read for step `signal_at`, signals this process: the signal arrives mid-step."""
    job = toy_job()
    batches = job.batches

    def signalling(start_step):
        for step, batch in enumerate(batches(start_step), start=start_step + 1):
            if step == signal_at:
                _signal_self(signum)
            yield batch

    return loop.Job(**{**job.__dict__, "batches": signalling})


def test_sigterm_between_checkpoints_saves_the_step_in_flight_and_resumes_exactly(tmp_path):
    workdir, straight = str(tmp_path / "a"), str(tmp_path / "b")
    with pytest.raises(preemption.Preempted, match=r"preempted by SIGTERM: checkpoint of step 4 saved in .*a; run "
                                                   r"the same command to resume \(exit code 75\)") as stopped:
        run(config(6), workdir, cadence(6), lambda: _signalling_job(4))
    assert stopped.value.step == 4 and stopped.value.saved
    assert checkpoints.checkpoint_steps(os.path.join(workdir, "checkpoints")) == [3, 4]
    result = run(config(6), workdir, cadence(6), toy_job)
    assert result["error"] == run(config(6), straight, cadence(6), toy_job)["error"]
    np.testing.assert_array_equal(_params(workdir), _params(straight))
    assert _rows(workdir) == _rows(straight) == [(2, "train"), (3, "val"), (4, "train"), (6, "train"), (6, "val")]


def test_a_second_signal_during_the_save_leaves_every_checkpoint_intact(tmp_path, monkeypatch, caplog):
    workdir, straight = str(tmp_path / "a"), str(tmp_path / "b")
    real_save = checkpoints.save

    def save_signalled(manager, step, *args, **kwargs):
        if step == 5:
            _signal_self(signal.SIGINT)
        real_save(manager, step, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save", save_signalled)
    with pytest.raises(preemption.Preempted, match="checkpoint of step 5 saved"):
        run(config(6), workdir, cadence(6), lambda: _signalling_job(5))
    assert "SIGINT received again: still stopping" in caplog.text
    monkeypatch.setattr(checkpoints, "save", real_save)
    run(config(6), workdir, cadence(6), toy_job)
    run(config(6), straight, cadence(6), toy_job)
    np.testing.assert_array_equal(_params(workdir), _params(straight))


def test_sigint_during_the_first_compilation_stops_at_once_with_nothing_lost(tmp_path, monkeypatch):
    workdir, straight = str(tmp_path / "a"), str(tmp_path / "b")
    run(config(3), workdir, cadence(3), toy_job)  # checkpoint 3, then a longer run resumed from it
    released = threading.Event()
    real_compile = loop.compile_step

    def slow_compile(*args):
        _signal_self(signal.SIGINT)
        released.wait(60)

    monkeypatch.setattr(loop, "compile_step", slow_compile)
    try:
        with pytest.raises(preemption.Preempted, match=r"by SIGINT: nothing to save since step 3;") as stopped:
            run(config(6), workdir, cadence(6), toy_job)
        assert not stopped.value.saved
    finally:
        released.set()
    monkeypatch.setattr(loop, "compile_step", real_compile)
    assert checkpoints.checkpoint_steps(os.path.join(workdir, "checkpoints")) == [3]
    run(config(6), workdir, cadence(6), toy_job)
    run(config(6), straight, cadence(6), toy_job)
    np.testing.assert_array_equal(_params(workdir), _params(straight))


def test_sigterm_during_an_evaluation_keeps_its_step_and_the_resume_scores_it_once(tmp_path):
    workdir, straight = str(tmp_path / "a"), str(tmp_path / "b")
    calls = []

    def evaluate(params, step):
        calls.append(step)
        if step == 3 and calls.count(3) == 1:
            _signal_self()
            for _ in range(10_000):
                pass
            pytest.fail("the evaluation went on after the signal")
        return {"error": float(np.abs(np.asarray(params["w"]) - [1.0, -2.0, 0.5]).sum())}

    with pytest.raises(preemption.Preempted, match="checkpoint of step 3 saved"):
        run(config(6), workdir, cadence(6), lambda: toy_job(evaluate=evaluate))
    assert checkpoints.checkpoint_steps(os.path.join(workdir, "checkpoints")) == [3]
    result = run(config(6), workdir, cadence(6), lambda: toy_job(evaluate=evaluate))
    assert calls == [3, 3, 6]  # interrupted, scored on resume, then the last step
    assert result["error"] == run(config(6), straight, cadence(6), toy_job)["error"]
    assert _rows(workdir) == _rows(straight)  # step 3's evaluation once, in order
    np.testing.assert_array_equal(_params(workdir), _params(straight))


def test_stopped_messages():
    assert "step 7 saved in w;" in preemption.stopped_message(preemption.Preempted("SIGTERM", 7, "w", saved=True))
    assert "(no checkpoint yet)" in preemption.stopped_message(preemption.Preempted("SIGINT", 0, "w", saved=False))
    assert preemption.stopped_message(KeyboardInterrupt()).startswith("stopped by a signal, finished work kept; run "
                                                                      "the same command to resume (exit code 75)")


def test_a_signal_while_the_job_is_built_stops_at_once_with_nothing_lost(tmp_path):
    workdir = str(tmp_path)
    run(config(3), workdir, cadence(3), toy_job)

    def slow_make_job():  # a first dataset build: a long phase before any step
        _signal_self()
        for _ in range(10_000):
            pass
        pytest.fail("the job was built on after the signal")

    with pytest.raises(preemption.Preempted, match=r"by SIGTERM: nothing to save since step 3;") as stopped:
        run(config(6), workdir, cadence(6), slow_make_job)
    assert not stopped.value.saved and stopped.value.step == 3
    assert checkpoints.checkpoint_steps(os.path.join(workdir, "checkpoints")) == [3]


def test_a_signal_during_the_restore_stops_before_the_first_step(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    run(config(3), workdir, cadence(3), toy_job)
    real_restore = checkpoints.restore

    def restore_signalled(*args, **kwargs):
        _signal_self(signal.SIGINT)  # noted only: a restore is not aborted half-way
        return real_restore(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "restore", restore_signalled)
    with pytest.raises(preemption.Preempted, match=r"by SIGINT: nothing to save since step 3;"):
        run(config(6), workdir, cadence(6), toy_job)
    assert checkpoints.checkpoint_steps(os.path.join(workdir, "checkpoints")) == [3]
    assert _rows(workdir) == [(2, "train"), (3, "train"), (3, "val")]


def test_a_signal_in_the_final_save_finishes_the_run_and_still_reaches_the_caller(tmp_path, monkeypatch):
    """The run is complete (result.json), then the signal goes on to the caller's handler, so that a sweep or the
    pipeline stops before its next run instead of dropping it."""
    workdir, straight = str(tmp_path / "a"), str(tmp_path / "b")
    real_save = checkpoints.save

    def save_signalled(manager, step, *args, **kwargs):
        if step == 6:
            _signal_self()
        real_save(manager, step, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save", save_signalled)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # what stop_on_sigterm installs
    try:
        with pytest.raises(KeyboardInterrupt):
            run(config(6), workdir, cadence(6), toy_job)
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.setattr(checkpoints, "save", real_save)
    assert artifacts.read_json(os.path.join(workdir, artifacts.RESULT_FILE))["result"]["error"] == run(
        config(6), straight, cadence(6), toy_job)["error"]
    assert _rows(workdir) == _rows(straight)


def test_an_evaluation_rescored_on_resume_keeps_one_row_however_often_the_resume_stops(tmp_path, monkeypatch):
    workdir, straight = str(tmp_path / "a"), str(tmp_path / "b")
    interrupt_eval = [True]

    def evaluate(params, step):
        if step == 3 and interrupt_eval.pop(0):
            _signal_self()
            for _ in range(10_000):
                pass
        return {"error": float(np.abs(np.asarray(params["w"]) - [1.0, -2.0, 0.5]).sum())}

    interrupt_eval += [False, False]
    with pytest.raises(preemption.Preempted, match="checkpoint of step 3 saved"):
        run(config(6), workdir, cadence(6), lambda: toy_job(evaluate=evaluate))
    real_compile = loop.compile_step

    def compile_signalled(*args):  # after step 3 is rescored, before any new checkpoint
        _signal_self()
        return real_compile(*args)

    monkeypatch.setattr(loop, "compile_step", compile_signalled)
    with pytest.raises(preemption.Preempted, match="nothing to save since step 3"):
        run(config(6), workdir, cadence(6), lambda: toy_job(evaluate=evaluate))
    monkeypatch.setattr(loop, "compile_step", real_compile)
    run(config(6), workdir, cadence(6), lambda: toy_job(evaluate=evaluate))
    run(config(6), straight, cadence(6), toy_job)
    assert _rows(workdir) == _rows(straight)  # step 3's evaluation once, though scored three times
