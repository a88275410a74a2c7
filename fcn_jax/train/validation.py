"""Validation during training: the eval split scored by the current params (infer.runner), and a few sample masks
saved."""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np

from fcn_jax.data import dataset_info, examples, input_pipeline, label_checks, visualize
from fcn_jax.infer import evaluation
from fcn_jax.infer.runner import Runner
from fcn_jax.models import zoo
from fcn_jax.weights import artifacts


def eval_batch_sizes(config, num_devices: int) -> tuple[int, int]:
    """(global, per-process) eval batch: the configured size rounded up to a multiple of the devices."""
    global_size = -(-config.eval.batch_size // num_devices) * num_devices
    return global_size, global_size // jax.process_count()


def validate(params: Any, step: int, *, config, eval_source, runner: Runner, workdir: str,
             info: dataset_info.Heads) -> dict:
    """Scores over the whole eval split and a few sample masks of process 0, run by `runner` in config.eval's mode:
    the plain one on input_pipeline batches padded to eval.pad_size (one compilation, split over processes), another
    (sliding windows, flip, scales) image by image at each image's own size, without sample masks."""
    heads = zoo.head_specs(config.model.num_classes, config.model.heads)
    if runner.mode.plain:
        _, per_process = eval_batch_sizes(config, runner.mesh.devices.size)
        batches = input_pipeline.eval_batches(
            eval_source, batch_size=per_process, pad_size=tuple(config.eval.pad_size) or None,
            normalization=config.data.normalization, process_index=jax.process_index(),
            process_count=jax.process_count(), num_classes=tuple(k for _, k in heads))
        sample_dir = os.path.join(workdir, artifacts.SAMPLES_DIR, f"step_{step:06d}")
        saved = [0]

        def save_samples(out: dict, batch: dict) -> None:
            if jax.process_index() == 0 and saved[0] < config.eval.num_samples:  # one writer
                saved[0] += _save_samples(out["prediction"], batch, sample_dir, config.eval.num_samples - saved[0],
                                          info[0][1].palette())

        scores = runner.score_batches(params, batches, on_batch=save_samples)
    else:  # single process (checked in config_checks.validate_config)
        if config.eval.num_samples:
            logging.info("validation in an inference mode saves no sample masks")
        scores = runner.scores(params, examples.checked_examples(eval_source, tuple(k for _, k in heads)))
    result = scores.result()
    for index, (name, head_info) in enumerate(info):  # metrics.jsonl names the classes
        suffix = f"_{name}" if index else ""
        result.update(evaluation.named_classes(result, head_info.classes, suffix))
        warning = label_checks.unlabelled_warning(head_info, scores.confusions[suffix].sum(axis=1),
                                                  f"in {config.data.eval_split}")
        if warning and jax.process_index() == 0:  # IU n/a, mean IU over the other classes: not to pass silently
            logging.warning("step %d%s: %s", step, f" head {name}" if index else "", warning)
    logging.info("step %d %s: pixel acc %.4f  mean acc %.4f  mean IU %.4f  fw IU %.4f (%d eval compilation(s))",
                 step, config.data.eval_split, result["pixel_acc"], result["mean_acc"], result["mean_iou"],
                 result["fw_iou"], runner.compilations)
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
