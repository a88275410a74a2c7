"""A study of a trained model on its own data (python -m fcn_jax.study): what the samples hold, how the model does
on them, which labels look wrong, which unlabelled images to annotate next, and how many images the recipe needs.

Writes into its output folder report.md (with figures beside it) and study.json:
  - data: per class and split the labelled pixels and the images holding the class, object sizes (connected
    regions of a class), image sizes; the classes that lack samples;
  - model: on the run's eval split, every class's IU, precision, recall and F1, the confusion figure, and the
    images with the lowest mean IU drawn beside their labels;
  - suspect labels: images ranked by label quality (core.sample_quality) from predictions of a model that did not
    train on them: the eval split by the run's model, and with folds >= 2 every training image by one of k models
    trained with its fold left out (config.data.folds / fold, the run's recipe otherwise: ablation.run_variant,
    resumable like any run);
  - annotate next: the images of a folder ranked by the model's uncertainty (entropy or margin);
  - how many images: the run's recipe on nested fractions of its training split (config.data.train_fraction),
    mean IU and per-class IU against the images, a power law fitted (flows.learning_curve).
The study scores the first score head of a multi-head model.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import ml_collections
import numpy as np

from fcn_jax.core import metrics, sample_quality
from fcn_jax.core.constants import IGNORE_LABEL, SCORES
from fcn_jax.data import class_balance, image_io, sources, subsets
from fcn_jax.flows import ablation, learning_curve, study_report
from fcn_jax.flows.study_report import LOW_RECALL, RARE_IMAGES, RARE_SHARE
from fcn_jax.infer import batching, score_figures
from fcn_jax.infer.network import load_network
from fcn_jax.infer.runner import Runner
from fcn_jax.weights import artifacts

RUN_MODEL = "the run's model"


@dataclasses.dataclass(frozen=True)
class Options:
    folds: int = 0                   # >= 2: k models, each with a fold of the training split left out
    fractions: tuple[float, ...] = ()  # >= 2 fractions: the learning curve
    target: float | None = None      # the mean IU whose image count the learning curve predicts
    unlabelled: str = ""             # a folder of images to rank for annotation
    uncertainty: str = "entropy"     # entropy | margin
    worst: int = 6                   # images drawn for the lowest mean IU, the suspect labels, annotate next
    pad_multiple: int = 32           # images padded to multiples of this (one compilation a padded shape); 1: own size
    progress: bool = True


class StudyError(ValueError):
    """A study that cannot run, said in one line."""


def run_config(run_dir: str) -> ml_collections.ConfigDict:
    """The config a run trained with (its config.json)."""
    config = artifacts.run_config(run_dir)
    if config is None:
        raise StudyError(f"{run_dir} holds no config.json: give the workdir of a finished training run")
    return ml_collections.ConfigDict(config)


def load_data(config: ml_collections.ConfigDict):
    """(heads, full train split, eval split) of the run's dataset; a dataset that is gone is a StudyError."""
    from fcn_jax.train import config_checks
    from fcn_jax.train.step import ConfigError

    try:
        config_checks.validate_source(config)
        heads = sources.describe_dataset(config)
        train, evaluation = sources.get(config.data.source).load(config.data)
    except (ConfigError, ValueError, OSError) as error:
        raise StudyError(f"the run's dataset cannot be read ({error}); point config.data at it again") from None
    return heads, train, evaluation


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="image", disable=not progress, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------- the data


def object_sizes(label: np.ndarray, num_classes: int) -> dict[int, list[int]]:
    """Pixels of every connected region (8-connected) of each class in a label map."""
    from scipy import ndimage

    sizes = {}
    for c in np.unique(label):
        if c < num_classes:
            regions, count = ndimage.label(label == c, structure=np.ones((3, 3)))
            sizes[int(c)] = np.bincount(regions.ravel(), minlength=count + 1)[1:].tolist()
    return sizes


