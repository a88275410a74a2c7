"""Choosing the dense CRF's parameters for a trained run (python -m fcn_jax.crf_search), as DeepLab did: a grid over
the kernel weights and widths scored on part of the run's eval split, the best settings then scored against no CRF
on the other part, which the grid never saw, and stored with the weights (crf.json) for `--crf`.

The network runs once per image; its logits are kept (float16) and every grid point refines them (infer.dense_crf).
Scores are the paper's mean IU of the first score head, one confusion matrix over the images, as evaluate counts.
"""
from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np

from fcn_jax.core import metrics
from fcn_jax.data import subsets
from fcn_jax.flows import study
from fcn_jax.infer import dense_crf
from fcn_jax.infer.network import load_network
from fcn_jax.infer.runner import Runner
from fcn_jax.models.crf import CRFSettings

# DeepLab's search kept the smoothness kernel and searched the appearance kernel; the usual values are in it.
DEFAULT_GRID = "bilateral_weight=3,5,10;bilateral_sxy=20,50,80;bilateral_srgb=3,5,13"


@dataclasses.dataclass(frozen=True)
class Options:
    grid: str = DEFAULT_GRID       # "name=v1,v2;name=v1,..." over CRFSettings' names; the rest from `base`
    base: CRFSettings = CRFSettings()
    images: int = 100              # eval images used at most (tuning + held out), drawn with `seed`
    tune_fraction: float = 0.5     # of those, the share the grid is scored on; the rest is held out
    seed: int = 0
    pad_multiple: int = 32         # the network's padded shapes (as the study's); the CRF runs at each image's size
    progress: bool = True


def parse_grid(text: str, base: CRFSettings) -> list[CRFSettings]:
    """Every combination of 'name=v1,v2;name=...' on top of `base`, each checked (a bad one is a ValueError)."""
    axes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, values = part.partition("=")
        if not sep or not values.strip():
            raise ValueError(f"grid axis {part!r} is not name=v1,v2,...")
        try:
            axes.append([(name.strip(), float(v)) for v in values.split(",")])
        except ValueError:
            raise ValueError(f"grid axis {part!r}: the values must be numbers") from None
    if not axes:
        raise ValueError("the grid is empty: give name=v1,v2;...")
    return [CRFSettings.from_mapping({**dataclasses.asdict(base), **dict(point)}) for point in itertools.product(*axes)]


def _mean_iou(pairs, num_classes: int, pad_multiple: int) -> float:
    """The paper's mean IU of one confusion matrix summed over (prediction, label) pairs."""
    confusion = sum(study.image_confusion(prediction, label, num_classes, pad_multiple) for prediction, label in pairs)
    return float(metrics.segmentation_metrics(confusion)["mean_iou"])


def search(run_dir: str, options: Options = Options()) -> dict:
    """Score the grid on the tuning images, the best point and no CRF on the held-out ones; store crf.json."""
    from tqdm import tqdm

    if not 0 < options.tune_fraction < 1:
        raise ValueError(f"tune_fraction {options.tune_fraction} must be in (0, 1): some images tune, the rest test")
    grid = parse_grid(options.grid, options.base)
    config = study.run_config(run_dir)
    heads, _, evaluation = study.load_data(config)
    if len(evaluation) < 2:
        raise ValueError(f"the run's eval split {config.data.eval_split!r} holds {len(evaluation)} image(s): the "
                         "CRF search needs at least 2 labelled images (some to tune on, some to test)")
    order = subsets.permutation(len(evaluation), options.seed)[:options.images]
    cut = min(max(1, round(len(order) * options.tune_fraction)), len(order) - 1)
    network = load_network(run_dir)
    runner = Runner.of(network, pad_multiple=options.pad_multiple)
    model_heads, num_classes = network.heads, network.heads[0][1]
    cached = []  # (float16 logits of every head, uint8 image, first head's label)
    examples = (evaluation[int(i)] for i in order)  # each read once
    with tqdm(total=len(order), desc="logits", unit="image", disable=not options.progress) as bar:
        for example, logits in runner.logits(network.params, ((e, e["image"]) for e in examples)):
            cached.append((logits.astype(np.float16), example["image"], study.first_head(example["label"])))
            bar.update()
    tune, held_out = cached[:cut], cached[cut:]

    def score(images, settings):
        def pairs():
            for logits, image, label in images:
                if settings is not None:
                    logits = dense_crf.refine(logits.astype(np.float32), image, settings, model_heads)
                yield np.argmax(logits[..., :num_classes], -1), label
        return _mean_iou(pairs(), num_classes, options.pad_multiple)

    rows = []
    with tqdm(total=len(grid), desc="CRF grid", unit="setting", disable=not options.progress) as bar:
        for settings in grid:
            start = time.perf_counter()
            rows.append({"settings": settings.as_dict(), "mean_iou": score(tune, settings),
                         "seconds_per_image": (time.perf_counter() - start) / len(tune)})
            bar.update()
    best = max(rows, key=lambda row: row["mean_iou"])
    best_settings = CRFSettings.from_mapping(best["settings"])
    result = {"run": run_dir, "eval_split": config.data.eval_split, "seed": options.seed,
              "tune_images": len(tune), "held_out_images": len(held_out),
              "tune": {"no_crf": score(tune, None), "grid": rows},
              "held_out": {"no_crf": score(held_out, None), "best": score(held_out, best_settings),
                           "defaults": score(held_out, options.base)},
              "best": best_settings.as_dict()}
    result["path"] = dense_crf.store_settings(run_dir, best_settings, chosen_by="python -m fcn_jax.crf_search",
                                              search={k: v for k, v in result.items() if k != "best"})
    return result
