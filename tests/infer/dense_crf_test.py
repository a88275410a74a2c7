"""infer/dense_crf.py: the CRF inference mode's padded, capacity-sized calls equal the CRF computed directly, head by
head; the settings stored with weights."""
import dataclasses

import jax
import numpy as np
import pytest

from fcn_jax.infer import dense_crf
from fcn_jax.models import crf

SETTINGS = crf.CRFSettings(iterations=2, gaussian_sxy=2.0, bilateral_sxy=6.0, bilateral_srgb=15.0)


def test_refine_equals_the_direct_crf_of_each_head_on_an_odd_size():
    rng = np.random.default_rng(0)
    height, width = 13, 19  # 247 pixels: padded to a bucket of 4096 with pixels of zero weight
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[:, :9] //= 4
    logits = rng.normal(0, 2, (height, width, 5)).astype(np.float32)
    refined = dense_crf.refine(logits, image, SETTINGS, (("sem", 3), ("geo", 2)))
    direct = jax.jit(crf.crf_logits, static_argnums=2)
    for start, stop in ((0, 3), (3, 5)):
        np.testing.assert_allclose(refined[..., start:stop], direct(logits[..., start:stop], image, SETTINGS),
                                   rtol=1e-5, atol=1e-5)
    assert (refined.argmax(-1) != logits.argmax(-1)).any()


def test_settings_stored_with_weights_round_trip_and_a_bad_file_is_one_error(tmp_path):
    weights = tmp_path / "run"
    (weights / "checkpoints").mkdir(parents=True)
    assert dense_crf.stored_settings(str(weights)) is None
    best = dataclasses.replace(SETTINGS, bilateral_weight=4.0)
    path = dense_crf.store_settings(str(weights), best, chosen_by="test")
    assert path == str(weights / "crf.json")
    assert dense_crf.stored_settings(str(weights / "checkpoints")) == best  # the checkpoints dir finds it too
    (weights / "crf.json").write_text('{"settings": {"bilateral_srgb": 0}}')
    with pytest.raises(ValueError, match=r"crf.json: CRF bilateral_srgb must be > 0, got 0"):
        dense_crf.stored_settings(str(weights))
