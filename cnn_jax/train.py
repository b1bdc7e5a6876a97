"""Training and evaluation: a TrainState, pure jitted steps, and the loop that runs an experiment.

`train_step` and `eval_step` are pure functions of (state, batch): jitting them
over a device mesh with sharded batches and replicated state needs no change to
their bodies, because every reduction (loss, gradients, BatchNorm statistics)
is written over the whole batch.
"""

import functools
import itertools
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from cnn_jax import checkpoint, data, losses, models
from cnn_jax.config import Config
from cnn_jax.errors import UserError
from cnn_jax.writers import MetricWriter, write_json_atomically


class TrainState(train_state.TrainState):
    """Parameters, optimizer state and step, plus BatchNorm's running statistics and the run's base key.

    Randomness at step t uses `fold_in(rng, t)`, so it depends on nothing but the seed and the step.
    """

    batch_stats: Any
    rng: jax.Array


def learning_rate_schedule(config: Config, total_steps: int) -> optax.Schedule:
    """Adam's learning rate at each step: `config.learning_rate`, constant or cosine-decayed to 0."""
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, decay_steps=max(total_steps, 1))
    return optax.constant_schedule(config.learning_rate)


def create_train_state(model, config: Config, image_shape: tuple[int, int, int], total_steps: int = 1) -> TrainState:
    """Initialises `model` for images of `image_shape` (H, W, C), with Adam on a `total_steps` schedule."""

    def create():
        init_key, rng = jax.random.split(jax.random.PRNGKey(config.seed))
        variables = model.init(init_key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        return TrainState.create(
            rng=rng,
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            # Adam on all parameters as one flat vector: the same arithmetic in a few fused loops instead of a
            # few per parameter array, which XLA's CPU runtime launches one by one.
            tx=optax.flatten(optax.adam(learning_rate_schedule(config, total_steps))),
        )

    # One program, run once: unoptimised, it compiles in a fraction of the time (0.25 s vs 1.2 s for the seed
    # network; its dozen small operations run one by one would each be compiled too).
    return jax.jit(create).lower().compile({"xla_backend_optimization_level": 0})()


def train_step(state: TrainState, batch: dict, augment: str = "none",
               loss: losses.Loss = losses.softmax_cross_entropy) -> tuple[TrainState, dict]:
    """One optimizer step on `batch` ({'image': uint8 [b, h, w, c], 'label': int [b]}).

    `augment` is "none" or "flip" (random left-right mirroring); `loss` gives
    per-example losses (`cnn_jax.losses`). Layers with randomness (dropout,
    stochastic pooling) draw from the "dropout" stream. Returns the new state
    and the batch's mean 'loss' and 'accuracy' (before the update).
    """
    step_key = jax.random.fold_in(state.rng, state.step)
    images = data.normalize(batch["image"])
    if augment == "flip":
        images = data.random_flip(images, step_key)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.fold_in(step_key, 1)},
        )
        return loss(logits, batch["label"]).mean(), (logits, updates)

    (mean_loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return state, {"loss": mean_loss, "accuracy": accuracy}


def eval_step(state: TrainState, batch: dict, loss: losses.Loss = losses.softmax_cross_entropy) -> dict:
    """Sums of loss and correct predictions over the examples of `batch` whose 'mask' is 1.

    Returns {'loss': sum, 'correct': count, 'count': count}, so batches of any
    padding add up to exact totals.
    """
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, data.normalize(batch["image"]), train=False
    )
    mask = batch["mask"]
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"loss": jnp.sum(loss(logits, batch["label"]) * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}


