"""Test setup: 8 fake CPU devices so data-parallel code is exercised without accelerators.

Must run before jax is imported anywhere, hence here. tests/ mirrors the package (tests/<subpackage>/<module>_test.py,
the command lines' tests at the top); test modules share helpers by importing each other by name, so every test
folder is on the import path.
"""
import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

_TESTS = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(_TESTS)] + sorted(str(p) for p in _TESTS.iterdir() if p.is_dir() and p.name != "fixtures")
