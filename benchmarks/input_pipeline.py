"""Images/s of fcn_jax.data.input_pipeline (NumPy threads, no TensorFlow) against the tf.data pipeline it replaced
(benchmarks/tf_data_reference.py), at VOC scale (500x375 / 375x500 images); writes JSON.

Sources (200 images, smooth colour noise with rectangular label blobs):
  memory        a Python list of decoded arrays: the pipeline's own cost, no decoding.
  array_record  the same images as JPEG + palette PNG in a VOC/SBD tree written here, prepared by
                fcn_jax.data.voc_builder and read through its tfds array_record data source (voc_train split,
                198 images): decoding included, as in training.
Cases (batch 8 unless --batch), each timed for both pipelines, alternating, --rounds rounds (medians and spread):
  demo              the demo's crops: 128x128, scale 0.75..1.25, flip.
  train_reference   crop 500x500 (pad with mean / 255), no scale, no flip (the reference recipe).
  train_augmented   crop 500x500, random scale 0.5..2.0, flip.
  eval_pad512       whole images padded to 512x512.
Before timing, each case's first batches are checked equal between the two (bit for bit). Images/s depends on what
else runs on the machine (load averages are recorded); CPU ms/image (all threads of the process) much less.

  python -m benchmarks.input_pipeline [--sources memory array_record] [--rounds 5]
      [--out benchmarks/results/input_pipeline.json]
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import common, tf_data_reference  # noqa: E402
from fcn_jax.data import input_pipeline, voc_builder
from fcn_jax.data import synthetic as data_synthetic
from fcn_jax.data import voc as data_voc

SHAPES = ((375, 500), (500, 375))


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-frequency colour noise: compresses like a photo, not like white noise."""
    coarse = rng.integers(0, 256, (height // 25 + 2, width // 25 + 2, 3)).astype(np.float32)
    image = tf.image.resize(coarse[None], (height, width), method="bicubic")[0].numpy()
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def blob_label(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    label = np.zeros((height, width), np.uint8)
    for _ in range(3):
        y0, x0 = rng.integers(0, height - 100), rng.integers(0, width - 100)
        label[y0:y0 + rng.integers(50, 200), x0:x0 + rng.integers(50, 200)] = rng.integers(1, 21)
    return label


def memory_source(num_images: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    source = []
    for i in range(num_images):
        h, w = SHAPES[i % 2]
        source.append({"image": smooth_image(rng, h, w), "label": blob_label(rng, h, w), "id": f"bench_{i:05d}"})
    return source


def array_record_source(source: list[dict], root: str):
    """Writes `source` as a VOC + SBD tree, prepares it with voc_dataset, returns the voc_train data source."""

    manual, voc, sbd = os.path.join(root, "manual"), data_voc.VOC_DIR, data_voc.SBD_DIR
    for folder in (f"{voc}/JPEGImages", f"{voc}/SegmentationClass", f"{voc}/ImageSets/Segmentation",
                   f"{sbd}/img", f"{sbd}/cls"):
        os.makedirs(os.path.join(manual, folder), exist_ok=True)
    ids = [f"2008_{i:06d}" for i in range(len(source))]
    for image_id, example in zip(ids, source):
        jpeg = data_synthetic.jpeg_bytes(example["image"])
        for path, data in ((f"{voc}/JPEGImages/{image_id}.jpg", jpeg),
                           (f"{voc}/SegmentationClass/{image_id}.png",
                            data_synthetic.palette_png_bytes(example["label"])),
                           (f"{sbd}/img/{image_id}.jpg", jpeg),
                           (f"{sbd}/cls/{image_id}.mat", data_synthetic.sbd_mat_bytes(example["label"]))):
            with open(os.path.join(manual, path), "wb") as f:
                f.write(data)
    split = len(ids) - 2  # VOC/SBD val keep two ids so every split is non-empty
    for path, names in ((f"{voc}/ImageSets/Segmentation/train.txt", ids[:split]),
                        (f"{voc}/ImageSets/Segmentation/val.txt", ids[split:]),
                        (f"{sbd}/train.txt", ids[:split]), (f"{sbd}/val.txt", ids[split:])):
        with open(os.path.join(manual, path), "w") as f:
            f.write("".join(f"{i}\n" for i in names))
    return voc_builder.load_split(os.path.join(root, "tfds"), "voc_train", manual)


CASES = {  # name: (train kwargs, or None for eval)
    "demo": {"crop_size": (128, 128), "scale_range": (0.75, 1.25), "flip": True},
    "train_reference": {"crop_size": (500, 500), "scale_range": None, "flip": False},
    "train_augmented": {"crop_size": (500, 500), "scale_range": (0.5, 2.0), "flip": True},
    "eval_pad512": None,
}


def streams(source, case: str, batch: int, start: int) -> dict:
    """{pipeline: an endless iterator of NumPy batches} for one case, from batch `start` on."""
    kwargs = CASES[case]
    if kwargs is None:
        eval_kwargs = {"batch_size": batch, "pad_size": (512, 512)}
        ours = lambda: input_pipeline.eval_batches(source, **eval_kwargs)  # noqa: E731
        theirs = lambda: tf_data_reference.numpy_batches(tf_data_reference.eval_dataset(source, **eval_kwargs))  # noqa: E731
        return {"numpy_threads": _endless(ours), "tf_data": _endless(theirs)}
    kwargs = {"global_batch_size": batch, "seed": 0, "start_step": start, **kwargs}
    return {"numpy_threads": input_pipeline.train_batches(source, **kwargs),
            "tf_data": tf_data_reference.numpy_batches(tf_data_reference.train_dataset(source, **kwargs))}


def _endless(make):
    while True:
        yield from make()


def check_equal(source, case: str, batch: int) -> None:
    ours, theirs = streams(source, case, batch, 0).values()
    for _ in range(2):
        a, b = next(ours), next(theirs)
        for key in ("image", "label"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{case} {key}")


def measure(batches, batch: int, warmup: int, count: int) -> dict:
    """Wall-clock images/s, and CPU ms per image over all threads (steadier when the machine is shared)."""
    for _ in range(warmup):
        next(batches)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        next(batches)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = batch * count
    return {"images_per_s": images / wall, "cpu_ms_per_image": 1e3 * cpu / images}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+", default=["memory", "array_record"], choices=["memory", "array_record"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/input_pipeline.json")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]  # other work on the machine skews images/s, much less CPU ms/image
    memory = memory_source(args.num_images)
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for source_name in args.sources:
            source = memory if source_name == "memory" else array_record_source(memory, root)
            for case in args.cases:
                check_equal(source, case, args.batch)
                rounds = {"numpy_threads": [], "tf_data": []}
                for r in range(args.rounds):  # alternating: both pipelines see the same machine
                    for name, batches in streams(source, case, args.batch, start=r * 1000).items():
                        rounds[name].append(measure(batches, args.batch, args.warmup, args.batches))
                        batches.close()
                summary = {name: {key: {"median": round(statistics.median(m[key] for m in runs), 2),
                                        "min": round(min(m[key] for m in runs), 2),
                                        "max": round(max(m[key] for m in runs), 2)}
                                  for key in ("images_per_s", "cpu_ms_per_image")}
                           for name, runs in rounds.items()}
                ratio = [a["images_per_s"] / b["images_per_s"] for a, b in zip(rounds["numpy_threads"],
                                                                              rounds["tf_data"])]
                summary["speed_ratio_numpy_over_tf_data"] = {"median": round(statistics.median(ratio), 3),
                                                             "min": round(min(ratio), 3), "max": round(max(ratio), 3)}
                results[f"{source_name}/{case}"] = summary
                print(f"{source_name:>12s} {case:16s} numpy_threads "
                      f"{summary['numpy_threads']['images_per_s']['median']:7.1f} img/s  tf_data "
                      f"{summary['tf_data']['images_per_s']['median']:7.1f} img/s  ratio "
                      f"{summary['speed_ratio_numpy_over_tf_data']['median']:.3f}", flush=True)

    record = {
        "benchmark": "input_pipeline",
        "command": "python -m benchmarks.input_pipeline " + " ".join(sys.argv[1:]),
        "unit": "images/s wall clock and CPU ms/image (all threads); medians, min and max over alternating rounds",
        "num_images": args.num_images, "image_shapes": [list(s) for s in SHAPES], "batch": args.batch,
        "batches_timed": args.batches, "warmup_batches": args.warmup, "rounds": args.rounds,
        "workers": input_pipeline.default_workers(), "results": results,
        "machine": {"cpus": os.cpu_count(), "load_avg_1min_before": load_before, "cpu": common.cpu_model(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "tensorflow": tf.__version__},
    }
    common.write_report("input_pipeline", record, args.out)  # adds the load average after, loadavg_end


if __name__ == "__main__":
    main()
