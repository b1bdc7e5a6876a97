"""The loop that runs an experiment: data, compiled steps on a device mesh, evaluation, checkpoints and outputs."""

import functools
import itertools
import json
import os
import signal
import sys
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from cnn_jax import data, models
from cnn_jax.analysis import arithmetic
from cnn_jax.errors import UserError
from cnn_jax.layers import losses
from cnn_jax.training import checkpoint
from cnn_jax.training.config import Config
from cnn_jax.training.steps import TrainState, create_train_state, eval_step, learning_rate_schedule, train_step
from cnn_jax.training.writers import MetricWriter, truncate_metrics, write_json_atomically


def _global_batch(batch: dict, sharding: NamedSharding) -> dict:
    """This process's rows of a batch (`data.batches(part=...)`), as one global array per key split over `sharding`."""
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()}


def _fetch(tree):
    """A replicated result on the host (in a multi-process run no process can address all of a global array)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _process_part() -> tuple[int, int]:
    return jax.process_index(), jax.process_count()


def evaluate(eval_fn, state: TrainState, images: np.ndarray, labels: np.ndarray, batch_size: int,
             sharding: NamedSharding | None = None) -> dict:
    """Mean 'loss' and 'accuracy' of `state` over every example of (images, labels).

    With `sharding` (every process calls it), each process feeds its share of each batch.
    """
    batches = data.batches(images, labels, batch_size, part=_process_part() if sharding else (0, 1))
    sums = [eval_fn(state, batch if sharding is None else _global_batch(batch, sharding)) for batch in batches]
    totals = jax.tree.map(lambda *xs: float(np.sum(xs)), *_fetch(sums))
    return {"loss": totals["loss"] / totals["count"], "accuracy": totals["correct"] / totals["count"]}


def data_mesh(*batch_sizes: int) -> Mesh:
    """A one-axis ('data') mesh of every device (of every process), or UserError if a batch does not split over it."""
    devices, flags = jax.devices(), ("--batch_size", "--eval_batch_size")
    for flag, size in zip(flags, batch_sizes):
        if size % len(devices):
            below, above = size // len(devices) * len(devices), (size // len(devices) + 1) * len(devices)
            examples = f"{below} or {above}" if below else f"{above}"
            raise UserError(f"{flag}={size} does not split evenly over {len(devices)} devices; use a multiple of "
                            f"{len(devices)} such as {examples}")
    return Mesh(np.array(devices), ("data",))


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


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    """Joins a multi-process run (`jax.distributed.initialize`), or does nothing for a single process.

    With a coordinator address the three settings must come together; without
    one, a multi-task SLURM job or a multi-host Cloud TPU slice is detected by
    JAX itself.
    """
    given = [value is not None for value in (coordinator_address, num_processes, process_id)]
    if any(given):
        if not all(given):
            raise UserError("--coordinator_address, --num_processes and --process_id go together; give all three")
        if not 0 <= process_id < num_processes:
            raise UserError(f"--process_id={process_id} must be from 0 to --num_processes - 1 = {num_processes - 1}")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        jax.distributed.initialize()


CONFIG_FILE = "config.json"


def prepare_workdir(workdir: str, config: Config, allow_config_change: bool) -> bool:
    """Checks `workdir` and records `config` in it; True if it holds an unfinished run of this config to resume.

    Raises UserError if it cannot be written, holds a finished run, or holds a
    run of another config (unless `allow_config_change`).
    """
    if os.path.exists(os.path.join(workdir, "results.json")):
        raise UserError(f"--workdir={workdir} holds a finished run (results.json); choose a new --workdir")
    path = os.path.join(workdir, CONFIG_FILE)
    resume = os.path.exists(path)
    if resume:
        with open(path) as f:
            before = json.load(f)
        changed = [f"{name}: {before.get(name)!r} there, {value!r} here"
                   for name, value in config.to_dict().items() if before.get(name) != value]
        if changed and not allow_config_change:
            raise UserError(f"--workdir={workdir} holds a run with another config ({'; '.join(changed)}); resume it "
                            "with its flags, choose a new --workdir, or pass --allow_config_change")
    elif any(os.path.exists(os.path.join(workdir, name)) for name in ("metrics.jsonl", checkpoint.CHECKPOINT_DIR)):
        raise UserError(f"--workdir={workdir} holds a run without {CONFIG_FILE}; choose a new --workdir")
    try:
        os.makedirs(workdir, exist_ok=True)
        if jax.process_index() == 0:
            write_json_atomically(path, config.to_dict())
    except OSError as e:
        raise UserError(f"--workdir={workdir} is not writable ({e.strerror}); choose another --workdir") from None
    return resume


class _StopRequest:
    """Turns SIGTERM (a preemption notice) into a flag the training loop checks after each step."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self, step: int, checkpoint_every: int) -> bool:
        """Whether to stop after `step`: at once in a single process; with several, at checkpoint steps, if any
        process was signalled (all of them must take part in the checkpoint)."""
        if jax.process_count() == 1:
            return self.requested
        if not checkpoint_every or step % checkpoint_every:
            return False
        return bool(multihost_utils.process_allgather(np.array(self.requested)).any())

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint of the last step was saved."""


def _fold_in_metrics(progress: dict, pending: list, checkpoints) -> None:
    """Adds the pending steps' metrics to the epoch's sums in `progress` (in step order, float64), emptying `pending`.

    Raises TrainingDiverged naming the first step with a non-finite loss.
    """
    first = progress["step"] - len(pending) + 1
    for offset, metrics in enumerate(_fetch(pending)):
        if not np.isfinite(metrics["loss"]):
            good = checkpoints.latest_step()
            kept = f"the last good checkpoint (step {good}) is kept" if good is not None else "no checkpoint was written"
            raise TrainingDiverged(f"training diverged: the loss is {float(metrics['loss'])} at step {first + offset}; "
                                   f"{kept}; lower --learning_rate")
        progress["loss_sum"] += float(metrics["loss"])
        progress["accuracy_sum"] += float(metrics["accuracy"])
        progress["steps_in_epoch"] += 1
    pending.clear()


def plan(config: Config) -> tuple[Any, data.Dataset, int, int]:
    """(model, dataset, steps per epoch, total steps) of a validated `config`; UserError if it cannot run."""
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
    return model_cls(num_classes=dataset.num_classes), dataset, steps_per_epoch, total_steps


def epoch_record(step: int, steps_per_epoch: int, train: dict, test: dict, learning_rate: float) -> dict:
    """One line of metrics.jsonl: the epoch's mean training loss and accuracy, and the test split's."""
    return {
        "step": step,
        "epoch": round(step / steps_per_epoch, 4),
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "learning_rate": learning_rate,
    }


def results_record(config: Config, dataset: data.Dataset, params: int, record: dict, seconds: dict,
                   devices: list[str]) -> dict:
    """results.json: the last evaluation, `seconds` (train, compile, wall) and what ran where."""
    return {
        "model": config.model,
        "dataset": config.dataset,
        "data_source": dataset.source,
        "seed": config.seed,
        "params": params,
        "steps": record["step"],
        "epochs": record["epoch"],
        "test_accuracy": record["test_accuracy"],
        "test_loss": record["test_loss"],
        "train_accuracy": record["train_accuracy"],
        "train_loss": record["train_loss"],
        "train_seconds": seconds["train"],
        "train_examples_per_second": record["step"] * config.batch_size / seconds["train"],
        "compile_seconds": seconds["compile"],
        "wall_seconds": seconds["wall"],
        "devices": devices,
        "processes": jax.process_count(),
        "jax_version": jax.__version__,
        "config": config.to_dict(),
    }


def train_and_evaluate(config: Config, workdir: str, checkpoint_every: int = 0,
                       allow_config_change: bool = False) -> dict:
    """Trains `config.model` on `config.dataset`, evaluating on the whole test split after every epoch.

    Writes to `workdir`: config.json, metrics.jsonl (one line per evaluation),
    TensorBoard events, orbax checkpoints (every `checkpoint_every` steps, at
    every epoch's end and at the end; the last few kept) and results.json.
    Called again with the same `workdir` and config, it resumes from the
    newest checkpoint: the same data order and random numbers, so the run ends
    exactly as an uninterrupted one. SIGTERM saves a checkpoint and raises
    `Preempted`. Returns the contents of results.json. Bad input raises
    UserError before anything is written.
    """
    with _StopRequest() as stop:
        return _run(config, workdir, checkpoint_every, allow_config_change, stop)


def _run(config: Config, workdir: str, checkpoint_every: int, allow_config_change: bool, stop: _StopRequest) -> dict:
    """`train_and_evaluate`, with SIGTERM noted in `stop`."""
    wall_start = time.perf_counter()
    if checkpoint_every < 0:
        raise UserError(f"--checkpoint_every must be >= 0 (0: at epoch ends only), got {checkpoint_every}")
    model, dataset, steps_per_epoch, total_steps = plan(config)
    mesh = data_mesh(config.batch_size, config.eval_batch_size)
    resume = prepare_workdir(workdir, config, allow_config_change)
    lead = jax.process_index() == 0  # Only the first process writes metrics, results and logs.

    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    state = jax.device_put(create_train_state(model, config, dataset.image_shape, total_steps), replicated)
    progress = {"step": 0, "loss_sum": 0.0, "accuracy_sum": 0.0, "steps_in_epoch": 0, "train_seconds": 0.0}
    checkpoints = checkpoint.manager(workdir)
    found = checkpoint.latest(checkpoints, state) if resume else None
    if found:
        state, progress = found
        state = jax.device_put(state, replicated)
    step = progress["step"]
    schedule = learning_rate_schedule(config, total_steps)
    num_params = arithmetic.count_params(state.params)
    if lead:
        if found:
            truncate_metrics(workdir, step)  # Lines written after that checkpoint are written again.
        print(
            f"{config.model}: {num_params:,} parameters | {config.dataset} from {dataset.source}: "
            f"{len(dataset.train_labels):,} train / {len(dataset.test_labels):,} test | "
            f"{total_steps:,} steps of {config.batch_size} on {mesh.size} {jax.devices()[0].platform} device(s) "
            f"in {jax.process_count()} process(es) | workdir {workdir}"
            + (f" | resuming at step {step:,}" if found else ""),
            flush=True,
        )

    compile_start = time.perf_counter()
    train_fn, eval_fn = compile_steps(state, dataset, config, mesh)
    compile_seconds = time.perf_counter() - compile_start

    writer = MetricWriter(workdir) if lead else None
    record = {}
    bar = tqdm(total=total_steps, initial=step, unit="step", disable=None if lead else True, dynamic_ncols=True,
               file=sys.stderr)
    pending = []
    while step < total_steps or progress["steps_in_epoch"]:  # (Killed after the last step, before its eval.)
        epoch, done = divmod(step, steps_per_epoch)
        if done == 0 and progress["steps_in_epoch"]:  # Stopped after an epoch's last step, before its evaluation.
            epoch, done = epoch - 1, steps_per_epoch
        order = data.epoch_permutation(config.seed, epoch, len(dataset.train_labels))
        order = order[done * config.batch_size :]  # Resuming inside an epoch: the batches not yet seen.
        batches = data.batches(dataset.train_images, dataset.train_labels, config.batch_size, order,
                               part=_process_part())
        epoch_start, epoch_steps = time.perf_counter(), 0
        for batch in itertools.islice(batches, min(steps_per_epoch - done, total_steps - step)):
            state, metrics = train_fn(state, _global_batch(batch, split))
            pending.append(metrics)
            step, epoch_steps = step + 1, epoch_steps + 1
            progress["step"] = step
            bar.update()
            stopping = stop.agreed(step, checkpoint_every)
            if (checkpoint_every and step % checkpoint_every == 0) or stopping:
                _fold_in_metrics(progress, pending, checkpoints)
                checkpoint.save(checkpoints, state, progress)
            if stopping:
                bar.close()
                raise Preempted(f"stopped by SIGTERM at step {step:,}; checkpoint saved in {workdir}: "
                                "run the same command to resume")
        _fold_in_metrics(progress, pending, checkpoints)  # Waits for the last step.
        epoch_seconds = time.perf_counter() - epoch_start
        progress["train_seconds"] += epoch_seconds
        test = evaluate(eval_fn, state, dataset.test_images, dataset.test_labels, config.eval_batch_size, split)
        count = progress["steps_in_epoch"]
        train = {"loss": progress["loss_sum"] / count, "accuracy": progress["accuracy_sum"] / count}
        record = epoch_record(step, steps_per_epoch, train, test, float(schedule(step)))
        if lead:
            speed = epoch_steps * config.batch_size / epoch_seconds
            writer.write(record, timing={"examples_per_second": speed, "train_seconds": progress["train_seconds"]})
            tqdm.write(
                f"epoch {record['epoch']:g}: train loss {record['train_loss']:.4f} "
                f"acc {record['train_accuracy']:.4f} | test loss {test['loss']:.4f} acc {test['accuracy']:.4f} | "
                f"{speed:,.0f} examples/s",
                file=sys.stdout,
            )
        progress.update(loss_sum=0.0, accuracy_sum=0.0, steps_in_epoch=0, last_record=record)
        checkpoint.save(checkpoints, state, progress)
    bar.close()
    checkpoints.close()
    if writer:
        writer.close()
    record = progress.get("last_record", record)

    seconds = {"train": progress["train_seconds"], "compile": compile_seconds, "wall": time.perf_counter() - wall_start}
    results = results_record(config, dataset, num_params, record, seconds, [str(d) for d in mesh.devices.flat])
    if lead:
        write_json_atomically(os.path.join(workdir, "results.json"), results)
    return results
