"""Preemption: SIGTERM or SIGINT ends training at a step boundary, with a checkpoint of that step, and exit code 75.

Clusters stop a job with SIGTERM and SIGKILL it a grace period later (SLURM's KillWait, 30 s by default; spot VMs
about 30 s). One process: our handlers note the signal and the loop stops after the step in flight. Several
processes: SIGTERM goes to JAX's preemption sync manager (installed by jax.distributed.initialize), which makes every
process agree on the step to save (multihost_utils.reached_preemption_sync_point); SIGINT is handed to it as SIGTERM.
Compilation and evaluation save nothing of their own, so in one process a signal aborts them at once.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Callable, TypeVar

import jax

EXIT_CODE = 75  # EX_TEMPFAIL of sysexits.h: a temporary failure; the same command resumes the run
SIGNALS = (signal.SIGTERM, signal.SIGINT)
T = TypeVar("T")


class Interrupted(BaseException):
    """Raised inside an interruptible phase (compilation, evaluation) by the first signal; BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class Stopped(Exception):
    """Work stopped by a signal with everything finished kept: the CLIs exit with EXIT_CODE."""


class Preempted(Stopped):
    """Training stopped on a signal after saving `step` (or with nothing new to save)."""

    def __init__(self, signal_name: str, step: int, workdir: str, saved: bool):
        what = (f"checkpoint of step {step} saved in {workdir}" if saved else
                f"nothing to save since step {step}" + (" (no checkpoint yet)" if step == 0 else ""))
        super().__init__(f"preempted by {signal_name}: {what}; run the same command to resume (exit code {EXIT_CODE})")
        self.signal_name, self.step, self.saved = signal_name, step, saved


def stop_on_sigterm() -> None:
    """At a command line's start: SIGTERM raises KeyboardInterrupt, as SIGINT does, so that a stop outside training
    (where the Watcher holds both) also ends in one line and EXIT_CODE (see `stopped_message`)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def start_command_line() -> None:
    """The start of a long-running command line (ablate, study, crf_search): TensorFlow's C++ logs (preparing data)
    quiet unless set, INFO lines with times, absl at WARNING (orbax / tfds chatter), and stop_on_sigterm."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    stop_on_sigterm()


def exit_now(code: int) -> None:
    """Flush and exit without joining threads: neither a compilation left in a daemon thread by a signal nor a
    failed background checkpoint save may hold the process (or crash it at interpreter shutdown)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def stopped_message(error: BaseException) -> str:
    """The one line a command line prints for a Stopped or a KeyboardInterrupt before exiting with EXIT_CODE."""
    if isinstance(error, Stopped):
        return str(error)
    return f"stopped by a signal, finished work kept; run the same command to resume (exit code {EXIT_CODE})"


class Watcher:
    """Signal handlers for the length of a training run (a context manager; a no-op outside the main thread)."""

    def __init__(self, multi_process: bool | None = None):
        self.multi_process = jax.process_count() > 1 if multi_process is None else multi_process
        self.signal_name: str | None = None  # the first signal received
        self.signum: int | None = None
        self._answered = False  # a stop was ordered (should_stop said so, or a phase was interrupted)
        self._interruptible = False
        self._previous: dict = {}

    def __enter__(self) -> Watcher:
        if threading.current_thread() is threading.main_thread():
            # Several processes: SIGTERM stays with JAX's preemption notifier, which agrees on the step.
            for signum in (signal.SIGINT,) if self.multi_process else SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self.signum is not None and not self._answered and exc_type is None and not self.multi_process:
            # Received after the last step's check (in the final save): the caller (a sweep, the pipeline) must
            # still stop, so the signal goes on to the handler it had.
            signal.raise_signal(self.signum)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            logging.warning("%s received again: still stopping; the last finished checkpoint stays intact", name)
            return
        self.signal_name, self.signum = name, signum
        logging.warning("%s received: stopping after the step in flight, with a checkpoint", name)
        if self.multi_process:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's notifier: every process stops at the same step
        elif self._interruptible:
            self._answered = True
            raise Interrupted(name)

    def should_stop(self, step: int) -> bool:
        """Whether to save `step` and stop. Several processes must call this at every step, in step."""
        if self.multi_process:
            from jax.experimental import multihost_utils

            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # jax_enable_preemption_service off: no notices to agree on
                return False
        self._answered = self.signal_name is not None
        return self._answered

    @contextlib.contextmanager
    def interruptible(self):
        """A phase a signal may abort at once (one process only: several must stay in step for collectives)."""
        if self.signal_name is not None and not self.multi_process:
            self._answered = True
            raise Interrupted(self.signal_name)
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def run_interruptibly(self, fn: Callable[[], T]) -> T:
        """fn() in a daemon thread while this (main) thread waits where a signal handler can run and raise:
        a compilation is one long C++ call that would otherwise hold the handler until it returns."""
        with self.interruptible():
            if self.multi_process or threading.current_thread() is not threading.main_thread():
                return fn()
            done, box = threading.Event(), {}

            def target():
                try:
                    box["value"] = fn()
                except BaseException as error:  # handed to the waiting thread
                    box["error"] = error
                done.set()

            threading.Thread(target=target, daemon=True, name="fcn_jax-compile").start()
            while not done.wait(0.2):
                pass
            if "error" in box:
                raise box["error"]
            return box["value"]
