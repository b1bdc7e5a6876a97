"""Several seeds of one config trained as one program: `train_step` vectorised over seeds with `jax.vmap`.

An ablation runs every variant over several seeds. Runs that differ only in
their seed share every shape, so one compiled step can advance all of them:
the states are stacked along a leading seed axis, each seed draws its own
batches (its own epoch permutations, exactly as `train.train_and_evaluate`
would) and random numbers, and every step updates all of them. Each run gets
the workdir outputs of a normal run (config.json, metrics.jsonl,
timing.jsonl, TensorBoard events, results.json), so a sweep's summary reads
both kinds alike. Runs are checkpointed only at the end: an interrupted group
starts again (`train.train_and_evaluate` resumes mid-run).
"""

import functools
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import checkpoint, data, losses, models, train
from cnn_jax.config import Config
from cnn_jax.writers import MetricWriter, write_json_atomically


def stacked_batch(dataset: data.Dataset, orders: list[np.ndarray], step_in_epoch: int, batch_size: int) -> dict:
    """Batch `step_in_epoch` of each seed's order, stacked: {'image': [s, b, h, w, c], 'label': [s, b]}."""
    idx = np.stack([order[step_in_epoch * batch_size : (step_in_epoch + 1) * batch_size] for order in orders])
    return {"image": dataset.train_images[idx], "label": dataset.train_labels[idx]}


def train_seeds(config: Config, seeds: Sequence[int], workdirs: Sequence[str]) -> list[dict]:
    """Trains `config` once per seed (its `seed` replaced), all in one vmapped program; returns each results.json.

    Writes each run's outputs to its workdir (which must not hold a run), as
    `train.train_and_evaluate` does, with a final checkpoint. Time is shared:
    each run's train, compile and wall seconds are the group's divided by the
    number of seeds. Runs on the first device.
    """
    wall_start = time.perf_counter()
    model, dataset, steps_per_epoch, total_steps = train.plan(config)
    configs = [Config(**{**config.to_dict(), "seed": seed}) for seed in seeds]
    for run_config, workdir in zip(configs, workdirs, strict=True):
        train._prepare_workdir(workdir, run_config, allow_config_change=False)
    create = functools.partial(train.initial_state, model, config, dataset.image_shape, total_steps)
    states = jax.jit(jax.vmap(create))(jnp.asarray(seeds))
    loss = losses.lookup(config.loss, config.label_smoothing)

    compile_start = time.perf_counter()
    step_fn = jax.jit(jax.vmap(functools.partial(train.train_step, augment=config.augment, loss=loss)),
                      donate_argnums=0)
    eval_fn = jax.jit(jax.vmap(functools.partial(train.eval_step, loss=loss), in_axes=(0, None)))
    first = stacked_batch(dataset, [np.arange(config.batch_size)] * len(seeds), 0, config.batch_size)
    step_fn = step_fn.lower(states, first).compile()
    eval_batch = next(data.batches(dataset.test_images, dataset.test_labels, config.eval_batch_size))
    eval_fn = eval_fn.lower(states, eval_batch).compile()
    compile_seconds = time.perf_counter() - compile_start

    writers = [MetricWriter(workdir) for workdir in workdirs]
    schedule = train.learning_rate_schedule(config, total_steps)
    step, train_seconds, records = 0, 0.0, []
    while step < total_steps:
        epoch = step // steps_per_epoch
        orders = [data.epoch_permutation(seed, epoch, len(dataset.train_labels)) for seed in seeds]
        epoch_start, metrics = time.perf_counter(), []
        for i in range(min(steps_per_epoch, total_steps - step)):
            states, step_metrics = step_fn(states, stacked_batch(dataset, orders, i, config.batch_size))
            metrics.append(step_metrics)
        metrics = jax.device_get(metrics)  # Waits for the epoch's last step.
        epoch_seconds = time.perf_counter() - epoch_start
        step, train_seconds = step + len(metrics), train_seconds + epoch_seconds
        sums = [eval_fn(states, batch) for batch in
                data.batches(dataset.test_images, dataset.test_labels, config.eval_batch_size)]
        totals = jax.tree.map(lambda *xs: np.sum(xs, axis=0, dtype=np.float64), *jax.device_get(sums))
        records = []
        for k, writer in enumerate(writers):
            # The same float64 sums, in step order, as train.train_and_evaluate.
            mean = {name: sum(float(m[name][k]) for m in metrics) / len(metrics) for name in ("loss", "accuracy")}
            test = {"loss": float(totals["loss"][k] / totals["count"][k]),
                    "accuracy": float(totals["correct"][k] / totals["count"][k])}
            records.append(train.epoch_record(step, steps_per_epoch, mean, test, float(schedule(step))))
            speed = len(metrics) * config.batch_size / epoch_seconds  # Each seed's share of the group's speed.
            writer.write(records[-1], timing={"examples_per_second": speed,
                                              "train_seconds": train_seconds / len(seeds)})
    for writer in writers:
        writer.close()

    results = []
    params = models.count_params(jax.tree.map(lambda x: x[0], states.params))
    seconds = {"train": train_seconds / len(seeds), "compile": compile_seconds / len(seeds)}
    for k, (run_config, workdir) in enumerate(zip(configs, workdirs, strict=True)):
        state = jax.tree.map(lambda x, k=k: x[k], states)
        with checkpoint.manager(workdir) as checkpoints:
            checkpoint.save(checkpoints, state, {"step": step, "loss_sum": 0.0, "accuracy_sum": 0.0,
                                                 "steps_in_epoch": 0, "train_seconds": seconds["train"],
                                                 "last_record": records[k]})
        seconds["wall"] = (time.perf_counter() - wall_start) / len(seeds)
        result = train.results_record(run_config, dataset, params, records[k], seconds, [str(jax.devices()[0])])
        result["vectorized_seeds"] = len(seeds)
        write_json_atomically(os.path.join(workdir, "results.json"), result)
        results.append(result)
    return results
