"""The dense CRF's time per image: fcn_jax (infer.dense_crf.refine, the permutohedral lattice in XLA) against
pydensecrf (the authors' C++ through pydensecrf2), alternating call by call in one process, outputs checked equal
first. pydensecrf is a reference for this benchmark only, never a dependency: build it in its own venv
(numpy and cython first, then `pip install pydensecrf2`) and pass its site-packages.

    python benchmarks/crf.py --reference_site /work/crfref/.venv/lib/python3.11/site-packages \
        [--size 375 500] [--classes 21] [--rounds 7] [--output benchmarks/results/crf.json]

The scene: a smooth synthetic image with noise and smooth random logits (no photo ships with the repo); the number of
lattice points, which sets both implementations' work, is recorded.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

from fcn_jax.infer import dense_crf
from fcn_jax.models import crf

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def scene(height: int, width: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width]
    image = np.stack([128 + 100 * np.sin(xs / 40.0), 128 + 100 * np.cos(ys / 30.0), (xs + ys) % 256], -1)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).round().astype(np.uint8)
    coarse = rng.normal(0, 1, (height // 8 + 1, width // 8 + 1, classes)).astype(np.float32)
    logits = 3 * np.asarray(jax.image.resize(coarse, (height, width, classes), "bilinear"))
    return np.ascontiguousarray(image), logits


def reference_crf(logits, image, settings: crf.CRFSettings):
    """pydensecrf's marginals Q, (H, W, L), with the same parameters; unary = -log softmax(logits)."""
    import pydensecrf.densecrf as dcrf

    height, width, classes = logits.shape
    shifted = logits - logits.max(-1, keepdims=True)
    unary = -(shifted - np.log(np.exp(shifted).sum(-1, keepdims=True)))
    model = dcrf.DenseCRF2D(width, height, classes)
    model.setUnaryEnergy(np.ascontiguousarray(unary.reshape(-1, classes).T.astype(np.float32)))
    model.addPairwiseGaussian(sxy=settings.gaussian_sxy, compat=settings.gaussian_weight)
    model.addPairwiseBilateral(sxy=settings.bilateral_sxy, srgb=settings.bilateral_srgb, rgbim=image,
                               compat=settings.bilateral_weight)
    q = np.asarray(model.inference(settings.iterations), np.float32)
    return q.T.reshape(height, width, classes)


def ours(logits, image, settings):
    out = dense_crf.refine(logits, image, settings, (("", logits.shape[-1]),))
    return np.asarray(jax.nn.softmax(out, -1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference_site", required=True, help="the site-packages holding pydensecrf")
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", default=os.path.join(RESULTS, "crf.json"))
    args = parser.parse_args()
    sys.path.append(args.reference_site)  # after our own site-packages: our numpy stays the one imported
    settings = crf.CRFSettings()  # the usual values: gaussian 3/3, bilateral 80/13/10, 5 iterations
    image, logits = scene(*args.size, args.classes)
    load_before = os.getloadavg()
    reference, mine = reference_crf(logits, image, settings), ours(logits, image, settings)  # warm-up, compiles
    difference = np.abs(reference - mine)
    assert difference.max() < 1e-3, difference.max()
    times = {"fcn_jax": [], "pydensecrf": []}
    for _ in range(args.rounds):
        for name, run in (("fcn_jax", ours), ("pydensecrf", reference_crf)):
            start = time.perf_counter()
            run(logits, image, settings)
            times[name].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times["fcn_jax"], times["pydensecrf"])]
    widths, words = crf.kernel_widths(settings, *args.size)
    counts = {name: int(k.count) for name, k in dense_crf._keys(
        crf.pixel_grid(*args.size), image.reshape(-1, 3), None, widths, words).items()}
    import pydensecrf

    result = {
        "benchmark": "dense CRF, time per image (setup + mean field), alternating rounds",
        "command": "python benchmarks/crf.py " + " ".join(sys.argv[1:]),
        "size": list(args.size), "classes": args.classes, "settings": settings.as_dict(),
        "lattice_points": counts,
        "max_abs_q_difference": float(difference.max()), "mean_abs_q_difference": float(difference.mean()),
        "argmax_agreement": float((reference.argmax(-1) == mine.argmax(-1)).mean()),
        "seconds": {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "all": v}
                    for name, v in times.items()},
        "ratio_fcn_jax_over_pydensecrf": {"median": statistics.median(ratios), "min": min(ratios),
                                          "max": max(ratios)},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__,
                     "pydensecrf": getattr(pydensecrf, "__version__", "pydensecrf2 1.1")},
    }
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    result["cpu"] = names[0] if names else result["cpu"]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("seconds", "ratio_fcn_jax_over_pydensecrf", "max_abs_q_difference")},
                     indent=1))


if __name__ == "__main__":
    main()
