"""How well the study finds wrong labels: the folder example with a tenth of its training labels corrupted.

Writes the folder example (300 train / 60 val images), copies it with `--share` of the training labels corrupted
(seeded; one object per corrupted image, alternately left unlabelled (painted background) or given another shape
class), trains experiments/folder.py on the corrupted copy, then runs the study with --folds (every training label
scored by a model that did not train on it). Reports, among the top-ranked training images as many as were
corrupted, the share that were corrupted (precision at k = recall at k), its chance level (= --share), and the
average precision of the whole ranking.

  python -m benchmarks.label_errors [--out runs/label_errors] [--folds 3] [--share 0.1] [--seed 0]
Writes benchmarks/results/label_errors.json (and the study's report under --out/run/study).
"""
import argparse
import json
import os
import platform
import shutil
import time

import jax
import numpy as np
from PIL import Image
from scipy import ndimage

from experiments import folder as folder_experiment
from fcn_jax.data import dataset_info
from fcn_jax.data import synthetic as data_synthetic
from fcn_jax.flows import study
from fcn_jax.train import job

RESULT = os.path.join(os.path.dirname(__file__), "results", "label_errors.json")


def corrupt(root: str, share: float, seed: int) -> dict[str, str]:
    """Corrupts `share` of root's training labels in place; {image id: what was done}."""
    info = dataset_info.from_json(json.loads(open(os.path.join(root, "classes.json")).read()))
    colours = np.zeros((256, 3), np.uint8)
    colours[:info.num_classes] = info.colors
    colours[255] = info.ignore_color
    labels_dir = os.path.join(root, "labels", "train")
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(labels_dir))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(stems), round(share * len(stems)), replace=False).tolist())
    done = {}
    for n, index in enumerate(chosen):
        path = os.path.join(labels_dir, f"{stems[index]}.png")
        label = info.decode(path)
        objects = [c for c in np.unique(label) if 0 < c < info.num_classes]
        c = objects[rng.integers(len(objects))]
        regions, count = ndimage.label(label == c)
        region = regions == 1 + int(np.argmax(np.bincount(regions.ravel())[1:]))  # its largest region
        if n % 2 == 0:
            label[region], done[stems[index]] = 0, f"{info.classes[c]} left unlabelled"
        else:
            other = rng.choice([k for k in range(1, info.num_classes) if k != c])
            label[region], done[stems[index]] = other, f"{info.classes[c]} labelled {info.classes[other]}"
        Image.fromarray(colours[label]).save(path)
    return done


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/label_errors")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    clean = data_synthetic.write_synthetic_folder(os.path.join(args.out, "shapes"), num_train=300, num_val=60)
    corrupted = os.path.join(args.out, "shapes_corrupted")
    if not os.path.isdir(corrupted):
        shutil.copytree(clean, corrupted)
        with open(os.path.join(args.out, "corrupted.json"), "w") as f:
            json.dump(corrupt(corrupted, args.share, args.seed), f, indent=1)
    with open(os.path.join(args.out, "corrupted.json")) as f:
        done = json.load(f)
    config = folder_experiment.get_config()
    config.data.update(manual_dir=corrupted, data_dir=os.path.join(args.out, "tfds_corrupted"))
    run = os.path.join(args.out, "run")
    job.train_and_evaluate(config, run)
    result = study.run(run, os.path.join(run, "study"), study.Options(folds=args.folds))
    ranked = [r["id"] for r in result["suspect_labels"] if r["split"] == config.data.train_split]
    hits = np.array([stem in done for stem in ranked])
    k = len(done)
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    out = {
        "command": f"python -m benchmarks.label_errors --out {args.out} --folds {args.folds} --share {args.share} "
                   f"--seed {args.seed}",
        "train_images": len(ranked), "corrupted": k, "folds": args.folds,
        "corrupted_in_top_k": int(hits[:k].sum()), "precision_at_k": float(hits[:k].mean()),
        "chance": k / len(ranked), "average_precision": float(precision_at[hits].mean()),
        "corrupted_in_top_2k": int(hits[:2 * k].sum()),
        "ranks_of_corrupted": [int(i) + 1 for i in np.flatnonzero(hits)],
        "ranks_by_kind": {kind: sorted(ranked.index(s) + 1 for s, what in done.items()
                                       if what.endswith("left unlabelled") == (kind == "left unlabelled"))
                          for kind in ("left unlabelled", "given another class")},
        "val_mean_iou": result["model"]["mean_iou"], "seconds": round(time.time() - start),
        "machine": platform.processor() or platform.machine(),
        "versions": {"python": platform.python_version(), "jax": jax.__version__},
        "load_average_at_end": os.getloadavg(),
    }
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    with open(RESULT, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "ranks_of_corrupted"}, indent=1))


if __name__ == "__main__":
    main()
