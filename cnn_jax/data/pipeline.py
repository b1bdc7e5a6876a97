"""The batches a run reads: from arrays in memory, or streamed, each image read and converted when its batch is near.

    training_batches(dataset, seed, batch_size, steps_per_epoch, crop, start, end, part)
    evaluation_batches(dataset, batch_size, part)

Both paths give the same batches. Step s's batch is a pure function of the
seed and s: epoch e = s // steps_per_epoch reads the training examples in
`epoch_permutation(seed, e)`, batch after batch, and each process takes its
slice of each batch (`part`). So the pipeline's position is the step, which
every checkpoint holds, and a resumed run reads exactly what an uninterrupted
one would, on any number of processes.

A dataset of arrays used as they are (`Dataset.in_memory`: IDX files, small
fixed-size tensorflow-datasets, without `image_size` or `channels`) is sliced
in memory, the fastest way.
Any other is streamed with Grain: a `MapDataset` over the examples of steps
[start, end), each read (`Images.open`: a file decoded, a record read) and
converted in `workers` threads (Pillow decodes and resizes without the GIL)
ahead of the step that needs it, then batched. Only `prefetch` images are
ever held, however large the dataset (BENCHMARKS.md: peak memory).

Converting an image to the run's `Dataset.image_shape`: in training with
`crop`, Inception's random crop (`files.random_resized`), drawn from
(seed, epoch, example) so that it too depends on nothing else; otherwise
and in evaluation, the centred crop of the shape's aspect ratio
(`files.centre`), which `experiments.predict` applies to any file too.
"""

import functools
import itertools
import os
from collections.abc import Iterator

import numpy as np

from cnn_jax.data import files
from cnn_jax.data.batching import batches, epoch_permutation
from cnn_jax.data.dataset import Dataset

WORKERS = os.cpu_count() or 1  # Threads converting images.
PREFETCH = 4  # Batches converted ahead of the step that needs them (at most).


@functools.lru_cache(maxsize=8)  # The epochs in flight, of each run of a vectorised group.
def _order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    return epoch_permutation(seed, epoch, num_examples)


def _open(images, i: int):
    """Example i of `images` (arrays or `Images`) as a Pillow image at its own size."""
    return files.from_array(images[i]) if isinstance(images, np.ndarray) else images.open(i)


def convert(images, i: int, shape: tuple[int, int, int], rng: np.random.Generator | None = None) -> np.ndarray:
    """Example i of `images` as uint8 `shape`: Inception's random crop drawn from `rng`, or with None the centred
    crop (see the module docstring)."""
    image = _open(images, i)
    if image.mode != ("L" if shape[2] == 1 else "RGB"):
        image = image.convert("L" if shape[2] == 1 else "RGB")
    view = files.centre(image, shape[:2]) if rng is None else files.random_resized(image, shape[:2], rng)
    return files.as_array(view, shape[2])


def _share(batch_size: int, part: tuple[int, int]) -> tuple[int, int]:
    """(first row, rows) of a batch that process `part[0]` of `part[1]` reads."""
    index, count = part
    return index * batch_size // count, batch_size // count


def _training_example(dataset: Dataset, seed: int, batch_size: int, steps_per_epoch: int, crop: bool,
                      part: tuple[int, int], slot: int) -> dict:
    """The `slot`-th example this process reads in training: row `slot % rows` of its share of step
    `slot // rows`'s batch."""
    first, rows = _share(batch_size, part)
    step, row = divmod(slot, rows)
    epoch, batch = divmod(step, steps_per_epoch)
    i = int(_order(seed, epoch, len(dataset.train_labels))[batch * batch_size + first + row])
    rng = np.random.default_rng((seed, epoch, i)) if crop else None
    return {"image": convert(dataset.train_images, i, dataset.image_shape, rng), "label": dataset.train_labels[i]}


def _evaluation_example(dataset: Dataset, batch_size: int, part: tuple[int, int], slot: int) -> dict:
    """The `slot`-th example this process reads in evaluation; past the last test example, a zero image with
    'mask' 0 (the last batch's padding)."""
    first, rows = _share(batch_size, part)
    batch, row = divmod(slot, rows)
    i = batch * batch_size + first + row
    if i >= len(dataset.test_labels):
        return {"image": np.zeros(dataset.image_shape, np.uint8), "label": np.int32(0), "mask": np.float32(0)}
    return {"image": convert(dataset.test_images, i, dataset.image_shape), "label": dataset.test_labels[i],
            "mask": np.float32(1)}


def _streamed(example, slots: range, rows: int) -> Iterator[dict]:
    """Grain: `example(slot)` for each slot, converted in worker threads ahead of need, in batches of `rows`."""
    import grain

    read = grain.ReadOptions(num_threads=WORKERS, prefetch_buffer_size=PREFETCH * rows)
    dataset = grain.MapDataset.range(slots.start, slots.stop).map(example)
    return iter(dataset.to_iter_dataset(read).batch(rows, drop_remainder=True))


def training_batches(dataset: Dataset, seed: int, batch_size: int, steps_per_epoch: int, crop: bool, start: int,
                     end: int, part: tuple[int, int] = (0, 1)) -> Iterator[dict]:
    """{'image', 'label'} batches of steps [start, end): this process's share (`part`) of each (see the module
    docstring). `crop`: Inception's random crops (a dataset `in_memory` is used as it is: never cropped)."""
    if not dataset.in_memory:
        rows = _share(batch_size, part)[1]
        example = functools.partial(_training_example, dataset, seed, batch_size, steps_per_epoch, crop, part)
        return _streamed(example, range(start * rows, end * rows), rows)
    return itertools.islice(_memory_batches(dataset, seed, batch_size, steps_per_epoch, start, part), end - start)


def _memory_batches(dataset: Dataset, seed: int, batch_size: int, steps_per_epoch: int, start: int,
                    part: tuple[int, int]) -> Iterator[dict]:
    epoch, done = divmod(start, steps_per_epoch)
    while True:
        order = _order(seed, epoch, len(dataset.train_labels))[done * batch_size :]  # Resuming inside an epoch.
        yield from itertools.islice(batches(dataset.train_images, dataset.train_labels, batch_size, order, part=part),
                                    steps_per_epoch - done)
        epoch, done = epoch + 1, 0


def evaluation_batches(dataset: Dataset, batch_size: int, part: tuple[int, int] = (0, 1)) -> Iterator[dict]:
    """{'image', 'label', 'mask'} batches of every test example once, the last padded (mask 0): this process's
    share of each."""
    if dataset.in_memory:
        return batches(dataset.test_images, dataset.test_labels, batch_size, part=part)
    rows = _share(batch_size, part)[1]
    count = -(-len(dataset.test_labels) // batch_size) * rows
    return _streamed(functools.partial(_evaluation_example, dataset, batch_size, part), range(count), rows)


def test_images(dataset: Dataset, indices=slice(None)) -> np.ndarray:
    """uint8 `[n, h, w, c]`: the test images at `indices` (default all) as evaluation sees them, in memory (for
    the tools that look at a few: `experiments.inspect`, `--log_images`)."""
    if dataset.in_memory:
        return dataset.test_images[indices]
    chosen = np.arange(len(dataset.test_labels))[indices]
    return np.stack([convert(dataset.test_images, int(i), dataset.image_shape) for i in np.atleast_1d(chosen)])