def evaluate(eval_fn, state: TrainState, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict:
    """Mean 'loss' and 'accuracy' of `state` over every example of (images, labels)."""
    sums = [eval_fn(state, batch) for batch in data.batches(images, labels, batch_size)]
    totals = jax.tree.map(lambda *xs: float(np.sum(xs)), *jax.device_get(sums))
    return {"loss": totals["loss"] / totals["count"], "accuracy": totals["correct"] / totals["count"]}


def data_mesh(*batch_sizes: int) -> Mesh:
    """A one-axis ('data') mesh of the most devices that every batch size divides over evenly."""
    devices = jax.devices()
    count = max(n for n in range(1, len(devices) + 1) if all(size % n == 0 for size in batch_sizes))
    return Mesh(np.array(devices[:count]), ("data",))


def _abstract_batch(images: np.ndarray, labels: np.ndarray, batch_size: int, with_mask: bool, sharding) -> dict:
    batch = {
        "image": jax.ShapeDtypeStruct((batch_size, *images.shape[1:]), images.dtype, sharding=sharding),
        "label": jax.ShapeDtypeStruct((batch_size,), labels.dtype, sharding=sharding),
    }
    if with_mask:
        batch["mask"] = jax.ShapeDtypeStruct((batch_size,), np.float32, sharding=sharding)
    return batch


def compile_steps(state: TrainState, dataset: data.Dataset, config: Config, mesh: Mesh):
    """`train_step` and `eval_step` for `dataset`'s shapes on `mesh`, jitted and compiled ahead of time.

    Batches are split over the mesh's 'data' axis and the state is replicated,
    so XLA computes the mean loss, its gradients and BatchNorm's statistics over
    the whole batch. The training step donates its input state, so its buffers
    are reused in place. `state` must already be replicated on `mesh`.
    """
    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    train_batch = _abstract_batch(dataset.train_images, dataset.train_labels, config.batch_size, False, split)
    eval_batch = _abstract_batch(dataset.test_images, dataset.test_labels, config.eval_batch_size, True, split)
    loss = losses.lookup(config.loss, config.label_smoothing)
    train_fn = jax.jit(
        functools.partial(train_step, augment=config.augment, loss=loss),
        in_shardings=(replicated, split),
        out_shardings=replicated,
        donate_argnums=0,
    )
    eval_fn = jax.jit(functools.partial(eval_step, loss=loss), in_shardings=(replicated, split), out_shardings=replicated)
    return train_fn.lower(state, train_batch).compile(), eval_fn.lower(state, eval_batch).compile()


def _train_epoch(train_fn, state, dataset, config: Config, epoch: int, max_steps: int, progress):
    """Runs epoch `epoch` (at most `max_steps` steps); returns the state and each step's metrics.

    Returns once every step has finished, so timing it times the computation.
    """
    order = data.epoch_permutation(config.seed, epoch, len(dataset.train_labels))
    batches = data.batches(dataset.train_images, dataset.train_labels, config.batch_size, order)
    metrics, start = [], time.perf_counter()
    for batch in itertools.islice(batches, max_steps):
        state, step_metrics = train_fn(state, batch)
        metrics.append(step_metrics)
        progress.update()
        if not progress.disable and len(metrics) % 50 == 0:  # Reading the loss waits for the step.
            progress.set_postfix(
                loss=f"{float(step_metrics['loss']):.4f}",
                ex_per_s=f"{len(metrics) * config.batch_size / (time.perf_counter() - start):,.0f}",
            )
    return jax.block_until_ready(state), metrics


def _prepare_workdir(workdir: str) -> None:
    """Creates `workdir`, or raises UserError if it cannot be written or already holds a run."""
    for name in ("metrics.jsonl", "results.json", checkpoint.CHECKPOINT_DIR):
        if os.path.exists(os.path.join(workdir, name)):
            raise UserError(f"--workdir={workdir} already holds a run ({name}); choose a new --workdir")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--workdir={workdir} is not writable ({e.strerror}); choose another --workdir") from None


def train_and_evaluate(config: Config, workdir: str) -> dict:
    """Trains `config.model` on `config.dataset`, evaluating on the whole test split after every epoch.

    Writes to `workdir`: metrics.jsonl (one line per evaluation), TensorBoard
    events, an orbax checkpoint of the final state, and results.json. Returns
    the contents of results.json. Bad input raises UserError before anything
    is written.
    """
    wall_start = time.perf_counter()
    config.validate()
    model_cls = models.lookup(config.model)
    dataset = data.load_dataset(config.dataset, config.data_dir).truncated(
        config.max_train_examples, config.max_test_examples
    )
    steps_per_epoch = len(dataset.train_labels) // config.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"--batch_size={config.batch_size} exceeds the {len(dataset.train_labels)} training examples; lower it"
        )
    if len(dataset.test_labels) == 0:
        raise UserError(f"dataset '{config.dataset}' has no test examples to evaluate on")
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    model = model_cls(num_classes=dataset.num_classes)
    _prepare_workdir(workdir)

    mesh = data_mesh(config.batch_size, config.eval_batch_size)
    state = jax.device_put(
        create_train_state(model, config, dataset.image_shape, total_steps), NamedSharding(mesh, PartitionSpec())
    )
    schedule = learning_rate_schedule(config, total_steps)
    num_params = models.count_params(state.params)
    print(
        f"{config.model}: {num_params:,} parameters | {config.dataset} from {dataset.source}: "
        f"{len(dataset.train_labels):,} train / {len(dataset.test_labels):,} test | "
        f"{total_steps:,} steps of {config.batch_size} on {mesh.size} {jax.devices()[0].platform} device(s) | "
        f"workdir {workdir}",
        flush=True,
    )

    compile_start = time.perf_counter()
    train_fn, eval_fn = compile_steps(state, dataset, config, mesh)
    compile_seconds = time.perf_counter() - compile_start

    writer = MetricWriter(workdir)
    step, train_seconds, record = 0, 0.0, {}
    progress = tqdm(total=total_steps, unit="step", disable=None, dynamic_ncols=True, file=sys.stderr)
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        state, epoch_metrics = _train_epoch(train_fn, state, dataset, config, epoch, total_steps - step, progress)
        epoch_seconds = time.perf_counter() - epoch_start
        step += len(epoch_metrics)
        train_seconds += epoch_seconds
        train = jax.tree.map(lambda *xs: float(np.mean(xs)), *jax.device_get(epoch_metrics))
        test = evaluate(eval_fn, state, dataset.test_images, dataset.test_labels, config.eval_batch_size)
        record = {
            "step": step,
            "epoch": round(step / steps_per_epoch, 4),
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "examples_per_second": len(epoch_metrics) * config.batch_size / epoch_seconds,
            "learning_rate": float(schedule(step)),
        }
        writer.write(record)
        tqdm.write(
            f"epoch {record['epoch']:g}: train loss {train['loss']:.4f} acc {train['accuracy']:.4f} | "
            f"test loss {test['loss']:.4f} acc {test['accuracy']:.4f} | "
            f"{record['examples_per_second']:,.0f} examples/s",
            file=sys.stdout,
        )
        if step == total_steps:
            break
    progress.close()
    writer.close()
    checkpoint.save(workdir, state)

    results = {
        "model": config.model,
        "dataset": config.dataset,
        "data_source": dataset.source,
        "seed": config.seed,
        "params": num_params,
        "steps": step,
        "epochs": record["epoch"],
        "test_accuracy": record["test_accuracy"],
        "test_loss": record["test_loss"],
        "train_accuracy": record["train_accuracy"],
        "train_loss": record["train_loss"],
        "train_seconds": train_seconds,
        "train_examples_per_second": step * config.batch_size / train_seconds,
        "compile_seconds": compile_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
        "devices": [str(d) for d in mesh.devices.flat],
        "jax_version": jax.__version__,
        "config": config.to_dict(),
    }
    write_json_atomically(os.path.join(workdir, "results.json"), results)
    return results
