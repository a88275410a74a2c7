"""The package as a whole: its compute core runs without TensorFlow, and its modules and functions stay small."""
import ast
import os
import subprocess
import sys
import textwrap

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fcn_jax")
TF_MODULES = ("input_pipeline", "voc_dataset", "folder_dataset")  # the only users of tf.data / tfds

NO_TF_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["tensorflow"] = sys.modules["tensorflow_datasets"] = None  # any import of them now fails
    import functools, importlib, os
    import jax, jax.numpy as jnp, numpy as np
    from PIL import Image
    from experiments import demo

    for name in {modules!r}:
        importlib.import_module("fcn_jax." + name)
    from fcn_jax import checkpoints, inference, parallel, predict, train

    config = demo.get_config()
    config.model.width = 1 / 32
    model = train.create_model(config.model)
    state = train.create_train_state(config, model, train.init_key(0), (2, 32, 32, 3))
    rng = np.random.default_rng(0)
    batch = {{"image": jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 21, (2, 32, 32)), jnp.int32)}}
    step = jax.jit(functools.partial(train.train_step, loss_reduction="mean", num_classes=21))
    new_state, out = step(state, batch, jax.random.PRNGKey(0))
    assert int(new_state.step) == 1 and bool(out["finite"])
    evaluated = jax.jit(functools.partial(inference.eval_step, apply_fn=model.apply, heads=(("", 21),)))(
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
    logits = model.apply({{"params": params}}, inference.normalize(decoded, "caffe_bgr")[None])
    np.testing.assert_array_equal(mask, np.asarray(jnp.argmax(logits, -1)[0]))
    assert not any(name.startswith("tensorflow") and sys.modules[name] is not None for name in sys.modules)
    print("ok without tensorflow")
""")


def test_every_module_but_the_data_ones_imports_trains_evaluates_and_predicts_without_tensorflow(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(PACKAGE), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    completed = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT.format(modules=_modules(without=TF_MODULES)), str(tmp_path)],
                               capture_output=True, text=True, timeout=300, env=env, cwd=os.path.dirname(PACKAGE))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("ok without tensorflow")


def _modules(without=()):
    names = (name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py")
    return sorted(name for name in names if name not in without)


@pytest.mark.parametrize("name", _modules())
def test_modules_and_functions_stay_small(name):
    with open(os.path.join(PACKAGE, f"{name}.py")) as f:
        source = f.read()
    assert source.count("\n") <= 400, f"{name} has {source.count(chr(10))} lines"
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, f"{name}: functions over 80 lines: {long}"