def data_statistics(source, num_classes: int, desc: str, progress: bool) -> dict:
    """One split's LabelCounts, object sizes per class and image sizes."""
    counts = class_balance.LabelCounts.zeros(num_classes)
    objects: dict[int, list[int]] = {c: [] for c in range(num_classes)}
    sizes = []
    with _bar(len(source), desc, progress) as bar:
        for i in range(len(source)):
            label = np.asarray(source[i]["label"])
            label = label[..., 0] if label.ndim == 3 else label
            counts.add(label)
            for c, found in object_sizes(label, num_classes).items():
                objects[c] += found
            sizes.append(label.shape)
            bar.update()
    return {"counts": counts, "objects": objects, "image_sizes": sizes}


def lacking_classes(classes, train_counts: class_balance.LabelCounts, recall: list[float]) -> list[str]:
    """Classes in too few training images, or recalled poorly on the eval split."""
    few = max(RARE_IMAGES, RARE_SHARE * train_counts.num_images)
    return [name for c, name in enumerate(classes)
            if train_counts.images[c] < few or (not math.isnan(recall[c]) and recall[c] < LOW_RECALL)]


# ----------------------------------------------------------------------------- per-image scores


def score_images(runner: Runner, params, source, indices, num_classes: int, desc: str, progress: bool):
    """Per image of source[indices]: its id, mean IU, label quality and share of suspect pixels; and the summed
    confusion matrix (of the first head)."""
    records, confusion = [], np.zeros((num_classes, num_classes), np.int64)
    with _bar(len(indices), desc, progress) as bar:
        for index, logits in runner.logits(params, ((int(i), source[int(i)]["image"]) for i in indices)):
            label = first_head(source[index]["label"])
            probs = sample_quality.softmax(logits[..., :num_classes])
            confusion_of_image = image_confusion(np.argmax(probs, -1), label, num_classes, runner.pad_multiple)
            confusion += confusion_of_image
            labelled = label != IGNORE_LABEL
            suspect = sample_quality.suspect_pixels(probs, label)
            records.append({"index": index, "id": source[index].get("id", str(index)),
                            "mean_iou": float(metrics.image_mean_iou(confusion_of_image[None])[0]),
                            "label_quality": sample_quality.image_label_quality(probs, label),
                            "suspect_share": float(suspect.sum() / max(labelled.sum(), 1))})
            bar.update()
    return records, confusion


def image_confusion(prediction, label, num_classes: int, pad_multiple: int) -> np.ndarray:
    """(K, K) confusion of one image, counted at its padded size (label 255 there): a padded shape, not every image
    size, compiles the counting."""
    shape = batching.padded_shape(*label.shape, pad_multiple)
    padded = [batching.pad_stack([x], shape, 1, fill, np.int32) for x, fill in ((prediction, 0),
                                                                                (label, IGNORE_LABEL))]
    return np.asarray(metrics.image_confusions(*padded, num_classes))[0]


def first_head(label) -> np.ndarray:
    label = np.asarray(label)
    return label[..., 0] if label.ndim == 3 else label


def _draw(path, runner: Runner, params, source, record, info, num_classes: int, title: str, marked: bool) -> None:
    example = source[record["index"]]
    (_, logits), = runner.logits(params, [(0, example["image"])])
    probs = sample_quality.softmax(logits[..., :num_classes])
    label = first_head(example["label"])
    score_figures.comparison_figure(
        path, example["image"], label, np.argmax(probs, -1).astype(np.uint8), info, title,
        marked=sample_quality.suspect_pixels(probs, label) if marked else None,
        marked_title="suspect: the model gives the label < 50%")


# ----------------------------------------------------------------------------- trained variants


def train_variants(config: ml_collections.ConfigDict, overrides: list[tuple[str, dict]], workdir: str,
                   run_dir: str | None = None) -> dict:
    """{name: (config, result)} of the run's recipe with each override, trained in workdir/<name> unless finished
    there; a variant whose config is the run's own takes the run's result (run_dir) instead of training again."""
    out = {}
    for name, _, variant in ablation.build_variants(config, overrides, workdir):
        same = run_dir and json.loads(variant.to_json()) == json.loads(config.to_json())
        result = ablation.finished_result(variant, run_dir) if same else None
        if result is not None:
            out[name] = (variant, result)
            continue
        logging.info("study: training %s in %s", name, os.path.join(workdir, name))
        out[name] = (variant, ablation.run_variant(variant, os.path.join(workdir, name)))
    return out


