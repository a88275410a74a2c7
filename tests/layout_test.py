"""The package's shape: layers that import only the layers below them, no import cycles, command lines apart from the
library, small modules and functions, and a compute core that runs without TensorFlow."""
import ast
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fcn_jax"
# Each subpackage may import itself and the layers listed here (docs/architecture.md draws this map).
LAYERS = {
    "core": set(),
    "models": {"core"},
    "data": {"core"},
    "weights": {"core", "models"},
    "infer": {"core", "models", "data", "weights"},
    "train": {"core", "models", "data", "weights", "infer"},
    "flows": {"core", "models", "data", "weights", "infer", "train"},
}
TFDS_MODULES = ("fcn_jax.data.voc_builder", "fcn_jax.data.folder_builder")  # tfds; TensorFlow only to prepare


def _modules() -> dict[str, pathlib.Path]:
    """Every module of the package by dotted name (a subpackage by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()
CLIS = {name for name, path in MODULES.items() if "__main__" in path.read_text()}


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """The package modules `name` imports anywhere in it (function bodies too): `from a import b` counts as a.b when
    b is a module, else as a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base] * bool(base))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def _cycle() -> list[str] | None:
    """One import cycle of the package's modules (ignoring a package's __init__ being imported with it), or None."""
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target] if target in path else [module, target]
            if target not in state and (found := visit(target, path + [target])):
                return found
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state and (found := visit(module, [module])):
            return found
    return None


def test_the_layout_checker_sees_the_imports_it_checks():
    """The graph is not vacuous: known arrows of the package are in it, function-level imports included."""
    assert "fcn_jax.train.step" in GRAPH["fcn_jax.train.job"]
    assert "fcn_jax.data.synthetic" in GRAPH["fcn_jax.data.sources"]  # imported inside Source.load()
    assert "fcn_jax.infer.runner" in GRAPH["fcn_jax.predict"]
    assert CLIS == {f"fcn_jax.{name}" for name in ("main", "predict", "evaluate", "export", "convert", "ablate",
                                                  "pipeline", "study", "crf_search", "synthetic", "folder_dataset",
                                                  "voc_dataset")} | {
        "fcn_jax.infer.exported_segment"}  # the standalone script copied into export folders


def test_there_is_no_import_cycle():
    assert _cycle() is None, f"import cycle: {' -> '.join(_cycle())}"


def test_no_module_imports_a_command_line_module():
    offending = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets if t in CLIS)
    assert not offending, offending


def test_each_layer_imports_only_the_layers_below_it():
    offending = []
    for module, targets in GRAPH.items():
        layer = _layer(module)
        if layer is None:
            continue
        for target in targets:
            other = _layer(target)
            if other is not None and other != layer and other not in LAYERS[layer]:
                offending.append(f"{module} -> {target}")
    assert not offending, offending


def test_the_top_level_holds_only_command_lines_and_the_layers():
    top = {name.split(".")[1] for name in MODULES if name.count(".") >= 1}
    assert top == set(LAYERS) | {name.split(".")[1] for name in CLIS if name.count(".") == 1}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_small(name):
    source = MODULES[name].read_text()
    assert source.count("\n") <= 400, f"{name} has {source.count(chr(10))} lines"
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, f"{name}: functions over 80 lines: {long}"


NO_TF_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["tensorflow"] = sys.modules["tensorflow_datasets"] = None  # any import of them now fails
    import functools, importlib, os
    import jax, jax.numpy as jnp, numpy as np
    from PIL import Image
    from experiments import demo

    for name in {modules!r}:
        importlib.import_module(name)
    from fcn_jax import predict
    from fcn_jax.core import parallel
    from fcn_jax.core.normalization import normalize
    from fcn_jax.infer import steps
    from fcn_jax.models import zoo
    from fcn_jax.train import step
    from fcn_jax.weights import checkpoints

    config = demo.get_config()
    config.model.width = 1 / 32
    model = zoo.from_settings(config.model)
    state = step.create_train_state(config, model, step.init_key(0), (2, 32, 32, 3))
    rng = np.random.default_rng(0)
    batch = {{"image": jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 21, (2, 32, 32)), jnp.int32)}}
    train_step = jax.jit(functools.partial(step.train_step, loss_reduction="mean", num_classes=21))
    new_state, out = train_step(state, batch, jax.random.PRNGKey(0))
    assert int(new_state.step) == 1 and bool(out["finite"])
    evaluated = jax.jit(functools.partial(steps.eval_step, apply_fn=model.apply, heads=(("", 21),)))(
        new_state.params, batch)
    assert int(evaluated["confusion"].sum()) == 2 * 32 * 32

    tmp = sys.argv[1]
    params = jax.tree.map(lambda x: np.asarray(x) + 0.01 * rng.normal(size=x.shape).astype(np.float32),
                          jax.device_get(new_state.params))
    checkpoints.save_params(os.path.join(tmp, "weights"), params, {{
        "format": "test", "variant": "fcn8s", "num_classes": 21, "width": 1 / 32, "geometry": "same",
        "normalization": "caffe_bgr"}})
    image = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    Image.fromarray(image).save(os.path.join(tmp, "photo.jpg"), quality=95)
    assert predict.main(["--weights", os.path.join(tmp, "weights"), "--input", os.path.join(tmp, "photo.jpg"),
                         "--output", os.path.join(tmp, "out")]) == 0
    mask = np.asarray(Image.open(os.path.join(tmp, "out", "photo.png")))
    decoded = np.asarray(Image.open(os.path.join(tmp, "photo.jpg")).convert("RGB"))
    logits = model.apply({{"params": params}}, normalize(decoded, "caffe_bgr")[None])
    np.testing.assert_array_equal(mask, np.asarray(jnp.argmax(logits, -1)[0]))
    assert not any(name.startswith("tensorflow") and sys.modules[name] is not None for name in sys.modules)
    print("ok without tensorflow")
""")


def test_every_module_but_the_tfds_builders_imports_trains_evaluates_and_predicts_without_tensorflow(tmp_path):
    modules = sorted(name for name in MODULES if name not in TFDS_MODULES)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    completed = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT.format(modules=modules), str(tmp_path)],
                               capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("ok without tensorflow")
