"""weights/checkpoints.py: retention (latest N + best mean IU), restore onto another mesh, params for init_from."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax.core import parallel
from fcn_jax.weights import checkpoints


def _state(mesh, value):
    tree = {"params": {"w": np.full((4, 3), value, np.float32)}, "step": np.int32(value)}
    return parallel.replicate(tree, mesh)


def test_keeps_latest_n_and_the_best_mean_iou(tmp_path):
    mesh = parallel.create_mesh()
    manager = checkpoints.create_manager(str(tmp_path / "checkpoints"), keep=2, async_save=True)
    rng = parallel.replicate(np.asarray(jax.random.PRNGKey(0)), mesh)
    ious = {1: 0.3, 2: 0.9, 3: 0.5, 4: None, 5: 0.4}
    for step, iou in ious.items():
        metrics = None if iou is None else {"mean_iou": iou}
        checkpoints.save(manager, step, _state(mesh, step), rng, {"step": step}, metrics=metrics)
    manager.wait_until_finished()
    assert manager.all_steps() == [2, 4, 5]  # step 2: best mean IU; 4, 5: the latest two
    manager.close()


def test_restore_onto_a_different_mesh(tmp_path):
    """Saved from 8 devices, restored onto 1 (and the reverse): values equal, shardings of the target."""
    eight, one = parallel.create_mesh(), parallel.create_mesh(jax.devices()[:1])
    rng = parallel.replicate(np.asarray(jax.random.PRNGKey(7)), eight)
    manager = checkpoints.create_manager(str(tmp_path), async_save=False)
    checkpoints.save(manager, 3, _state(eight, 3.5), rng, {"step": 3, "input_position": 3})
    target = _state(one, 0.0)
    state, restored_rng, meta = checkpoints.restore(manager, target, parallel.replicate(np.zeros(2, np.uint32), one))
    assert meta == {"step": 3, "input_position": 3}
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.full((4, 3), 3.5))
    assert state["params"]["w"].sharding.mesh.devices.size == 1
    np.testing.assert_array_equal(np.asarray(restored_rng), np.asarray(jax.random.PRNGKey(7)))
    manager.close()


def test_load_params_from_workdir_and_errors(tmp_path):
    mesh = parallel.create_mesh()
    manager = checkpoints.create_manager(str(tmp_path / "run" / "checkpoints"), async_save=False)
    rng = parallel.replicate(np.asarray(jax.random.PRNGKey(0)), mesh)
    for step in (1, 2):
        checkpoints.save(manager, step, _state(mesh, step), rng, {"step": step})
    manager.close()
    params = checkpoints.load_params(str(tmp_path / "run"))  # the latest step
    np.testing.assert_array_equal(params["w"], np.full((4, 3), 2.0))
    np.testing.assert_array_equal(checkpoints.load_params(str(tmp_path / "run" / "checkpoints"))["w"], params["w"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoints.load_params(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither a training checkpoint"):
        checkpoints.load_params(str(tmp_path / "empty"))


def test_abstract_like_keeps_shapes_dtypes_and_shardings():
    mesh = parallel.create_mesh()
    tree = parallel.replicate({"a": np.zeros((2, 3), np.float32), "b": np.zeros((), np.int32)}, mesh)
    abstract = checkpoints.abstract_like(tree)
    assert abstract["a"].shape == (2, 3) and abstract["a"].dtype == jnp.float32
    assert abstract["b"].dtype == jnp.int32 and abstract["a"].sharding == tree["a"].sharding
