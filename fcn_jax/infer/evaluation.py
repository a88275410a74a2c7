"""Scoring a network on labelled images: the paper's four scores and every class's IU, and their reports.

Scoring follows the reference (score.py): one confusion matrix summed over all images, nothing resized. Images are
batched by padded size; padded pixels carry label 255 and are never counted. With pad_multiple 1 every image runs at
its own size, as the reference net ran them, so the numbers are the reference protocol's; a larger pad_multiple or
buckets compile fewer shapes, but predictions near the bottom/right border may then differ slightly. A non-plain
mode (infer.modes) scores its logits instead, one image at a time.
"""
from __future__ import annotations

import json
import math

import numpy as np

from fcn_jax.core.constants import CLASS_SCORES, MORE_SCORES, SCORES
from fcn_jax.data import dataset_info, examples, label_checks
from fcn_jax.infer import batching, modes
from fcn_jax.infer.network import Network
from fcn_jax.infer.runner import Runner
from fcn_jax.weights import artifacts


def evaluate(network: Network, source, *, batch_size: int = 1, pad_multiple: int = 1, buckets: int = 0,
             progress: bool = False, mode: modes.Mode = modes.Mode()) -> dict:
    """Scores of `network` on every example of `source` (segmentation_metrics + loss, num_images, confusion), run
    by infer.runner over the network's mesh, at most `buckets` padded shapes if > 0 (batching.bucket_shapes)."""
    from tqdm import tqdm

    shapes = batching.bucket_shapes(examples.image_sizes(source), buckets, pad_multiple) if buckets else None
    runner = Runner.of(network, mode=mode, batch_size=batch_size, pad_multiple=pad_multiple, buckets=shapes)
    head_classes = tuple(k for _, k in network.heads)
    with tqdm(total=len(source), desc="evaluate", unit="image", disable=not progress, dynamic_ncols=True) as bar:
        scores = runner.scores(network.params, examples.checked_examples(source, head_classes), progress=bar.update)
    result = scores.result()
    result.update(num_images=len(source), num_pixels=scores.num_valid, compilations=runner.compilations,
                  confusion=scores.confusion.tolist())
    return result


def _head_keys(index: int, name: str) -> tuple[str, str]:
    """(key suffix of a head in a result, its title): the first head's keys are plain."""
    return ("", "") if index == 0 else (f"_{name}", f"head {name}: ")


def report(result: dict, heads: dataset_info.Heads) -> str:
    """The paper's four scores, then the per-image mean IU and mean precision / recall / F1, and a table of every
    class's IU, precision, recall and F1, for every head, in percent as in the paper."""
    def percent(value, width=8):
        return f"{'n/a':>{width}}" if value is None or math.isnan(value) else f"{100 * value:{width}.2f}"

    width = max(19, *(len(name) + 1 for _, info in heads for name in info.classes))  # 19: "mean IU per image"
    lines = []
    for index, (name, info) in enumerate(heads):
        suffix, title = _head_keys(index, name)
        lines += [""] * bool(index) + [f"{title}{info.name}"] * bool(title)
        lines += [f"{label:<{width}}{percent(result[key + suffix])}" for key, label in SCORES]
        lines += [f"{label:<{width}}{percent(result.get(key + suffix))}" for key, label in MORE_SCORES
                  if key + suffix in result]
        columns = [(key, title) for key, title in CLASS_SCORES if key + suffix in result]
        lines += ["", f"{'class':<{width}}" + "".join(f"{title:>10}" for _, title in columns)]
        lines += [f"{c:<{width}}" + "".join(percent(result[key + suffix][i], 10) for key, _ in columns)
                  for i, c in enumerate(info.classes)]
        warning = label_checks.unlabelled_warning(info, labelled_pixels(result, suffix), "in these labels")
        lines += [f"warning: {warning}"] * bool(warning)
    return "\n".join(lines)


def labelled_pixels(result: dict, suffix: str = "") -> list[int]:
    """Pixels labelled with each class: the confusion matrix's rows where the result holds it, else 1 for a class
    with an IU and 0 for one whose IU is n/a (absent from the labels and the predictions)."""
    if "confusion" + suffix in result:
        return np.asarray(result["confusion" + suffix], np.int64).sum(axis=1).tolist()
    return [0 if math.isnan(iou) else 1 for iou in result["per_class_iou" + suffix]]


def named_classes(result: dict, classes, suffix: str = "") -> dict:
    """The per-class lists of a head's result (IU, precision, recall, F1) as dicts keyed by class name."""
    return {key + suffix: dict(zip(classes, result[key + suffix])) for key, _ in CLASS_SCORES
            if isinstance(result.get(key + suffix), list)}


def to_json(result: dict, heads: dataset_info.Heads, **context) -> str:
    """JSON of the result: per-class scores keyed by class name, NaN (class absent) as null."""
    out = {**context, **result}
    for index, (name, info) in enumerate(heads):
        out.update(named_classes(result, info.classes, _head_keys(index, name)[0]))
    return json.dumps(artifacts.json_clean(out), indent=2)
