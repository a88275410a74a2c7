"""From an image classifier to a segmenter (FCN paper, sections 3.1 and 4.1), end to end (python -m fcn_jax.pipeline).

Five stages, each a function `(config, workdir) -> result` that works in its own folder under workdir
and is skipped once finished there, so an interrupted pipeline resumes where it stopped:
  classifier        classifier/: a VGG16Classifier (Dense fc6/fc7/fc8 on a 7x7 pool5, 224x224 input) trained
                    on image-level labels, the class of the largest object in each label mask;
  convolutionalize  convolutionalized/: its convolutions, and fc6/fc7 as 7x7/1x1 convolutions, put into the
                    first FCN stage's backbone and saved as converted weights (an `init_from` folder);
  fcn               fcn/<variant>/: the FCN stages of config.stages, trained by train.job.train_and_evaluate, the
                    first from the converted weights, each next one from the previous (32s -> 16s -> 8s);
  segment           segment/: the last FCN on new images (freshly drawn synthetic scenes with their labels, or
                    config.segment.images): palette masks, overlays and, with labels, the four scores;
  study             study/: the last FCN studied on its data (flows.study): the classes that lack samples, the
                    labels that look wrong (config.study.folds >= 2: every training label, out of fold), and
                    the new images of the segment stage ranked for annotation.
Then report.md gathers every stage's numbers and embeds the overlays.
"""
from __future__ import annotations

import json
import logging
import os

import jax
import ml_collections
import numpy as np
from PIL import Image

from fcn_jax.core import metrics, parallel
from fcn_jax.core.constants import SCORES
from fcn_jax.data import dataset_info, image_io, sources, visualize
from fcn_jax.data.examples import FolderSource
from fcn_jax.flows import classifier
from fcn_jax.infer import outputs
from fcn_jax.infer.network import Network, load_network
from fcn_jax.infer.runner import Runner
from fcn_jax.models import zoo
from fcn_jax.models.classifier import fcn_params_from_classifier
from fcn_jax.train import config_checks, job, loop
from fcn_jax.train.step import ConfigError, init_key
from fcn_jax.weights import artifacts, checkpoints

STAGES = ("classifier", "convolutionalize", "fcn", "segment", "study")


# ----------------------------------------------------------------------------- stage 1: the classifier


