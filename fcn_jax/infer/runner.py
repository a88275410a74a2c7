"""The one inference runner: a model over images in one inference mode, for predict, evaluate and validation.

    runner = Runner(apply_fn, heads, mesh, normalization=..., mode=..., batch_size=..., pad_multiple=..., buckets=...)
    runner.masks(params, [(key, uint8 image), ...])      -> (key, image, mask), ...    predict, the pipeline
    runner.scores(params, [(uint8 image, label), ...])   -> steps.Scores                evaluate, validation in a mode
    runner.score_batches(params, padded host batches)    -> steps.Scores                validation (input batches)
The plain mode runs the compiled eval / predict step on batches of one padded shape (each image's own size padded to
`pad_multiple`, or its bucket: batching.bucket_shapes), normalised and batched in a background thread. Any other
mode (windows, flip, scales: infer.modes) runs one image at a time through its logits. Params come with every call:
validation passes training's current ones, the command lines a Network's.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from fcn_jax.core.constants import IGNORE_LABEL
from fcn_jax.core.normalization import check_normalization, normalize
from fcn_jax.infer import batching, dense_crf, modes, steps


def check_options(mode: modes.Mode, buckets: int, batch_size: int, pad_multiple: int) -> None:
    """A ValueError naming the first option that cannot work (the command lines check their flags with it before
    loading anything)."""
    if buckets < 0:
        raise ValueError(f"--buckets must be >= 0 (0: one shape per size), got {buckets}")
    if buckets and not mode.plain:
        raise ValueError("--buckets bounds the shapes of whole-image inference; with --window / --flip / --scales / "
                         "--crf images run one at a time (windows compile once)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batching.padded_shape(1, 1, pad_multiple)  # pad_multiple >= 1


class Runner:
    """A model (its apply_fn, score heads and mesh) run in one inference mode; compiled steps are kept between calls,
    so every padded shape compiles once."""

    def __init__(self, apply_fn, heads: tuple[tuple[str, int], ...], mesh: Mesh, *, normalization: str,
                 mode: modes.Mode = modes.Mode(), batch_size: int = 1, pad_multiple: int = 1,
                 buckets: dict | None = None):
        check_options(mode, len(buckets or ()), batch_size, pad_multiple)
        self.apply_fn, self.heads, self.mesh, self.mode = apply_fn, tuple(heads), mesh, mode
        self.normalization = check_normalization(normalization)
        self.rows = batching.global_batch_size(batch_size, mesh)
        self.pad_multiple, self.buckets = pad_multiple, buckets
        self._compiled: dict[str, steps.CompiledSteps] = {}
        self._logit_steps = modes.LogitSteps(apply_fn, mesh, batch_size)  # compiled only once used

    @classmethod
    def of(cls, network, **options) -> Runner:
        """The runner of an infer.network.Network (its normalisation, heads and mesh)."""
        return cls(network.model.apply, network.heads, network.mesh,
                   normalization=network.settings["normalization"], **options)

    # ------------------------------------------------------------------------- statistics of the compiled steps

    def _all_steps(self) -> list[steps.CompiledSteps]:
        return list(self._compiled.values()) + [self._logit_steps.steps]

    @property
    def compilations(self) -> int:
        return sum(s.compilations for s in self._all_steps())

    @property
    def compile_s(self) -> float:
        return sum(s.compile_s for s in self._all_steps())

    @property
    def run_s(self) -> float:
        return sum(s.run_s for s in self._all_steps())

    # ------------------------------------------------------------------------- running

    def _steps(self, kind: str) -> steps.CompiledSteps:
        if kind not in self._compiled:
            make = steps.eval_steps if kind == "eval" else steps.predict_steps
            self._compiled[kind] = make(self.apply_fn, self.heads, self.mesh)
        return self._compiled[kind]

    def _shape_of(self, image_of: Callable) -> Callable:
        return batching.batch_shape_of(self.pad_multiple, self.buckets, image_of)

    def _logits(self, params: Any, image: np.ndarray) -> np.ndarray:
        """(H, W, classes of all heads) float32 logits of one uint8 image in this mode."""
        run = functools.partial(self._logit_steps, params)
        logits = modes.image_logits(run, normalize(image, self.normalization), self.mode)
        if self.mode.crf is not None:
            logits = dense_crf.refine(logits, image, self.mode.crf, self.heads)
        return logits

    def logits(self, params: Any, images: Iterable[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, np.ndarray]]:
        """(key, uint8 RGB image) pairs -> (key, (H, W, classes of all heads) float32 logits), one image at a time,
        in order (what a study of the samples reads probabilities from). Plain mode: the image padded bottom/right
        to the runner's pad_multiple (one compilation a padded shape, as masks() and scores() pad) and its logits
        cropped back."""
        if not self.mode.plain or self.pad_multiple == 1:
            for key, image in batching.prefetch(images):
                yield key, self._logits(params, image)
            return
        for key, image in batching.prefetch(images):
            height, width = image.shape[:2]
            padded = batching.pad_stack([normalize(image, self.normalization)],
                                        batching.padded_shape(height, width, self.pad_multiple), 1, 0.0, np.float32)
            yield key, self._logit_steps(params, [padded[0]])[0][:height, :width]

    def masks(self, params: Any, images: Iterable[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, np.ndarray, Any]]:
        """(key, uint8 RGB image) pairs -> (key, image, (H, W) uint8 mask; (H, W, heads) for several heads).

        Plain mode: in groups of one padded shape, so the order follows the groups, not the input."""
        if not self.mode.plain:
            for key, image in batching.prefetch(images):
                yield key, image, steps.head_masks(self._logits(params, image), self.heads)
            return
        predict, shape_of = self._steps("predict"), self._shape_of(lambda item: item[1])

        def batches():  # run by batching.prefetch's thread
            for group in batching.batches_by_shape(images, shape_of, self.rows):
                yield group, batching.pad_stack([normalize(image, self.normalization) for _, image in group],
                                                shape_of(group[0]), self.rows, 0.0, np.float32)

        for group, batch in batching.prefetch(batches()):
            masks = jax.device_get(predict(params, {"image": batch}))
            for (key, image), mask in zip(group, masks):
                yield key, image, mask[:image.shape[0], :image.shape[1]]

    def scores(self, params: Any, examples: Iterable[tuple], progress: Callable[[int], None] = lambda n: None
               ) -> steps.Scores:
        """Scores over (uint8 image, label, ...) examples, labels (H, W) or (H, W, heads); progress(n) as n more
        images are scored."""
        if not self.mode.plain:  # one image at a time, each at its own size (windows, flips and scales batched inside)
            scores = steps.Scores(self.heads)
            for image, label, *_ in batching.prefetch(examples):
                scores.add(modes.scores(self._logits(params, image), label, self.heads))
                progress(1)
            return scores
        shape_of = self._shape_of(lambda example: example[0])

        def batches():  # run by batching.prefetch's thread
            for group in batching.batches_by_shape(examples, shape_of, self.rows):
                shape = shape_of(group[0])
                yield {"image": batching.pad_stack([normalize(image, self.normalization) for image, *_ in group],
                                                   shape, self.rows, 0.0, np.float32),
                       "label": batching.pad_stack([label for _, label, *_ in group], shape, self.rows, IGNORE_LABEL,
                                                   np.int32),
                       "size": len(group)}

        return self.score_batches(params, batching.prefetch(batches()),
                                  on_batch=lambda out, batch: progress(batch["size"]))

    def score_batches(self, params: Any, batches: Iterable[dict],
                      on_batch: Callable[[dict, dict], None] | None = None) -> steps.Scores:
        """Scores over host batches {'image': normalised, padded float32, 'label': padded with the ignore label, ...}
        (the plain mode's eval step, compiled per batch shape); on_batch(outputs, batch) after each."""
        eval_steps, scores = self._steps("eval"), steps.Scores(self.heads)
        for batch in batches:
            out = eval_steps(params, {"image": batch["image"], "label": batch["label"]})
            scores.add(out)
            if on_batch is not None:
                on_batch(out, batch)
        return scores