def out_of_fold(config, runner: Runner, train_source, folds: int, output: str, num_classes: int,
                progress: bool) -> list:
    """Every training image scored by the fold model that did not train on it (the run's model, so `runner`, the
    run's, compiles for them all)."""
    subsets.check(folds=folds, fold=0, num_examples=len(train_source))
    overrides = [(f"fold_{i}", {"data.folds": folds, "data.fold": i}) for i in range(folds)]
    trained = train_variants(config, overrides, os.path.join(output, "folds"))
    records = []
    for i, (name, (variant, _)) in enumerate(trained.items()):
        network = load_network(os.path.join(output, "folds", name))
        held_out = subsets.fold_indices(len(train_source), folds, i, variant.data.subset_seed)
        found, _ = score_images(runner, network.params, train_source, held_out, num_classes, f"scoring fold {i}",
                                progress)
        records += [{**r, "split": config.data.train_split, "by": name} for r in found]
    return records


def annotate_next(runner: Runner, params, folder: str, num_classes: int, kind: str, progress: bool) -> list:
    """The images of `folder` by descending mean pixel uncertainty."""
    paths = image_io.find_images([folder])
    ranked = []
    with _bar(len(paths), "uncertainty", progress) as bar:
        for path, logits in runner.logits(params, ((p, image_io.read_rgb(p)) for p in paths)):
            probs = sample_quality.softmax(logits[..., :num_classes])
            ranked.append({"path": str(path), "uncertainty": sample_quality.image_uncertainty(probs, kind)})
            bar.update()
    return sorted(ranked, key=lambda r: -r["uncertainty"])


def how_many_images(config, fractions, target, output: str, classes, run_dir: str, num_train: int) -> dict:
    """The learning curve: the recipe on each fraction of the num_train images, its scores, the power law and the
    images for target."""
    trained = train_variants(config, learning_curve.sweep(fractions), os.path.join(output, "fractions"), run_dir)
    points = sorted(((len(subsets.train_subset(range(num_train), variant.data)), result)
                     for variant, result in trained.values()), key=lambda point: point[0])
    images = [n for n, _ in points]
    mean_ious = [r["mean_iou"] for _, r in points]
    per_class = {name: [_class_value(r, name, c) for _, r in points] for c, name in enumerate(classes)}
    curve = {"images": images, "mean_iou": mean_ious, "per_class_iou": per_class}
    try:
        law = learning_curve.fit(images, mean_ious)
        curve["fit"] = {"a": math.exp(law.log_a), "b": law.b}
        if target is not None:
            curve["target"] = dict(zip(("mean_iou", "images", "low", "high"), (target, *law.images_for(target))))
    except ValueError as error:
        law, curve["fit_error"] = None, str(error)
    learning_curve.plot(os.path.join(output, "learning_curve.png"), images, mean_ious, per_class, law, target,
                        f"{config.model.variant} on {config.data.train_split}: nested fractions")
    return curve


def _class_value(result: dict, name: str, index: int) -> float:
    per_class = result.get("per_class_iou", {})
    value = per_class.get(name) if isinstance(per_class, dict) else per_class[index]
    return float("nan") if value is None else float(value)


# ----------------------------------------------------------------------------- the study


