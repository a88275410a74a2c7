"""Images/s of `python -m fcn_jax.predict` on a folder of mixed-size images, one image at a time vs size buckets.

Writes --images JPEGs of VOC-like sizes (height and width drawn from 200..500, seeded, so nearly every size is
distinct) and random converted FCN-8s weights (caffe geometry, --width) to a temporary folder, then runs predict
on the folder in a fresh process per run, compilation included (what a user waits for), the settings
alternating for --rounds rounds (order reversed every round). Per setting: median / min / max seconds of
predict.main, images/s at the median, compilations, and the share of mask pixels equal to the exact
one-image-at-a-time masks.

  python -m benchmarks.folder_throughput [--images 40] [--width 0.25] [--rounds 5]
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile

import jax
import numpy as np
from PIL import Image

from benchmarks import common

SETTINGS = {  # name: predict flags
    "one_at_a_time": [],
    "buckets4_batch4": ["--buckets", "4", "--batch_size", "4"],
    "buckets8_batch4": ["--buckets", "8", "--batch_size", "4"],
}
RUN = """
import json, sys, time
from fcn_jax import predict
start = time.perf_counter()
assert predict.main(sys.argv[1:]) == 0
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def write_folder(directory: str, count: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    sizes = [tuple(int(v) for v in rng.integers(200, 501, 2)) for _ in range(count)]
    os.makedirs(directory)
    for i, (height, width) in enumerate(sizes):
        coarse = rng.integers(0, 256, (height // 20 + 2, width // 20 + 2, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)  # smooth, photo-like JPEGs
        image.save(os.path.join(directory, f"img{i:03d}.jpg"), quality=90)
    return sizes


def write_weights(directory: str, width: float) -> None:
    from fcn_jax.models import zoo
    from fcn_jax.weights import checkpoints

    model = zoo.create_model("fcn8s", num_classes=21, width=width)
    params = common.random_params(model, (1, 64, 64, 3))
    checkpoints.save_params(directory, params, {"format": "benchmark", "variant": "fcn8s", "num_classes": 21,
                                                "width": width, "geometry": "caffe", "normalization": "caffe_bgr"})


def run_predict(weights: str, images: str, output: str, flags: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    env.pop("XLA_FLAGS", None)  # the machine's real devices, not a test's fake ones
    completed = subprocess.run([sys.executable, "-c", RUN, "--weights", weights, "--input", images, "--output",
                                output, *flags], capture_output=True, text=True, env=env, check=True)
    seconds = json.loads(completed.stdout.strip().splitlines()[-1])["seconds"]
    compilations = int(re.search(r"(\d+) compilation\(s\)", completed.stdout).group(1))
    return {"seconds": seconds, "compilations": compilations}


def agreement(output: str, exact: str) -> float:
    """Share of mask pixels of `output` equal to those of `exact` (over all masks)."""
    equal = total = 0
    for name in sorted(n for n in os.listdir(exact) if n.endswith(".png")):
        a, b = (np.asarray(Image.open(os.path.join(d, name))) for d in (output, exact))
        equal, total = equal + int((a == b).sum()), total + a.size
    return equal / total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "folder_throughput.json"))
    args = parser.parse_args(argv)
    report = {"machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
                          "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
              "images": args.images, "width": args.width, "rounds": args.rounds, "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        sizes = write_folder(os.path.join(tmp, "images"), args.images)
        report["distinct_sizes"] = len(set(sizes))
        write_weights(os.path.join(tmp, "weights"), args.width)
        runs = {name: [] for name in args.settings}
        for rnd in range(args.rounds):
            for name in args.settings if rnd % 2 == 0 else args.settings[::-1]:
                runs[name].append(run_predict(os.path.join(tmp, "weights"), os.path.join(tmp, "images"),
                                              os.path.join(tmp, name), SETTINGS[name]))
                print(f"round {rnd} {name}: {runs[name][-1]}", flush=True)
        exact = os.path.join(tmp, "one_at_a_time")
        for name, results in runs.items():
            seconds = [r["seconds"] for r in results]
            report["settings"][name] = {
                "flags": " ".join(SETTINGS[name]), "seconds": [round(s, 2) for s in seconds],
                "median_s": round(statistics.median(seconds), 2), "min_s": round(min(seconds), 2),
                "max_s": round(max(seconds), 2), "images_per_s": round(args.images / statistics.median(seconds), 3),
                "compilations": results[-1]["compilations"],
                "mask_agreement_with_exact": round(agreement(os.path.join(tmp, name), exact), 5)
                if os.path.isdir(exact) else None}
    common.write_report("folder_throughput", report, args.out)


if __name__ == "__main__":
    main()
