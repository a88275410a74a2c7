"""Inference modes beyond one whole-image pass: sliding windows and test-time augmentation (flip, scales).

Every mode gives the float32 logits of one image at its own size, (H, W, classes of all heads):
  window/stride  the image (padded bottom/right with the mean pixel up to at least one window) is cut into
                 windows of one fixed shape, so the network compiles once whatever the image size (the small
                 per-image scoring and resizing steps still compile per shape); windows run in batches and
                 overlapping logits are averaged. A window equal to the image is exactly whole-image inference,
                 a larger one inference on the mean-padded image.
  flip           the horizontally flipped image too; its logits flipped back and averaged in.
  scales         the image resized (bilinear) by each factor, run (whole or in windows), its logits resized
                 back to the image size (bilinear) and averaged. scales (1.0,) without flip is the plain pass.
  crf            the dense CRF (models.crf, infer.dense_crf) over the image's pixels, after the others.
infer.runner runs predict, evaluate and validation in a Mode; the plain one keeps the batched fast path.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.core import parallel
from fcn_jax.infer import batching, steps
from fcn_jax.models.crf import CRFSettings


@dataclasses.dataclass(frozen=True)
class Mode:
    window: tuple[int, int] | None = None  # (height, width) of the sliding window; None = the whole image
    stride: tuple[int, int] | None = None  # between window starts; None = the window (no overlap)
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    crf: CRFSettings | None = None  # the dense CRF's parameters; None = no CRF

    def __post_init__(self):
        if self.window is not None and (len(self.window) != 2 or min(self.window) < 1):
            raise ValueError(f"window {self.window} must be (height, width), both positive")
        if self.stride is not None and (self.window is None or len(self.stride) != 2 or min(self.stride) < 1
                                        or any(s > w for s, w in zip(self.stride, self.window))):
            raise ValueError(f"stride {self.stride} needs a window and must be positive and at most the window "
                             f"{self.window} (a larger stride would leave pixels without a prediction)")
        if not self.scales or not all(math.isfinite(s) and 0 < s <= 16 for s in self.scales):
            raise ValueError(f"scales {self.scales} must be finite positive factors (at most 16)")

    @property
    def plain(self) -> bool:
        return self.window is None and not self.flip and tuple(self.scales) == (1.0,) and self.crf is None

    @classmethod
    def from_settings(cls, window=(), stride=(), flip=False, scales=(1.0,), crf=None) -> Mode:
        """From config / flag values, where () means unset; crf: a config.eval.crf section (used when its
        `enabled`), or CRFSettings."""
        if crf is not None and not isinstance(crf, CRFSettings):
            crf = CRFSettings.from_mapping(crf) if crf.get("enabled") else None
        return cls(tuple(int(v) for v in window) or None, tuple(int(v) for v in stride) or None, bool(flip),
                   tuple(float(s) for s in scales) or (1.0,), crf)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Starts of windows covering [0, size): every `stride`, the last one flush with the end."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    return starts + [size - window]


class LogitSteps:
    """A model's float32 logits for a list of same-shape normalised images, `rows` at a time, compiled once per
    shape: `logit_steps(params, images)` with the params replicated over `mesh`."""

    def __init__(self, apply_fn, mesh, rows: int):
        def logits(params, batch):
            return apply_fn({"params": params}, batch["image"], train=False).astype(jnp.float32)

        self.rows = batching.global_batch_size(rows, mesh)
        self.steps = steps.CompiledSteps(logits, mesh, parallel.batch_sharded(mesh))

    def __call__(self, params, images: list[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.rows):
            chunk = images[start:start + self.rows]
            batch = batching.pad_stack(chunk, chunk[0].shape[:2], self.rows, 0.0, np.float32)
            out.append(jax.device_get(self.steps(params, {"image": batch}))[:len(chunk)])
        return np.concatenate(out)


def sliding_logits(run: Callable[[list], np.ndarray], image: np.ndarray, window: tuple[int, int],
                   stride: tuple[int, int] | None) -> np.ndarray:
    """(H, W, C) logits of a normalised (H, W, 3) image, averaged over fixed-shape windows; `run(images)` gives the
    logits of a list of same-shape images (a LogitSteps with its params)."""
    stride = stride or window
    height, width = image.shape[:2]
    padded = batching.pad_stack([image], (max(height, window[0]), max(width, window[1])), 1, 0.0, np.float32)[0]
    corners = [(top, left) for top in window_starts(padded.shape[0], window[0], stride[0])
               for left in window_starts(padded.shape[1], window[1], stride[1])]
    logits = run([padded[t:t + window[0], s:s + window[1]] for t, s in corners])
    total = np.zeros(padded.shape[:2] + logits.shape[-1:], np.float32)
    count = np.zeros(padded.shape[:2] + (1,), np.float32)
    for (top, left), window_logits in zip(corners, logits):
        total[top:top + window[0], left:left + window[1]] += window_logits
        count[top:top + window[0], left:left + window[1]] += 1
    return (total / count)[:height, :width]


@functools.partial(jax.jit, static_argnames="shape")
def _bilinear(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.image.resize(x, shape, "bilinear")


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if x.shape[:2] == tuple(size):
        return x
    return np.asarray(_bilinear(jnp.asarray(x), (*size, x.shape[-1])))


def image_logits(run: Callable[[list], np.ndarray], image: np.ndarray, mode: Mode) -> np.ndarray:
    """(H, W, C) logits of one normalised (H, W, 3) image under `mode` (see the module docstring)."""
    height, width = image.shape[:2]
    total, passes = 0.0, 0
    for scale in mode.scales:
        scaled = _resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))
        for flipped in (False, True) if mode.flip else (False,):
            x = scaled[:, ::-1] if flipped else scaled
            logits = sliding_logits(run, x, mode.window, mode.stride) if mode.window else run([x])[0]
            total = total + _resize(logits[:, ::-1] if flipped else logits, (height, width))
            passes += 1
    return total / passes


_logit_scores = jax.jit(steps.logit_scores, static_argnames="heads")  # one compilation per image shape


def scores(logits: np.ndarray, label: np.ndarray, heads: tuple[tuple[str, int], ...]) -> dict:
    """What eval_step returns for one image's logits and label, for steps.Scores.add."""
    return _logit_scores(jnp.asarray(logits)[None], jnp.asarray(label, jnp.int32)[None], heads=tuple(heads))
