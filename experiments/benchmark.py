r"""Benchmarks: each compares variants side by side in one run, on one machine.

    python -m experiments.benchmark --what=input_pipeline
    python -m experiments.benchmark --what=max_pool

input_pipeline: training throughput of the seed network when batches are cut
  on the host (NumPy gather, copied to the device at each step: what
  cnn_jax.train does) versus when the whole training set lives on the device
  and each step gathers its batch there from a device-resident permutation.
max_pool: training throughput of the seed network with cnn_jax's max-pooling
  (reshape and max where windows tile the input) versus flax.linen.max_pool
  (XLA's windowed reduction, whose gradient is select-and-scatter).

Each variant runs a warm-up, then `--repeats` timed runs of `--steps` training
steps at `--batch_size`; the median is reported.
"""

import functools
import itertools
import statistics
import time

import flax.linen as nn
import jax
from absl import app, flags

from cnn_jax import data, models, train
from cnn_jax.config import Config

flags.DEFINE_enum("what", "input_pipeline", ["input_pipeline", "max_pool"], "Which comparison to run.")
flags.DEFINE_integer("batch_size", 100, "Training examples per step.")
flags.DEFINE_integer("steps", 200, "Timed steps per repeat.")
flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.")
FLAGS = flags.FLAGS


def median_seconds(run, repeats: int) -> float:
    """Median wall time of `run()` over `repeats` calls, after one warm-up call."""
    run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def host_loop(model, dataset, batch_size: int, steps: int):
    """A function running `steps` training steps of `model`, batches cut on the host."""
    config = Config(batch_size=batch_size)
    state = train.create_train_state(model, config, dataset.image_shape, steps)
    step = jax.jit(functools.partial(train.train_step, augment=config.augment), donate_argnums=0)
    order = data.epoch_permutation(0, 0, len(dataset.train_labels))

    def run():
        nonlocal state
        for batch in itertools.islice(data.batches(dataset.train_images, dataset.train_labels, batch_size, order), steps):
            state, _ = step(state, batch)
        jax.block_until_ready(state)

    return run


def device_loop(model, dataset, batch_size: int, steps: int):
    """A function running `steps` training steps of `model`, batches gathered on the device."""
    config = Config(batch_size=batch_size)
    state = train.create_train_state(model, config, dataset.image_shape, steps)
    step_fn = functools.partial(train.train_step, augment=config.augment)
    order = data.epoch_permutation(0, 0, len(dataset.train_labels))
    images, labels, order = jax.device_put((dataset.train_images, dataset.train_labels, order))

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, i):
        idx = jax.lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
        return step_fn(state, {"image": images[idx], "label": labels[idx]})

    def run():
        nonlocal state
        for i in range(steps):
            state, _ = step(state, i)
        jax.block_until_ready(state)

    return run


def variants(what: str, batch_size: int, steps: int) -> dict:
    """{variant name: function running `steps` training steps} for comparison `what`."""
    dataset = data.load_dataset("fashion_mnist")
    if what == "input_pipeline":
        return {
            "host batches": host_loop(models.ConvNet(), dataset, batch_size, steps),
            "device-resident data": device_loop(models.ConvNet(), dataset, batch_size, steps),
        }
    windowed = functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))
    return {
        "cnn_jax max_pool": host_loop(models.ConvNet(), dataset, batch_size, steps),
        "flax.linen.max_pool": host_loop(models.ConvNet(pool=windowed), dataset, batch_size, steps),
    }


def main(argv):
    del argv
    runs = variants(FLAGS.what, FLAGS.batch_size, FLAGS.steps)
    rates = {name: FLAGS.steps * FLAGS.batch_size / median_seconds(run, FLAGS.repeats) for name, run in runs.items()}
    print(f"{FLAGS.what} on {jax.devices()[0].device_kind} ({jax.default_backend()}): batch {FLAGS.batch_size}, "
          f"median of {FLAGS.repeats} x {FLAGS.steps} steps")
    baseline = next(iter(rates.values()))
    for name, rate in rates.items():
        print(f"  {name:24s} {rate:10,.0f} examples/s  {rate / baseline:5.2f}x")


if __name__ == "__main__":
    app.run(main)
