"""core/parallel.py: the 1-D data mesh, batch sharding, replication and the divisibility check."""
import jax
import numpy as np
import pytest

from fcn_jax.core import parallel


def test_mesh_spans_every_device_on_one_data_axis():
    mesh = parallel.create_mesh()
    assert mesh.axis_names == ("data",) and mesh.devices.size == jax.device_count() == 8


def test_host_batch_becomes_a_sharded_global_array_and_strings_stay_home():
    mesh = parallel.create_mesh()
    batch = {"image": np.arange(8 * 2 * 3, dtype=np.float32).reshape(8, 2, 3), "id": np.array([b"x"] * 8)}
    arrays = parallel.host_to_global(batch, mesh)
    assert set(arrays) == {"image"}
    image = arrays["image"]
    assert image.shape == (8, 2, 3) and len(image.addressable_shards) == 8
    assert all(shard.data.shape == (1, 2, 3) for shard in image.addressable_shards)
    np.testing.assert_array_equal(np.asarray(image), batch["image"])


def test_replicate_and_fetch_round_trip():
    mesh = parallel.create_mesh()
    tree = {"w": np.random.RandomState(0).randn(3, 4).astype(np.float32), "step": np.int32(5)}
    placed = parallel.replicate(tree, mesh)
    assert placed["w"].sharding.is_fully_replicated and len(placed["w"].addressable_shards) == 8
    fetched = parallel.fetch(placed)
    np.testing.assert_array_equal(fetched["w"], tree["w"])
    assert int(fetched["step"]) == 5


@pytest.mark.parametrize("size", [0, 4, 12])
def test_batch_size_must_divide_over_devices(size):
    with pytest.raises(ValueError, match=f"global batch size {size} is not divisible by the 8 devices"):
        parallel.check_batch_size(size, parallel.create_mesh())
    parallel.check_batch_size(16, parallel.create_mesh())
