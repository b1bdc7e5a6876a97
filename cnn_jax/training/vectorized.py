"""Runs that share every shape trained as one program: `train_step` vectorised with `jax.vmap`.

An ablation runs every variant over several seeds. Runs that differ only in
their seed and learning rate share every shape, so one compiled step can
advance all of them: the states are stacked along a leading run axis, each
run draws its own batches (its own epoch permutations, exactly as it would
alone) and random numbers, and every step updates all of them. The learning
rate enters as data: the optimizer is built with a peak rate of 1 (the
schedule's shape) and each run's step is scaled by its own peak rate, which
is the same update because Adam's step is proportional to its rate.

The runs go through the training loop of a single run
(`cnn_jax.training.loop.run`, with `StackedRuns` as the layout), so each
gets the workdir outputs of a normal run (config.json, metrics.jsonl,
timing.jsonl, TensorBoard events, checkpoints, results.json) and an
interrupted group resumes mid-run.
"""

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from cnn_jax.layers import losses
from cnn_jax.training import loop, steps
from cnn_jax.training.config import Config


def group_key(config: Config) -> tuple:
    """Configs with equal keys can train together: everything but the seed and the learning rate is equal. A run
    that starts from another's weights (`init_from`) trains alone: its key is all of its config."""
    apart = () if config.init_from else ("seed", "learning_rate")
    return tuple(sorted((k, v) for k, v in config.to_dict().items() if k not in apart))


def unit_rate(config: Config) -> Config:
    """`config` with a peak learning rate of 1: the shape of its schedule, which each run scales by its own rate."""
    return Config(**{**config.to_dict(), "learning_rate": 1.0})


def scaled_step(state, batch, rate, augment, loss):
    """`steps.train_step` for an optimizer built at peak rate 1, its update scaled by this run's peak `rate`."""
    grads, batch_stats, metrics = steps.gradients(state, batch, augment, loss)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, jax.tree.map(lambda update: rate * update, updates))
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats)
    return steps.constrained(state), metrics


class StackedRuns(loop.Layout):
    """Several runs' TrainStates stacked along a leading axis, all stepped by one vmapped `scaled_step`."""

    def initial_state(self, model, configs, image_shape, total_steps):
        create = functools.partial(steps.initial_state, model, unit_rate(configs[0]), image_shape, total_steps)
        return jax.jit(jax.vmap(create))(jnp.asarray([config.seed for config in configs]))

    def compile(self, state, dataset, configs, mesh):
        unit = configs[0]
        loss = losses.lookup(unit.loss, unit.label_smoothing)
        rates = jnp.asarray([config.learning_rate for config in configs])
        step = jax.vmap(functools.partial(scaled_step, augment=unit.augment, loss=loss))
        train_batch = loop.abstract_batch(dataset, (len(configs), unit.batch_size), False,
                                          NamedSharding(mesh, self.batch_spec()))
        eval_batch = loop.abstract_batch(dataset, (unit.eval_batch_size,), True,
                                         NamedSharding(mesh, PartitionSpec("data")))
        train_fn = loop.compile_step(lambda state, batch: step(state, batch, rates), mesh, state, train_batch,
                                     donate=True)
        evaluate = jax.vmap(functools.partial(steps.eval_step, loss=loss), in_axes=(0, None))
        return train_fn, loop.compile_step(evaluate, mesh, state, eval_batch)

    def batch(self, run_batches):
        return jax.tree.map(lambda *xs: np.stack(xs), *run_batches)

    def batch_spec(self):
        return PartitionSpec(None, "data")

    def run_state(self, state, k):
        return jax.tree.map(lambda x: x[k], state)

    def join(self, states):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    def run_metrics(self, metrics, k):
        return jax.tree.map(lambda x: x[k], metrics)


def train_group(configs: Sequence[Config], workdirs: Sequence[str], checkpoint_every: int = 0,
                stop_requested: Callable[[], bool] | None = None) -> list[dict]:
    """Trains each config (equal `group_key`s) into its workdir, all in one vmapped program; returns each results.json.

    Each workdir holds no run yet, or the same step of an interrupted group,
    which then resumes. Time is shared: each run's train, compile and wall
    seconds are the group's divided by the number of runs.
    """
    if len({group_key(config) for config in configs}) != 1:
        raise ValueError("train_group: the configs differ in more than their seeds and learning rates")
    return loop.run(configs, workdirs, StackedRuns(), checkpoint_every, stop_requested=stop_requested)