def run(run_dir: str, output: str, options: Options = Options()) -> dict:
    """Study the run in `run_dir`; writes output/report.md, its figures and output/study.json."""
    if options.uncertainty not in sample_quality.UNCERTAINTIES:
        raise StudyError(f"--uncertainty {options.uncertainty!r}: expected one of "
                         f"{', '.join(sample_quality.UNCERTAINTIES)}")
    if options.target is not None and not 0 < options.target < 1:
        raise StudyError(f"--target {options.target}: a mean IU in (0, 1)")
    if options.unlabelled:
        image_io.find_images([options.unlabelled])  # a wrong folder fails now, not after the scoring
    config = run_config(run_dir)
    network = load_network(run_dir)
    heads, train_source, eval_source = load_data(config)
    info = heads[0][1]
    k = info.num_classes
    os.makedirs(output, exist_ok=True)
    study = {"run": os.path.abspath(run_dir), "classes": list(info.classes), "splits": {}}
    splits = {config.data.train_split: train_source, config.data.eval_split: eval_source}
    statistics = {split: data_statistics(source, k, f"reading {split}", options.progress)
                  for split, source in splits.items()}
    for split, stats in statistics.items():
        study["splits"][split] = {**stats["counts"].to_json(), "image_sizes": _size_summary(stats["image_sizes"]),
                                  "object_sizes": {info.classes[c]: _quantiles(v) for c, v in stats["objects"].items()}}

    runner = Runner.of(network, pad_multiple=options.pad_multiple)
    records, confusion = score_images(runner, network.params, eval_source, range(len(eval_source)), k,
                                      f"scoring {config.data.eval_split}", options.progress)
    scores = metrics.segmentation_metrics(confusion)
    study["model"] = {**{key: scores[key] for key, _ in SCORES}, "confusion": confusion.tolist(),
                      **{key: dict(zip(info.classes, scores[key])) for key in
                         ("per_class_iou", "per_class_precision", "per_class_recall", "per_class_f1")},
                      "per_image_mean_iou": float(np.nanmean([r["mean_iou"] for r in records]))}
    score_figures.confusion_figure(os.path.join(output, "confusion.png"), confusion, info.classes,
                                   f"{config.data.eval_split}: labelled (rows) against predicted, %")
    study["lacking_samples"] = lacking_classes(info.classes, statistics[config.data.train_split]["counts"],
                                               scores["per_class_recall"])
    suspects = [{**r, "split": config.data.eval_split, "by": RUN_MODEL} for r in records]
    worst = sorted((r for r in records if not math.isnan(r["mean_iou"])), key=lambda r: r["mean_iou"])
    for n, record in enumerate(worst[:options.worst]):
        record["figure"] = f"worst_{n}.png"
        _draw(os.path.join(output, record["figure"]), runner, network.params, eval_source, record, info, k,
              f"{record['id']}: mean IU {100 * record['mean_iou']:.1f}", marked=False)
    study["worst_images"] = [_public(r) for r in worst[:options.worst]]

    if options.folds:
        suspects += out_of_fold(config, runner, train_source, options.folds, output, k, options.progress)
    suspects = sorted((r for r in suspects if not math.isnan(r["label_quality"])), key=lambda r: r["label_quality"])
    for n, record in enumerate(suspects[:options.worst]):
        record["figure"] = f"suspect_{n}.png"
        source = eval_source if record["split"] == config.data.eval_split else train_source
        by = network if record["by"] == RUN_MODEL else load_network(os.path.join(output, "folds", record["by"]))
        _draw(os.path.join(output, record["figure"]), runner, by.params, source, record, info, k,
              f"{record['split']} {record['id']}: label quality {record['label_quality']:.3f}", marked=True)
    study["suspect_labels"] = [_public(r) for r in suspects]

    if options.unlabelled:
        study["annotate_next"] = annotate_next(runner, network.params, options.unlabelled, k, options.uncertainty,
                                               options.progress)
    if options.fractions:
        study["learning_curve"] = how_many_images(config, options.fractions, options.target, output, info.classes,
                                                    run_dir, len(train_source))
    with open(os.path.join(output, "study.json"), "w") as f:
        f.write(json.dumps(artifacts.json_clean(study), indent=2) + "\n")
    with open(os.path.join(output, "report.md"), "w") as f:
        f.write(study_report.report(study, config, options))
    return study


def _public(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "index"}


def _quantiles(values) -> dict:
    if not values:
        return {"regions": 0}
    q = np.percentile(values, [10, 50, 90])
    return {"regions": len(values), "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2])}


def _size_summary(sizes) -> dict:
    areas = [h * w for h, w in sizes]
    order = np.argsort(areas)
    return {"smallest": list(sizes[order[0]]), "median": list(sizes[order[len(order) // 2]]),
            "largest": list(sizes[order[-1]]), "distinct": len(set(map(tuple, sizes)))}
