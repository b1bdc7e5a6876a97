"""Runs that share every shape trained as one program: `train_step` vectorised with `jax.vmap`.

An ablation runs every variant over several seeds. Runs that differ only in
their seed and learning rate share every shape, so one compiled step can
advance all of them: the states are stacked along a leading run axis, each
run draws its own batches (its own epoch permutations, exactly as
`loop.train_and_evaluate` would) and random numbers, and every step updates
all of them. The learning rate enters as data: the optimizer is built with a
peak rate of 1 (the schedule's shape) and each run's step is scaled by its own
peak rate, which is the same update because Adam's step is proportional to
its rate. Each run gets the workdir outputs of a normal run (config.json,
metrics.jsonl, timing.jsonl, TensorBoard events, a final checkpoint,
results.json), so a sweep's summary reads both kinds alike. Runs are
checkpointed only at the end: an interrupted group starts again
(`loop.train_and_evaluate` resumes mid-run).
"""

import functools
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax import data
from cnn_jax.analysis import arithmetic
from cnn_jax.layers import losses
from cnn_jax.training import checkpoint, loop, steps
from cnn_jax.training.config import Config
from cnn_jax.training.writers import MetricWriter, write_json_atomically


def stacked_batch(dataset: data.Dataset, orders: list[np.ndarray], step_in_epoch: int, batch_size: int) -> dict:
    """Batch `step_in_epoch` of each seed's order, stacked: {'image': [s, b, h, w, c], 'label': [s, b]}."""
    idx = np.stack([order[step_in_epoch * batch_size : (step_in_epoch + 1) * batch_size] for order in orders])
    return {"image": dataset.train_images[idx], "label": dataset.train_labels[idx]}


def group_key(config: Config) -> tuple:
    """Configs with equal keys can train together: everything but the seed and the learning rate is equal."""
    return tuple(sorted((k, v) for k, v in config.to_dict().items() if k not in ("seed", "learning_rate")))


def scaled_step(state, batch, rate, augment, loss):
    """`steps.train_step` for an optimizer built at peak rate 1, its update scaled by this run's peak `rate`."""
    grads, batch_stats, metrics = steps.gradients(state, batch, augment, loss)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, jax.tree.map(lambda update: rate * update, updates))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats), metrics


def train_group(configs: Sequence[Config], workdirs: Sequence[str]) -> list[dict]:
    """Trains each config (equal `group_key`s) into its workdir, all in one vmapped program; returns each results.json.

    Each workdir must not hold a run. Time is shared: each run's train,
    compile and wall seconds are the group's divided by the number of runs.
    Runs on the first device.
    """
    if len({group_key(config) for config in configs}) != 1:
        raise ValueError("train_group: the configs differ in more than their seeds and learning rates")
    wall_start = time.perf_counter()
    unit = Config(**{**configs[0].to_dict(), "learning_rate": 1.0})
    model, dataset, steps_per_epoch, total_steps = loop.plan(unit)
    for config in configs:
        config.validate()
    for config, workdir in zip(configs, workdirs, strict=True):
        loop.prepare_workdir(workdir, config, allow_config_change=False)
    seeds, rates = [config.seed for config in configs], jnp.asarray([config.learning_rate for config in configs])
    create = functools.partial(steps.initial_state, model, unit, dataset.image_shape, total_steps)
    states = jax.jit(jax.vmap(create))(jnp.asarray(seeds))
    loss = losses.lookup(unit.loss, unit.label_smoothing)

    compile_start = time.perf_counter()
    step_fn = jax.jit(jax.vmap(functools.partial(scaled_step, augment=unit.augment, loss=loss)), donate_argnums=0)
    eval_fn = jax.jit(jax.vmap(functools.partial(steps.eval_step, loss=loss), in_axes=(0, None)))
    first = stacked_batch(dataset, [np.arange(unit.batch_size)] * len(seeds), 0, unit.batch_size)
    step_fn = step_fn.lower(states, first, rates).compile()
    eval_batch = next(data.batches(dataset.test_images, dataset.test_labels, unit.eval_batch_size))
    eval_fn = eval_fn.lower(states, eval_batch).compile()
    compile_seconds = time.perf_counter() - compile_start

    writers = [MetricWriter(workdir) for workdir in workdirs]
    shape = steps.learning_rate_schedule(unit, total_steps)  # Each run's rate is its peak times this.
    step, train_seconds, records = 0, 0.0, []
    while step < total_steps:
        epoch = step // steps_per_epoch
        orders = [data.epoch_permutation(seed, epoch, len(dataset.train_labels)) for seed in seeds]
        epoch_start, metrics = time.perf_counter(), []
        for i in range(min(steps_per_epoch, total_steps - step)):
            states, step_metrics = step_fn(states, stacked_batch(dataset, orders, i, unit.batch_size), rates)
            metrics.append(step_metrics)
        metrics = jax.device_get(metrics)  # Waits for the epoch's last step.
        epoch_seconds = time.perf_counter() - epoch_start
        step, train_seconds = step + len(metrics), train_seconds + epoch_seconds
        sums = [eval_fn(states, batch) for batch in
                data.batches(dataset.test_images, dataset.test_labels, unit.eval_batch_size)]
        totals = jax.tree.map(lambda *xs: np.sum(xs, axis=0, dtype=np.float64), *jax.device_get(sums))
        records = []
        for k, writer in enumerate(writers):
            # The same float64 sums, in step order, as loop.train_and_evaluate.
            mean = {name: sum(float(m[name][k]) for m in metrics) / len(metrics) for name in ("loss", "accuracy")}
            test = {"loss": float(totals["loss"][k] / totals["count"][k]),
                    "accuracy": float(totals["correct"][k] / totals["count"][k])}
            rate = configs[k].learning_rate * float(shape(step))
            records.append(loop.epoch_record(step, steps_per_epoch, mean, test, rate))
            speed = len(metrics) * unit.batch_size / epoch_seconds  # Each run's share of the group's speed.
            writer.write(records[-1], timing={"examples_per_second": speed,
                                              "train_seconds": train_seconds / len(seeds)})
    for writer in writers:
        writer.close()

    results = []
    params = arithmetic.count_params(jax.tree.map(lambda x: x[0], states.params))
    seconds = {"train": train_seconds / len(seeds), "compile": compile_seconds / len(seeds)}
    for k, (run_config, workdir) in enumerate(zip(configs, workdirs, strict=True)):
        state = jax.tree.map(lambda x, k=k: x[k], states)
        with checkpoint.manager(workdir) as checkpoints:
            checkpoint.save(checkpoints, state, {"step": step, "loss_sum": 0.0, "accuracy_sum": 0.0,
                                                 "steps_in_epoch": 0, "train_seconds": seconds["train"],
                                                 "last_record": records[k]})
        seconds["wall"] = (time.perf_counter() - wall_start) / len(seeds)
        result = loop.results_record(run_config, dataset, params, records[k], seconds, [str(jax.devices()[0])])
        result["vectorized_runs"] = len(seeds)
        write_json_atomically(os.path.join(workdir, "results.json"), result)
        results.append(result)
    return results
