r"""Benchmarks, each measured side by side in one run.

    python -m experiments.benchmark --what=input_pipeline

input_pipeline: training throughput of the seed network when batches are cut
on the host (NumPy gather, copied to the device at each step: what
cnn_jax.train does) versus when the whole training set lives on the device
and each step gathers its batch there from a device-resident permutation.
"""

import functools
import itertools
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags

from cnn_jax import data, models, train
from cnn_jax.config import Config

flags.DEFINE_enum("what", "input_pipeline", ["input_pipeline"], "Which benchmark to run.")
flags.DEFINE_integer("batch_size", 100, "Training examples per step.")
flags.DEFINE_integer("steps", 200, "Timed steps per repeat.")
flags.DEFINE_integer("repeats", 5, "Repeats; the median is reported.")
FLAGS = flags.FLAGS


def _time(run_steps, repeats: int) -> float:
    """Median seconds of `run_steps()` over `repeats` runs, after one warm-up run."""
    run_steps()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_steps()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def input_pipeline(batch_size: int, steps: int, repeats: int) -> dict:
    dataset = data.load_dataset("fashion_mnist")
    config = Config(batch_size=batch_size)
    step_fn = functools.partial(train.train_step, augment=config.augment)
    order = data.epoch_permutation(0, 0, len(dataset.train_labels))
    state = train.create_train_state(models.ConvNet(), config, dataset.image_shape, steps)

    host_step = jax.jit(step_fn, donate_argnums=0)

    def host_loop():
        nonlocal state
        for batch in itertools.islice(data.batches(dataset.train_images, dataset.train_labels, batch_size, order), steps):
            state, _ = host_step(state, batch)
        jax.block_until_ready(state)

    images, labels, device_order = jax.device_put((dataset.train_images, dataset.train_labels, order))

    @functools.partial(jax.jit, donate_argnums=0)
    def device_step(state, images, labels, order, i):
        idx = jax.lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
        return step_fn(state, {"image": images[idx], "label": labels[idx]})

    def device_loop():
        nonlocal state
        for i in range(steps):
            state, _ = device_step(state, images, labels, device_order, i)
        jax.block_until_ready(state)

    results = {}
    for name, loop in (("host batches", host_loop), ("device-resident data", device_loop)):
        seconds = _time(loop, repeats)
        results[name] = steps * batch_size / seconds
    return results


def main(argv):
    del argv
    results = input_pipeline(FLAGS.batch_size, FLAGS.steps, FLAGS.repeats)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch {FLAGS.batch_size}, "
          f"median of {FLAGS.repeats} x {FLAGS.steps} steps")
    for name, rate in results.items():
        print(f"  {name:24s} {rate:10,.0f} examples/s")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
