"""Validation during training: the eval split scored by the current params, and a few sample masks saved.

The plain mode runs inference.eval_step on padded batches (one compilation); a config.eval inference mode
(fcn_jax.modes: sliding windows, flip, scales) runs each image at its own size instead.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from fcn_jax import artifacts, dataset_info, inference, models, modes, visualize


def eval_batch_sizes(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
    """(global, per-process) eval batch: the configured size rounded up to a multiple of the devices."""
    global_size = -(-config.eval.batch_size // num_devices) * num_devices
    return global_size, global_size // jax.process_count()


# ----------------------------------------------------------------------------- validation during training


def validate(params: Any, step: int, *, config: ml_collections.ConfigDict, eval_source, steps: inference.CompiledSteps,
             workdir: str, info: dataset_info.Heads, logit_steps: modes.LogitSteps) -> dict:
    """Scores over the whole eval split (padded to eval.pad_size), and a few sample masks of process 0; with a
    config.eval inference mode (sliding windows, flip, scales) through `logit_steps`, without sample masks."""
    from fcn_jax import input_pipeline

    _, per_process = eval_batch_sizes(config, steps.mesh.devices.size)
    heads = models.head_specs(config.model.num_classes, config.model.heads)
    dataset = input_pipeline.eval_dataset(
        eval_source, batch_size=per_process, pad_size=tuple(config.eval.pad_size) or None,
        normalization=config.data.normalization, process_index=jax.process_index(),
        process_count=jax.process_count(), num_classes=tuple(k for _, k in heads))
    sample_dir = os.path.join(workdir, artifacts.SAMPLES_DIR, f"step_{step:06d}")
    saved = [0]

    def save_samples(out: dict, batch: dict) -> None:
        if jax.process_index() == 0 and saved[0] < config.eval.num_samples:  # one writer
            saved[0] += _save_samples(out["prediction"], batch, sample_dir, config.eval.num_samples - saved[0],
                                      info[0][1].palette())

    mode = modes.Mode.from_settings(config.eval.window, config.eval.stride, config.eval.flip, config.eval.scales)
    if mode.plain:
        scores = inference.score(steps, params, input_pipeline.numpy_batches(dataset), heads, on_batch=save_samples)
    else:  # each image at its own size through the mode (single process: checked in validate_config)
        logit_steps.params, scores = params, inference.Scores(heads)
        if config.eval.num_samples:
            logging.info("validation in an inference mode saves no sample masks")
        for batch in input_pipeline.numpy_batches(dataset):
            for i in np.flatnonzero(batch["height"]):
                h, w = int(batch["height"][i]), int(batch["width"][i])
                logits = modes.image_logits(logit_steps, batch["image"][i, :h, :w], mode)
                scores.add(modes.scores(logits, batch["label"][i, :h, :w], heads))
    result = scores.result()
    for index, (name, head_info) in enumerate(info):  # metrics.jsonl names the classes
        key = "per_class_iou" + (f"_{name}" if index else "")
        result[key] = dict(zip(head_info.classes, result[key]))
    logging.info("step %d %s: pixel acc %.4f  mean acc %.4f  mean IU %.4f  fw IU %.4f (%d eval compilation(s))",
                 step, config.data.eval_split, result["pixel_acc"], result["mean_acc"], result["mean_iou"],
                 result["fw_iou"], steps.compilations if mode.plain else logit_steps.steps.compilations)
    return result


def _save_samples(prediction: jax.Array, batch: dict, directory: str, limit: int, palette: np.ndarray) -> int:
    """Predicted and ground-truth palette PNGs of this process's first real images."""
    os.makedirs(directory, exist_ok=True)
    shards = sorted(prediction.addressable_shards, key=lambda s: s.index[0].start or 0)
    local = np.concatenate([np.asarray(s.data) for s in shards])  # this process's rows, in order
    saved = 0
    for i, image_id in enumerate(batch["id"]):
        image_id = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
        if not image_id or saved >= limit:
            continue
        h, w = int(batch["height"][i]), int(batch["width"][i])
        prediction, label = local[i, :h, :w], batch["label"][i, :h, :w].astype(np.uint8)
        if prediction.ndim == 3:  # several heads: the first one's masks
            prediction, label = prediction[..., 0], label[..., 0]
        visualize.save_mask(prediction, os.path.join(directory, f"{image_id}_pred.png"), palette)
        visualize.save_mask(label, os.path.join(directory, f"{image_id}_gt.png"), palette)
        saved += 1
    return saved
