r"""Input pipelines side by side: images per second decoding a folder of JPEGs to training crops, and peak memory.

    python -m experiments.image_pipelines --images=2000                 # every side, 3 repeats, taking turns
    python -m experiments.image_pipelines --images=2000,20000 --sides=cnn_jax   # peak memory as the folder grows
    python -m experiments.image_pipelines --sides=memory,stream         # Fashion-MNIST: arrays vs streaming

The folder (`--data_dir`, default /tmp/cnn_jax-pipeline-images) holds `--images` generated 400×500 colour JPEGs
in two class folders, made once and reused. Each side reads every image once, as training reads it: Inception's
random crop resized to `--size`, in batches of `--batch_size`, decoded by `--workers` workers:

    cnn_jax      cnn_jax.data.pipeline (Grain's MapDataset, worker threads, Pillow)
    tf_data      tf.data: list_files -> read_file, decode_jpeg, sample_distorted_bounding_box, resize (parallel
                 calls AUTOTUNE) -> batch -> prefetch
    torchvision  torchvision.datasets.ImageFolder with RandomResizedCrop and PILToTensor (uint8, as the others), a
                 torch DataLoader with `--workers` worker processes (run by `--torch_python`, an interpreter that
                 has torchvision)
    memory       Fashion-MNIST's training split (Debian's package) sliced in memory: cnn_jax's path for it
    stream       the same arrays streamed image by image through the pipeline above (at their own size)

Each measurement is a process of its own (`--side`), the sides taking turns repeat by repeat. The rate is timed
from the 11th batch on (`WARM_UP`): start-up (listing, and for cnn_jax checking, the files; spawning workers) is
reported apart, and the batches that workers made ahead while it lasted do not inflate the rate. The median rate
and the largest peak resident memory (the process's `ru_maxrss`, everything it loaded included, and its worker
processes' largest, if any) are printed
and written to `--out` as JSON.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import flags

from experiments import cli

SIDES = ("cnn_jax", "tf_data", "torchvision", "memory", "stream")
flags.DEFINE_list("sides", ["cnn_jax", "tf_data", "torchvision"], f"Pipelines to compare: {', '.join(SIDES)}.")
flags.DEFINE_list("images", ["2000"], "Folder sizes to measure (images), e.g. 2000,20000.")
flags.DEFINE_string("data_dir", "/tmp/cnn_jax-pipeline-images", "Where the generated folders are kept.")
flags.DEFINE_integer("size", 224, "Training crops' size.")
flags.DEFINE_integer("batch_size", 64, "Images per batch.")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Decoding workers (threads or processes).")
flags.DEFINE_integer("repeats", 3, "Measurements of each side; the median rate is reported.")
flags.DEFINE_string("torch_python", sys.executable, "The Python interpreter of the torchvision side.")
flags.DEFINE_string("out", "", "Write the results here as JSON too.")
flags.DEFINE_string("side", "", "Internal: measure this one side in this process and print its JSON.")
FLAGS = flags.FLAGS

WARM_UP = 10  # Batches before the timing starts: more than any side prefetches (torchvision's 2 workers × 4).


def make_folder(directory: str, count: int, height: int = 400, width: int = 500) -> str:
    """`directory/<count>/{a,b}/*.jpg`: `count` colour JPEGs (quality 90) of smooth colour and noise, made once:
    each one of 32 smooth patterns, shifted by a random offset, plus a random slice of a bank of noise."""
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    folder = os.path.join(directory, str(count))
    done = os.path.join(folder, ".complete")
    if os.path.exists(done):
        return folder
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0 : 2 * height, 0 : 2 * width].astype(np.float32)
    patterns = [np.stack([127 + 100 * np.sin(x / (30 + 20 * c) + y / 50 + rng.uniform(0, 6.3)) for c in range(3)],
                         axis=-1).astype(np.int16) for _ in range(32)]
    noise = rng.integers(-12, 13, (2 * height, 2 * width, 3)).astype(np.int16)
    for i in tqdm(range(count), desc=f"making {count:,} JPEGs in {folder}", unit="file"):
        klass = os.path.join(folder, "ab"[i % 2])
        os.makedirs(klass, exist_ok=True)
        top, left, ny, nx = rng.integers(0, height), rng.integers(0, width), rng.integers(0, height), rng.integers(0, width)
        pixels = patterns[i % 32][top : top + height, left : left + width] + noise[ny : ny + height, nx : nx + width]
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(os.path.join(klass, f"{i:06d}.jpg"), quality=90)
    open(done, "w").close()
    return folder


def _cnn_jax(folder: str, size: int, batch_size: int, workers: int):
    from cnn_jax import data
    from cnn_jax.data import pipeline

    pipeline.WORKERS = workers
    dataset = data.load_dataset("folder", folder, test_fraction=0.01).at_shape((size, size), 3)
    steps = len(dataset.train_labels) // batch_size
    return (batch["image"] for batch in pipeline.training_batches(dataset, 0, batch_size, steps, True, 0, steps))


def _tf_data(folder: str, size: int, batch_size: int, workers: int):
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(workers)
    tf.config.threading.set_intra_op_parallelism_threads(workers)

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        begin, crop, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image), tf.zeros((1, 0, 4)), area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        image = tf.slice(image, begin, crop)
        return tf.cast(tf.image.resize(image, (size, size), antialias=True), tf.uint8)

    files = tf.data.Dataset.list_files(os.path.join(folder, "*", "*.jpg"), shuffle=True, seed=0)
    batches = files.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size, drop_remainder=True)
    return (batch.numpy() for batch in batches.prefetch(tf.data.AUTOTUNE))


def _torchvision(folder: str, size: int, batch_size: int, workers: int):
    import torch
    from torchvision import datasets, transforms

    torch.set_num_threads(1)
    transform = transforms.Compose([transforms.RandomResizedCrop(size), transforms.PILToTensor()])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(folder, transform), batch_size=batch_size,
                                         shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=False, prefetch_factor=4)
    return (images.numpy() for images, _ in loader)


def _fashion(stream: bool, batch_size: int, workers: int):
    import numpy as np

    from cnn_jax import data
    from cnn_jax.data import pipeline

    pipeline.WORKERS = workers
    dataset = data.load_dataset("fashion_mnist")
    if stream:  # Converted to their own size: streamed image by image, as any converted dataset is.
        dataset = dataset.at_shape(dataset.image_shape[:2], 0)
    steps = len(dataset.train_labels) // batch_size
    assert dataset.in_memory != stream
    return (np.asarray(b["image"]) for b in pipeline.training_batches(dataset, 0, batch_size, steps, False, 0, steps))


def measure(side: str, folder: str, size: int, batch_size: int, workers: int) -> dict:
    """One side's pass over every image: images per second (after `WARM_UP` batches), start-up seconds (to the
    first batch) and peak memory."""
    start = time.perf_counter()
    if side in ("memory", "stream"):
        batches = _fashion(side == "stream", batch_size, workers)
    else:
        batches = {"cnn_jax": _cnn_jax, "tf_data": _tf_data, "torchvision": _torchvision}[side](
            folder, size, batch_size, workers)
    first = next(batches)
    startup = time.perf_counter() - start
    assert first.dtype.name == "uint8" and first.shape[0] == batch_size, (first.dtype, first.shape)
    for _ in range(WARM_UP - 1):  # Start-up, and the batches its workers made while it lasted, are not in the rate.
        next(batches)
    ready = time.perf_counter()
    images = sum(len(batch) for batch in batches)
    seconds = time.perf_counter() - ready
    return {"side": side, "images_per_second": images / seconds, "images": images, "startup_seconds": startup,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _run_side(side: str, folder: str) -> dict:
    python = FLAGS.torch_python if side == "torchvision" else sys.executable
    command = [python, "-m", "experiments.image_pipelines", f"--side={side}", f"--data_dir={folder}",
               f"--size={FLAGS.size}", f"--batch_size={FLAGS.batch_size}", f"--workers={FLAGS.workers}"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(command, cwd=root, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode:
        raise SystemExit(f"side {side} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    from cnn_jax.errors import UserError

    if FLAGS.side:
        print(json.dumps(measure(FLAGS.side, FLAGS.data_dir, FLAGS.size, FLAGS.batch_size, FLAGS.workers)))
        return
    unknown = set(FLAGS.sides) - set(SIDES)
    if unknown:
        raise UserError(f"--sides: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SIDES)}")
    results = []
    folder_sides = set(FLAGS.sides) - {"memory", "stream"}
    for count in (int(n) for n in FLAGS.images) if folder_sides else [0]:
        folder = make_folder(FLAGS.data_dir, count) if folder_sides else ""
        runs = {side: [] for side in FLAGS.sides}
        for _ in range(FLAGS.repeats):
            for side in FLAGS.sides:
                runs[side].append(_run_side(side, folder))
        for side, measured in runs.items():
            row = {"side": side, "images": count if side not in ("memory", "stream") else measured[0]["images"],
                   "images_per_second": statistics.median(m["images_per_second"] for m in measured),
                   "rates": [round(m["images_per_second"], 1) for m in measured],
                   "peak_rss_mib": max(m["peak_rss_mib"] for m in measured),
                   "worker_peak_rss_mib": max(m["worker_peak_rss_mib"] for m in measured),
                   "startup_seconds": statistics.median(m["startup_seconds"] for m in measured)}
            results.append(row)
            print(f"{row['images']:>6} images | {side:<11} | {row['images_per_second']:8.1f} images/s (runs: "
                  f"{', '.join(map(str, row['rates']))}) | peak {row['peak_rss_mib']:7.1f} MiB"
                  + (f" (and each worker process {row['worker_peak_rss_mib']:.0f} MiB)" if side == "torchvision" else "")
                  + f" | start-up "
                  f"{row['startup_seconds']:.1f} s", flush=True)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump({"size": FLAGS.size, "batch_size": FLAGS.batch_size, "workers": FLAGS.workers,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.image_pipelines [--flags]")
