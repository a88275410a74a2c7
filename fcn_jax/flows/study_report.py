"""report.md of a study (flows.study): its sections in markdown, the figures by their file names beside it."""
from __future__ import annotations

import math

from fcn_jax.core.constants import SCORES

RARE_SHARE = 0.1  # a class in fewer than this share of the training images (or fewer than RARE_IMAGES) lacks samples
RARE_IMAGES = 10
LOW_RECALL = 0.5  # ... or whose recall on the eval split is below this


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def report(study: dict, config, options) -> str:
    """The markdown of `study` (flows.study.run's dict) for the run's config and the study's Options."""
    classes = study["classes"]
    train, evaluation = config.data.train_split, config.data.eval_split
    splits = study["splits"]
    lines = [f"# Study of {study['run']}", "",
             f"{config.model.variant} trained on {config.data.source} `{train}`, scored on `{evaluation}`.", "",
             "## The data", "",
             "| class | " + " | ".join(f"{s} pixels | {s} images" for s in splits) + " | object size (px): median "
             "[p10, p90] |", "|---" * (2 + 2 * len(splits)) + "|"]
    for c, name in enumerate(classes):
        sizes = splits[train]["object_sizes"][name]
        size = (f"{sizes['median']:.0f} [{sizes['p10']:.0f}, {sizes['p90']:.0f}] ({sizes['regions']} regions)"
                if sizes["regions"] else "none")
        lines.append(f"| {name} | " + " | ".join(f"{s['pixels'][c]} | {s['images'][c]}" for s in splits.values())
                     + f" | {size} |")
    lines += [""] + [f"`{s}`: {v['num_images']} images, {v['ignored']} unlabelled pixels; image sizes (H, W) from "
                     f"{tuple(v['image_sizes']['smallest'])} to {tuple(v['image_sizes']['largest'])}, median "
                     f"{tuple(v['image_sizes']['median'])}." for s, v in splits.items()]
    lacking = study["lacking_samples"]
    lines += ["", "**Classes that lack samples** (in fewer than "
              f"max({RARE_IMAGES}, {RARE_SHARE:.0%} of) the training images, or recall below {LOW_RECALL:.0%}): "
              + (", ".join(lacking) if lacking else "none") + "."]
    model = study["model"]
    lines += ["", f"## The model on `{evaluation}`", "",
              " | ".join(f"{label} {_pct(model[key])}" for key, label in SCORES)
              + f" | mean IU per image {_pct(model['per_image_mean_iou'])}", "",
              "The paper's mean IU comes from one confusion matrix over the split; the per-image mean averages each "
              "image's own mean IU, so small images and small objects weigh more in it.", "",
              "| class | IU | precision | recall | F1 |", "|---|---|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(_pct(model[f"per_class_{key}"][name])
                                          for key in ("iou", "precision", "recall", "f1")) + " |" for name in classes]
    lines += ["", "![confusion](confusion.png)", "", "Lowest mean IU per image:", ""]
    lines += [f"![{r['id']}]({r['figure']})" for r in study["worst_images"]]
    suspects = study["suspect_labels"]
    source = (f"the training images by {options.folds} models each trained without its fold, and `{evaluation}` "
              "by the run's model" if options.folds else
              f"`{evaluation}` by the run's model (the training images need --folds: a model that trained on a "
              "label has learned it)")
    lines += ["", "## Suspect labels", "", f"Ranked by label quality (softmin of the probability the model gives each "
              f"pixel's label; lowest first), from predictions on images the model did not train on: {source}.", "",
              "| rank | split | image | label quality | suspect pixels | by |", "|---|---|---|---|---|---|"]
    lines += [f"| {n + 1} | {r['split']} | {r['id']} | {r['label_quality']:.3f} | {_pct(r['suspect_share'])}% | "
              f"{r['by']} |" for n, r in enumerate(suspects[:max(options.worst, 20)])]
    lines += [""] + [f"![{r['id']}]({r['figure']})" for r in suspects if "figure" in r]
    if "annotate_next" in study:
        lines += ["", "## Annotate next", "", f"{options.unlabelled} ranked by the model's mean pixel "
                  f"{options.uncertainty} uncertainty (1 = no idea, 0 = sure):", "", "| rank | image | uncertainty |",
                  "|---|---|---|"]
        lines += [f"| {n + 1} | {r['path']} | {r['uncertainty']:.3f} |"
                  for n, r in enumerate(study["annotate_next"][:max(options.worst, 20)])]
    if "learning_curve" in study:
        curve = study["learning_curve"]
        lines += ["", "## How many images", "", "| training images | mean IU |", "|---|---|"]
        lines += [f"| {n} | {_pct(m)} |" for n, m in zip(curve["images"], curve["mean_iou"])]
        if "fit" in curve:
            lines += ["", f"Power law: 1 - mean IU = {curve['fit']['a']:.3g} x images^({-curve['fit']['b']:.3g})."]
            if "target" in curve:
                t = curve["target"]
                interval = ("no interval from two points" if math.isnan(t["low"]) else
                            f"68% interval {t['low']:.0f} to {t['high']:.0f}")
                lines.append(f"Mean IU {_pct(t['mean_iou'])} needs about {t['images']:.0f} training images "
                             f"({interval}; an extrapolation beyond {max(curve['images'])} images holds only as far "
                             "as the power law does)." if math.isfinite(t["images"]) else
                             f"The fitted curve does not rise towards mean IU {_pct(t['mean_iou'])}: more images of "
                             "this recipe are not predicted to reach it.")
        else:
            lines += ["", f"No power law fits: {curve['fit_error']}."]
        lines += ["", "![learning curve](learning_curve.png)"]
    return "\n".join(lines) + "\n"
