"""The pure inference steps and their compiled forms: logits -> masks, confusion matrices and losses, summed.

    eval_step(params, batch) -> per head: confusion matrix, each image's mean IU, summed loss, valid pixels; and the
        predicted masks
    predict_step(params, batch) -> masks
    CompiledSteps: a step compiled once per batch shape over a mesh (compilations counted and timed)
    Scores: eval_step outputs summed over a split -> core.metrics.segmentation_metrics of each head
infer.runner runs them over images; training validation, evaluate, predict and the pipeline all go through it.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from fcn_jax.core import losses, metrics, parallel, xla_options


def _suffix(index: int, name: str) -> str:
    """Keys of the first head are plain ("confusion", "mean_iou"), the others' end in _<head name>."""
    return "" if index == 0 else f"_{name}"


def logit_scores(logits: jax.Array, labels: jax.Array, heads: tuple[tuple[str, int], ...]) -> dict:
    """Per head (models.zoo.head_specs): confusion matrix (summed over the batch), each image's mean IU (NaN for a
    padding image), summed loss and valid pixels; and the predicted masks, (B, H, W) or (B, H, W, heads)."""
    out, predictions = {}, []
    for index, ((name, classes), (head_logits, head_labels)) in enumerate(
            zip(heads, losses.split_heads(logits, labels, tuple(k for _, k in heads)))):
        prediction = jnp.argmax(head_logits, -1)
        suffix = _suffix(index, name)
        out[f"loss_sum{suffix}"], out[f"num_valid{suffix}"] = losses.pixel_cross_entropy(
            head_logits, head_labels, reduction="sum")
        confusions = metrics.image_confusions(prediction, head_labels, classes)  # (B, K, K)
        out[f"confusion{suffix}"] = confusions.sum(0)
        out[f"image_iou{suffix}"] = metrics.image_mean_iou(confusions)
        predictions.append(prediction)
    out["prediction"] = (predictions[0] if len(predictions) == 1 else jnp.stack(predictions, -1)).astype(jnp.uint8)
    return out


def eval_step(params: Any, batch: dict, *, apply_fn, heads: tuple[tuple[str, int], ...]) -> dict:
    """logit_scores of the network's logits on a global batch."""
    return logit_scores(apply_fn({"params": params}, batch["image"], train=False), batch["label"], heads)


def predict_step(params: Any, batch: dict, *, apply_fn, heads: tuple[tuple[str, int], ...]) -> jax.Array:
    """(B, H, W) uint8 class ids, the argmax of the logits; (B, H, W, heads) for several heads."""
    return head_masks(apply_fn({"params": params}, batch["image"], train=False), heads)


def head_masks(logits, heads: tuple[tuple[str, int], ...]):
    """uint8 argmax of each head's logits (NumPy or JAX arrays), stacked on a last axis for several heads."""
    masks = [x.argmax(-1) for x in losses.split_logits(logits, tuple(k for _, k in heads))]
    stack = np.stack if isinstance(logits, np.ndarray) else jnp.stack
    return (masks[0] if len(masks) == 1 else stack(masks, -1)).astype(np.uint8)


class CompiledSteps:
    """`step(params, batch)` compiled once per batch shape over `mesh`; counts compilations and times them.

    compile_s: seconds spent compiling; run_s: seconds in the compiled step (to results ready),
    host-to-device transfer excluded.
    """

    def __init__(self, step: Callable, mesh: Mesh, out_shardings):
        self._jitted = jax.jit(step, out_shardings=out_shardings,
                               compiler_options=xla_options.inference(mesh.devices.flat[0].platform))
        self.mesh = mesh
        self._compiled: dict[tuple, Any] = {}
        self.compile_s = self.run_s = 0.0

    @property
    def compilations(self) -> int:
        return len(self._compiled)

    def __call__(self, params: Any, batch: dict[str, np.ndarray]):
        arrays = parallel.host_to_global(batch, self.mesh)
        key = tuple(arrays["image"].shape)
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = self._jitted.lower(params, arrays).compile()
            self.compile_s += time.perf_counter() - start
        start = time.perf_counter()
        out = jax.block_until_ready(self._compiled[key](params, arrays))
        self.run_s += time.perf_counter() - start
        return out


def eval_steps(apply_fn, heads: tuple[tuple[str, int], ...], mesh: Mesh) -> CompiledSteps:
    """eval_step compiled per shape: statistics replicated, predicted masks left sharded by rows."""
    step = functools.partial(eval_step, apply_fn=apply_fn, heads=heads)
    replicated = parallel.replicated(mesh)
    shardings = {f"{key}{_suffix(i, name)}": replicated for i, (name, _) in enumerate(heads)
                 for key in ("confusion", "image_iou", "loss_sum", "num_valid")}
    return CompiledSteps(step, mesh, out_shardings={**shardings, "prediction": parallel.batch_sharded(mesh)})


def predict_steps(apply_fn, heads: tuple[tuple[str, int], ...], mesh: Mesh) -> CompiledSteps:
    """predict_step compiled per shape, masks sharded by rows."""
    step = functools.partial(predict_step, apply_fn=apply_fn, heads=heads)
    return CompiledSteps(step, mesh, out_shardings=parallel.batch_sharded(mesh))


# ----------------------------------------------------------------------------- scoring and segmenting


class Scores:
    """Sums eval_step outputs over a split: one confusion matrix per head, as the reference's score.py does."""

    def __init__(self, heads: tuple[tuple[str, int], ...]):
        self.suffixes = [_suffix(i, name) for i, (name, _) in enumerate(heads)]
        self.confusions = {s: np.zeros((k, k), np.int64) for s, (_, k) in zip(self.suffixes, heads)}
        self.loss_sums = dict.fromkeys(self.suffixes, 0.0)
        self.num_valids = dict.fromkeys(self.suffixes, 0)
        self.image_ious: dict[str, list[float]] = {s: [] for s in self.suffixes}  # images with a labelled pixel

    @property
    def confusion(self) -> np.ndarray:
        return self.confusions[""]

    @property
    def num_valid(self) -> int:
        return self.num_valids[""]

    def add(self, out: dict) -> None:
        stats = parallel.fetch({k: v for k, v in out.items() if k != "prediction"})
        for s in self.suffixes:
            self.confusions[s] += stats[f"confusion{s}"]
            self.loss_sums[s] += float(stats[f"loss_sum{s}"])
            self.num_valids[s] += int(stats[f"num_valid{s}"])
            self.image_ious[s] += [float(v) for v in np.asarray(stats[f"image_iou{s}"]) if not np.isnan(v)]

    def result(self) -> dict:
        """segmentation_metrics of each head's summed confusion and its mean loss per valid pixel; the first
        head's keys are plain, the others' end in _<head name>."""
        result = {}
        for s in self.suffixes:
            head = metrics.segmentation_metrics(self.confusions[s])
            head["loss"] = self.loss_sums[s] / max(self.num_valids[s], 1)
            head["per_image_mean_iou"] = float(np.mean(self.image_ious[s])) if self.image_ious[s] else float("nan")
            result.update({f"{k}{s}": v for k, v in head.items()})
        return result
