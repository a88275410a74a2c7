"""Test setup: 8 fake CPU devices so data-parallel code is exercised without accelerators.

Must run before jax is imported anywhere, hence here, and so must the session's XLA compilation cache below.
tests/ mirrors the package (tests/<subpackage>/<module>_test.py, the command lines' tests at the top); test
modules share helpers by importing each other by name, so every test folder is on the import path.
"""
import atexit
import os
import pathlib
import shutil
import sys
import tempfile

# LLVM at -O0: the suite compiles far more than it computes (small shapes), so compile time is most of its time;
# HLO passes are unchanged and every comparison holds its stated tolerance.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One XLA compilation cache for the session (its subprocesses included): the suite compiles the same tiny models
# many times over. Fresh each session, removed at exit, so no run reads another's.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="fcn_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

_TESTS = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(_TESTS)] + sorted(str(p) for p in _TESTS.iterdir() if p.is_dir() and p.name != "fixtures")
