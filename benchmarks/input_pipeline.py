"""Images/s and CPU ms/image of fcn_jax.data.input_pipeline at VOC scale (500x375 / 375x500 images); writes JSON.

Sources (200 images, smooth colour noise with rectangular label blobs):
  memory        a Python list of decoded arrays: the pipeline's own cost, no decoding.
  array_record  the same images as JPEG + palette PNG in a VOC/SBD tree written here, prepared by
                fcn_jax.data.voc_builder and read through its tfds array_record data source (voc_train split,
                198 images): decoding included, as in training.
Pipelines (batch 8 unless --batch):
  read_*            only the source reads (padded_batch to 500x500), three ways: parallel
                    tf.numpy_function map (what input_pipeline uses), the same map sequential,
                    and Dataset.from_generator.
  train_reference   crop 500x500 (pad with mean / 255), no scale, no flip (the reference recipe).
  train_augmented   crop 500x500, random scale 0.5..2.0, flip.
  eval_pad512       whole images padded to 512x512.
Images/s depends on what else runs on the machine (load averages are recorded); CPU ms/image
(all threads of the process) much less.

  python -m benchmarks.input_pipeline [--sources memory array_record] [--out benchmarks/results/input_pipeline.json]
"""
import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import common  # noqa: E402
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


def read_datasets(source) -> dict[str, tf.data.Dataset]:
    """Just the reads, batched like training (padded, since sizes differ)."""
    def read(index):
        image, label, _ = input_pipeline.read_example(source, index)
        return image, label

    def mapped(parallel):
        return tf.data.Dataset.range(len(source)).repeat().map(
            lambda i: tf.numpy_function(read, [i], [tf.uint8, tf.uint8], stateful=False), num_parallel_calls=parallel)

    def generated():
        while True:
            for i in range(len(source)):
                yield read(i)

    spec = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([None, None], tf.uint8))
    return {"read_numpy_function_parallel": mapped(tf.data.AUTOTUNE), "read_numpy_function_sequential": mapped(None),
            "read_from_generator": tf.data.Dataset.from_generator(generated, output_signature=spec)}


def pipelines(source, batch: int) -> dict[str, tf.data.Dataset]:
    common = {"global_batch_size": batch, "crop_size": (500, 500), "seed": 0}
    out = {name: ds.padded_batch(batch, padded_shapes=([500, 500, 3], [500, 500])).prefetch(tf.data.AUTOTUNE)
           for name, ds in read_datasets(source).items()}
    out["train_reference"] = input_pipeline.train_dataset(source, scale_range=None, flip=False, **common)
    out["train_augmented"] = input_pipeline.train_dataset(source, scale_range=(0.5, 2.0), flip=True, **common)
    out["eval_pad512"] = input_pipeline.eval_dataset(source, batch_size=batch, pad_size=(512, 512)).repeat()
    return out


def measure(dataset: tf.data.Dataset, batch: int, warmup: int, batches: int) -> dict:
    """Wall-clock images/s, and CPU ms per image over all threads (steadier when the machine is shared)."""
    iterator = dataset.as_numpy_iterator()
    for _ in range(warmup):
        next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = batch * batches
    return {"images_per_s": round(images / wall, 1), "cpu_ms_per_image": round(1e3 * cpu / images, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+", default=["memory", "array_record"], choices=["memory", "array_record"])
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--out", default="benchmarks/results/input_pipeline.json")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]  # other work on the machine skews images/s, much less CPU ms/image
    memory = memory_source(args.num_images)
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for source_name in args.sources:
            source = memory if source_name == "memory" else array_record_source(memory, root)
            for name, dataset in pipelines(source, args.batch).items():
                result = measure(dataset, args.batch, args.warmup, args.batches)
                results[f"{source_name}/{name}"] = result
                print(f"{source_name:>12s}  {name:32s} {result['images_per_s']:8.1f} images/s "
                      f"{result['cpu_ms_per_image']:7.2f} CPU ms/image", flush=True)

    record = {
        "benchmark": "input_pipeline",
        "unit": "images/s wall clock and CPU ms/image (all threads), batches pulled with as_numpy_iterator",
        "num_images": args.num_images, "image_shapes": [list(s) for s in SHAPES], "batch": args.batch,
        "batches_timed": args.batches, "warmup_batches": args.warmup, "results": results,
        "machine": {"cpus": os.cpu_count(), "load_avg_1min_before": load_before,
                    "platform": platform.platform(), "python": platform.python_version(), "tensorflow": tf.__version__},
    }
    common.write_report("input_pipeline", record, args.out)  # adds the load average after, loadavg_end


if __name__ == "__main__":
    main()
