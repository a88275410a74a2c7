"""Runs a module as __main__ in a process where TensorFlow cannot be imported, as on GPU and TPU images without it:

    python -m tests.no_tensorflow fcn_jax.main --config experiments/demo.py --workdir ...

Every import finder is wrapped to find no `tensorflow`: `import tensorflow` raises ModuleNotFoundError and
importlib.util.find_spec("tensorflow") is None, what tfds and etils check. (`sys.modules["tensorflow"] = None`
blocks the import too, but tfds takes any "tensorflow" key in sys.modules for TensorFlow being loaded and then
fails to import itself.)
"""
import runpy
import sys


class _WithoutTensorFlow:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            return None
        find_spec = getattr(self.finder, "find_spec", None)
        return find_spec(name, path, target) if find_spec else None

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()


def block_tensorflow() -> None:
    sys.meta_path[:] = [_WithoutTensorFlow(finder) for finder in sys.meta_path]


if __name__ == "__main__":
    block_tensorflow()
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