def classifier_stage(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Stage 1: train (or finish, or read back) the classifier in workdir/classifier."""
    cfg = classifier.classifier_config(config)
    mesh = parallel.create_mesh()
    try:
        parallel.check_batch_size(cfg.batch_size, mesh)
    except ValueError as error:
        raise ConfigError(f"config.classifier.batch_size: {error}") from None
    cadence = loop.Cadence(num_steps=cfg.num_steps, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                           keep_checkpoints=1, async_checkpoint=False)
    directory = os.path.join(workdir, "classifier")
    os.makedirs(directory, exist_ok=True)
    return loop.run(json.loads(cfg.to_json()), directory, cadence,
                    lambda: classifier.classifier_job(cfg, config.fcn, mesh), name="classifier",
                    resumable_keys=classifier.RESUMABLE_KEYS)


def _cached(directory: str, config: ml_collections.ConfigDict, compute) -> dict:
    """The stored result of `directory` if it finished under `config`, else compute() stored there."""
    config_dict = json.loads(config.to_json())
    result = artifacts.read_result(config_dict, directory)
    if result is None:
        result = artifacts.write_result(config_dict, directory, compute())
    return result


# ----------------------------------------------------------------------------- stage 2: convolutionalize


def fcn_stage_configs(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(stage workdir, train config) per FCN stage: each initialised from the one before, the first from the
    convolutionalized classifier."""
    if not config.stages:
        raise ConfigError("config.stages is empty: name at least one FCN variant")
    if len(set(config.stages)) != len(config.stages):
        raise ConfigError(f"config.stages={tuple(config.stages)} names a variant twice")
    rates = tuple(config.stage_learning_rates) or (config.fcn.optim.learning_rate,) * len(config.stages)
    if len(rates) != len(config.stages):
        raise ConfigError(f"config.stage_learning_rates has {len(rates)} values for "
                                f"{len(config.stages)} stages {tuple(config.stages)}: give one per stage or ()")
    init_from = os.path.abspath(os.path.join(workdir, "convolutionalized"))
    stages = []
    for variant, learning_rate in zip(config.stages, rates):
        cfg = ml_collections.ConfigDict(config.fcn.to_dict())
        cfg.model.variant, cfg.init_from = variant, init_from
        cfg.optim.learning_rate = float(learning_rate)
        init_from = os.path.abspath(os.path.join(workdir, "fcn", variant))
        stages.append((init_from, cfg))
    return stages


def convolutionalize_stage(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Stage 2: workdir/convolutionalized, converted weights of the first FCN stage (fcn_jax_weights.json)."""
    directory = os.path.abspath(os.path.join(workdir, "convolutionalized"))
    sidecar = os.path.join(directory, artifacts.WEIGHTS_SIDECAR)
    if os.path.isfile(sidecar):
        return artifacts.read_json(sidecar)
    cfg = classifier.classifier_config(config)
    classifier_dir = os.path.abspath(os.path.join(workdir, "classifier"))
    classifier_params = checkpoints.load_params(classifier_dir)
    model_config = fcn_stage_configs(config, workdir)[0][1].model
    template = zoo.param_template(zoo.from_settings(model_config), init_key(config.fcn.seed))
    params = jax.device_get(fcn_params_from_classifier(classifier_params, template))

    _, eval_source = sources.load_sources(config.fcn)
    images = np.stack([classifier.classifier_input(eval_source[i]["image"], cfg.input_size, cfg.normalization)
                       for i in range(min(4, len(eval_source)))])
    loaded = [f"backbone/{name}" for name in params["backbone"]]
    meta = {
        "format": "classifier", "source": classifier_dir, "variant": model_config.variant,
        "num_classes": model_config.num_classes, "width": model_config.width, "geometry": model_config.geometry,
        "dtype": model_config.dtype, "heads": [list(head) for head in model_config.heads],
        "normalization": cfg.normalization,
        "loaded": loaded, "new": sorted(name for name in params if name != "backbone"), "unused": ["fc8"],
        "dense_vs_conv_max_abs_diff": classifier.dense_vs_convolutional(classifier_params, images, cfg),
    }
    tmp = directory + ".tmp"
    if os.path.isdir(tmp):  # a save killed half-way
        import shutil

        shutil.rmtree(tmp)
    checkpoints.save_params(tmp, params, meta)
    dataset_info.write(config_checks.resolve_num_classes(config.fcn), tmp)  # as the FCN stages describe it
    os.replace(tmp, directory)
    return meta


# ----------------------------------------------------------------------------- stage 3: FCN training


def fcn_stage(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Stage 3: each of config.stages in workdir/fcn/<variant> (skipped if finished, resumed if half-trained)."""
    results = []
    for stage_dir, cfg in fcn_stage_configs(config, workdir):
        logging.info("FCN stage %s, init_from %s", cfg.model.variant, cfg.init_from)
        result = job.train_and_evaluate(cfg, stage_dir)
        results.append({"variant": cfg.model.variant, "init_from": os.path.relpath(cfg.init_from, workdir),
                        "steps": cfg.train.num_steps, **result})
    return results


# ----------------------------------------------------------------------------- stage 4: segment new images


def segment_images(network: Network, heads: dataset_info.Heads, images_dir: str,
                   labels_dir: str | None, output: str, workdir: str, cfg: ml_collections.ConfigDict) -> dict:
    """Masks and overlays of every image in images_dir; with labels, the scores and ground-truth overlays."""
    paths = image_io.find_images([images_dir])
    info = heads[0][1]  # the first head's masks are scored and reported
    labels = {}
    if labels_dir:
        labels = {files.image_id: files.label for files in FolderSource(images_dir, labels_dir, info).files}
    os.makedirs(output, exist_ok=True)
    names = info.classes
    confusion = np.zeros((network.num_classes,) * 2, np.int64)
    entries = []
    runner = Runner.of(network, batch_size=cfg.batch_size, pad_multiple=cfg.pad_multiple)
    for path, image, mask in runner.masks(network.params, ((p, image_io.read_rgb(p)) for p in paths)):
        outputs.write_outputs(output, path, image, mask, heads, figure=False)
        mask = mask if mask.ndim == 2 else mask[..., 0]
        stem = os.path.splitext(os.path.basename(path))[0]
        entry = {"image": os.path.relpath(path, workdir),
                 "overlay": os.path.relpath(os.path.join(output, f"{stem}_overlay.jpg"), workdir),
                 "classes": [names[c] for c in np.unique(mask) if c != info.background]}
        if stem in labels:
            label = info.decode(labels[stem])
            image_confusion = np.asarray(metrics.confusion_matrix(mask, label, network.num_classes), np.int64)
            confusion += image_confusion
            entry["pixel_acc"] = float(np.trace(image_confusion) / max(image_confusion.sum(), 1))
            gt_path = os.path.join(output, f"{stem}_gt_overlay.jpg")
            Image.fromarray(visualize.overlay(image, label, palette=info.palette(), background=info.background)).save(
                gt_path, quality=90)
            entry["gt_overlay"] = os.path.relpath(gt_path, workdir)
        entries.append(entry)
    entries.sort(key=lambda e: e["image"])
    result = {"num_images": len(paths), "images": os.path.relpath(images_dir, workdir), "outputs": entries}
    if labels:
        scores = metrics.segmentation_metrics(confusion)
        result.update({k: scores[k] for k, _ in SCORES})
    return result


def segment_stage(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Stage 4: workdir/segment, the last FCN stage on new images."""
    directory = os.path.join(workdir, "segment")
    cfg = config.segment

    def compute():
        weights = fcn_stage_configs(config, workdir)[-1][0]
        if cfg.images:
            images_dir, labels_dir = cfg.images, cfg.labels or None
        else:
            from fcn_jax.data import synthetic

            images_dir, labels_dir = synthetic.write_scenes(os.path.join(directory, "heldout"), cfg.num_images,
                                                            cfg.seed, sources.get(config.fcn.data.source).synthetic)
        network = load_network(weights)
        heads = dataset_info.for_weights(weights, network.heads)
        result = segment_images(network, heads, images_dir, labels_dir, os.path.join(directory, "predictions"),
                                workdir, cfg)
        return {"weights": os.path.relpath(weights, workdir), **result}

    return _cached(directory, cfg, compute)


def study_stage(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Stage 5: workdir/study, the last FCN stage studied on its data; the segment stage's images are the pool
    ranked for annotation."""
    from fcn_jax.flows import study

    directory = os.path.join(workdir, "study")
    cfg = config.study

    def compute():
        weights = fcn_stage_configs(config, workdir)[-1][0]
        segmented = artifacts.read_result(json.loads(config.segment.to_json()), os.path.join(workdir, "segment"))
        images = os.path.join(workdir, segmented["images"])
        result = study.run(weights, directory, study.Options(folds=cfg.folds, unlabelled=images, worst=cfg.worst))
        return {"lacking_samples": result["lacking_samples"], "suspect_labels": result["suspect_labels"][:cfg.worst],
                "annotate_next": [{**r, "path": os.path.relpath(r["path"], workdir)}
                                  for r in result["annotate_next"][:cfg.worst]]}

    return _cached(directory, cfg, compute)


# ----------------------------------------------------------------------------- the whole pipeline and its report


def run_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Every stage in order (finished ones are read back, not redone), then workdir/report.md."""
    if jax.process_count() > 1:
        raise ConfigError("the pipeline runs as a single process; launch it without --num_processes")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config_checks.resolve_num_classes(config.fcn)  # 0: the dataset's count, before the classifier takes it
    if not config.segment.images and not sources.get(config.fcn.data.source).synthetic:
        raise ConfigError("config.segment.images is empty: name a folder of new images to segment (held-out "
                                "scenes are drawn only for the synthetic sources)")
    for _, stage_config in fcn_stage_configs(config, workdir):  # bad stages fail before the classifier trains
        config_checks.validate_config(stage_config)
    os.makedirs(workdir, exist_ok=True)
    results = {}
    for name, stage in zip(STAGES, (classifier_stage, convolutionalize_stage, fcn_stage, segment_stage, study_stage)):
        logging.info("pipeline stage %s", name)
        results[name] = stage(config, workdir)
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(report(config, results))
    return results


def _percent(value) -> str:
    return f"{100 * value:.2f}"


def report(config: ml_collections.ConfigDict, results: dict) -> str:
    """Markdown: every stage's numbers, paths relative to the workdir (so the images render next to it)."""
    cls, conv, fcn, seg, study = (results[name] for name in STAGES)
    cfg = classifier.classifier_config(config)
    lines = [
        "# From a classifier to segmentation", "",
        "## 1. Classifier (`classifier/`)", "",
        f"VGG16Classifier at width {cfg.width:g} ({cls['params']:,} params), {cfg.input_size}x{cfg.input_size} input, "
        f"trained {cfg.num_steps} steps (batch {cfg.batch_size}, Adam lr {cfg.learning_rate:g}) on the "
        f"{cls['num_train_images']} images of {cfg.data.train_split}, each labelled with the class of its "
        f"largest object. Accuracy on {cfg.data.eval_split} ({cls['num_eval_images']} images): "
        f"**{_percent(cls['accuracy'])}%** (always answering the commonest class: "
        f"{_percent(cls['majority_accuracy'])}%); {cls['images_per_s']:.1f} train images/s.", "",
        "## 2. Convolutionalized (`convolutionalized/`)", "",
        f"fc6 (Dense on the flattened 7x7 pool5) became a 7x7 convolution, fc7 a 1x1 one, and the backbone of "
        f"{conv['variant']} ({conv['geometry']} geometry) took them with the 13 convolutions; fc8 was dropped and "
        f"score_fr starts at zero, as in the paper. On 224x224 inputs the convolutional net's 1x1 score map equals "
        f"the classifier's logits to {conv['dense_vs_conv_max_abs_diff']:.1e} (max abs difference).", "",
        f"Loaded: {', '.join(conv['loaded'])}. New: {', '.join(conv['new'])}.", "",
        "## 3. FCN stages (`fcn/<variant>/`)", "",
        "| stage | initialised from | steps | pixel acc | mean acc | mean IU | fw IU | train images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage in fcn:
        scores = " | ".join(_percent(stage[k]) for k, _ in SCORES)
        lines.append(f"| {stage['variant']} | `{stage['init_from']}` | {stage['steps']} | {scores} | "
                     f"{stage['images_per_s']:.1f} |")
    lines += ["", f"Scores (%) on {config.fcn.data.eval_split} after each stage's last step.", "",
              "## 4. Segmenting new images (`segment/`)", "",
              f"{seg['num_images']} images from `{seg['images']}`, segmented by `{seg['weights']}`."]
    if "mean_iou" in seg:
        lines.append("Scores on them (%): " + ", ".join(f"{label} {_percent(seg[key])}"
                                                          for key, label in SCORES) + ".")
    lines += ["", "| image | prediction | ground truth | pixel acc | classes predicted |", "|---|---|---|---|---|"]
    for entry in seg["outputs"]:
        gt = f"![]({entry['gt_overlay']})" if "gt_overlay" in entry else ""
        acc = _percent(entry["pixel_acc"]) if "pixel_acc" in entry else ""
        lines.append(f"| `{entry['image']}` | ![]({entry['overlay']}) | {gt} | {acc} | "
                     f"{', '.join(entry['classes']) or 'none'} |")
    folds = (f"every training label scored by {config.study.folds} models each trained without its fold, and "
             f"{config.fcn.data.eval_split} by the last FCN" if config.study.folds else
             f"{config.fcn.data.eval_split} scored by the last FCN (config.study.folds >= 2 scores the training labels "
             "too)")
    lines += ["", "## 5. Studying the samples (`study/`, its [report](study/report.md))", "",
              "Classes that lack samples: " + (", ".join(study["lacking_samples"]) or "none") + ".", "",
              f"Labels that look wrong, lowest label quality first ({folds}): "
              + ", ".join(f"{r['split']} {r['id']} ({r['label_quality']:.3f})" for r in study["suspect_labels"])
              + ".", "", "New images to annotate next, most uncertain first: "
              + ", ".join(f"`{r['path']}` ({r['uncertainty']:.3f})"
                          for r in study["annotate_next"]) + "."]
    return "\n".join(lines) + "\n"
