"""A rare foreground: plain cross entropy against the class-imbalance losses (experiments/rare_foreground.py).

Writes a two-class folder dataset (--train / --val images of 160x160 textured background, each with one small
spot of radius 5..9 pixels, about 1% of the pixels; labels as 0/255 PNG masks declared by classes.json's
"id_map": {"0": 0, "255": 1}), then trains every variant of the sweep on it through the ablation runner.

  python -m benchmarks.rare_foreground [--out runs/rare_foreground] [--train 240] [--val 60] [--seed 0]
Writes benchmarks/results/rare_foreground.json and the sweep's results.md under --out/sweep.
"""
import argparse
import json
import os
import platform
import time

import jax
import numpy as np
from PIL import Image

from fcn_jax.flows import ablation

RESULT = os.path.join(os.path.dirname(__file__), "results", "rare_foreground.json")
SIZE = 160


def spot_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image, 0/255 mask): grey texture with noise, one slightly warmer spot."""
    cells = rng.integers(90, 170, (SIZE // 16 + 1, SIZE // 16 + 1))
    grey = np.kron(cells, np.ones((16, 16)))[:SIZE, :SIZE] + rng.normal(0, 18, (SIZE, SIZE))
    image = np.repeat(grey[..., None], 3, -1)
    radius = rng.uniform(5, 9)
    cy, cx = rng.uniform(radius, SIZE - radius, 2)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    spot = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    image[spot] += np.array([45.0, 10.0, -25.0])
    return np.clip(image, 0, 255).astype(np.uint8), np.where(spot, 255, 0).astype(np.uint8)


def write(root: str, num_train: int, num_val: int, seed: int) -> str:
    if os.path.isfile(os.path.join(root, "classes.json")):
        return root
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "labels", split), exist_ok=True)
        for n in range(count):
            image, mask = spot_image(rng)
            Image.fromarray(image).save(os.path.join(root, "images", split, f"{split}_{n:04d}.jpg"), quality=95)
            Image.fromarray(mask).save(os.path.join(root, "labels", split, f"{split}_{n:04d}.png"))
    with open(os.path.join(root, "classes.json"), "w") as f:
        json.dump({"classes": ["background", "spot"], "encoding": "index", "id_map": {"0": 0, "255": 1}}, f)
    return root


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/rare_foreground")
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--val", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    root = write(os.path.join(args.out, "spots"), args.train, args.val, args.seed)
    settings = [f"data.manual_dir={os.path.abspath(root)}",
                f"data.data_dir={os.path.abspath(os.path.join(args.out, 'tfds_spots'))}"]
    sweep = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                         "rare_foreground.py")
    results = ablation.run(sweep, os.path.join(args.out, "sweep"), settings=settings)
    names = [name for name, _ in ablation.load_sweep(sweep)[1]]
    out = {"command": f"python -m benchmarks.rare_foreground --out {args.out} --train {args.train} --val {args.val} "
                      f"--seed {args.seed}",
           "seconds": round(time.time() - start),
           "machine": platform.processor() or platform.machine(),
           "versions": {"python": platform.python_version(), "jax": jax.__version__},
           "load_average_at_end": os.getloadavg(),
           "variants": {name: {"spot_iou": r["per_class_iou"]["spot"], "mean_iou": r["mean_iou"],
                               "background_iou": r["per_class_iou"]["background"],
                               "spot_precision": r["per_class_precision"]["spot"],
                               "spot_recall": r["per_class_recall"]["spot"]}
                        for name, r in zip(names, results)}}
    labels = [np.asarray(Image.open(os.path.join(root, "labels", "train", f))) for f in
              sorted(os.listdir(os.path.join(root, "labels", "train")))]
    out["foreground_share_train"] = float(np.mean([np.mean(m == 255) for m in labels]))
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    with open(RESULT, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
