"""The loop that runs an experiment: data, compiled steps on a device mesh, evaluation, checkpoints and outputs.

`train_and_evaluate(config, workdir)` trains one run. The same loop trains
several runs at once when they share every shape (`cnn_jax.training.vectorized`):
what differs is only how their states are held and stepped, a `Layout`. Each
run gets its own workdir with the same outputs, checkpoints and resumption.
"""

import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from cnn_jax import data, models
from cnn_jax.analysis import arithmetic
from cnn_jax.data import pipeline, text
from cnn_jax.errors import UserError
from cnn_jax.kernels import dispatch
from cnn_jax.layers import losses
from cnn_jax.training import checkpoint, transfer
from cnn_jax.training.config import Config
from cnn_jax.training.steps import TrainState, create_train_state, eval_step, learning_rate_schedule, train_step
from cnn_jax.training.writers import MetricWriter, truncate_metrics, write_json_atomically

CONFIG_FILE = "config.json"


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class Preempted(Exception):
    """A stop was requested (the entry points ask on SIGTERM, a preemption notice) and granted after `step`; a
    checkpoint of that step was saved in each of `workdirs`."""

    def __init__(self, step: int, workdirs: Sequence[str]):
        super().__init__(f"stopped at step {step:,}; checkpoint saved in {', '.join(workdirs)}")
        self.step, self.workdirs = step, list(workdirs)


def _global_batch(batch: dict, sharding: NamedSharding) -> dict:
    """This process's rows of a batch (`data.batches(part=...)`), as one global array per key split over `sharding`."""
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()}


def _fetch(tree):
    """A replicated result on the host (in a multi-process run no process can address all of a global array)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _process_part() -> tuple[int, int]:
    return jax.process_index(), jax.process_count()


def evaluate(eval_fn, state, batches, sharding: NamedSharding | None = None) -> list[dict]:
    """Mean 'loss' and 'accuracy' over `batches` (`data.pipeline.evaluation_batches`), of each run `state` holds.

    `eval_fn(state, batch)` gives sums per run (scalars for one run, `[runs]`
    for several). With `sharding` (every process calls it), the batches are
    this process's shares of global batches.
    """
    sums = [eval_fn(state, batch if sharding is None else _global_batch(batch, sharding)) for batch in batches]
    totals = jax.tree.map(lambda *xs: np.atleast_1d(np.sum(xs, axis=0)), *_fetch(sums))
    return [{"loss": float(loss) / float(count), "accuracy": float(correct) / float(count)}
            for loss, correct, count in zip(totals["loss"], totals["correct"], totals["count"], strict=True)]


def data_mesh(*batch_sizes: tuple[str, int]) -> Mesh:
    """A one-axis ('data') mesh of every device (of every process); UserError if a batch does not split over it.

    `batch_sizes` are (setting, size) pairs, named in the error.
    """
    devices = jax.devices()
    for setting, size in batch_sizes:
        if size % len(devices):
            below, above = size // len(devices) * len(devices), (size // len(devices) + 1) * len(devices)
            examples = f"{below} or {above}" if below else f"{above}"
            raise UserError(f"`{setting}`={size} does not split evenly over {len(devices)} devices; use a multiple of "
                            f"{len(devices)} such as {examples}")
    return Mesh(np.array(devices), ("data",))


def abstract_batch(dataset: data.Dataset, shape: tuple[int, ...], with_mask: bool, sharding) -> dict:
    """Shapes of a batch of `shape` (batch size, preceded by the runs when stacked): `dataset`'s inputs (uint8
    images of its `image_shape`, or signals or token ids), int32 labels and, `with_mask`, a float32 mask."""
    batch = {
        "image": jax.ShapeDtypeStruct((*shape, *dataset.image_shape), dataset.input_dtype, sharding=sharding),
        "label": jax.ShapeDtypeStruct(shape, np.int32, sharding=sharding),
    }
    if with_mask:
        batch["mask"] = jax.ShapeDtypeStruct(shape, np.float32, sharding=sharding)
    return batch


def compile_step(step, mesh: Mesh, *arguments, donate: bool = False):
    """`step` jitted for `arguments` (a replicated state, then batches split over the mesh) and compiled ahead of time.

    The state is replicated and the batch split over the mesh's 'data' axis,
    so XLA computes the mean loss, its gradients and BatchNorm's statistics
    over the whole batch. Inside the mesh, cnn_jax's compiled kernels run on
    each device's part of the batch (`cnn_jax.kernels.ffi`). `donate` reuses
    the state's buffers for the new state.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(step, out_shardings=replicated, donate_argnums=0 if donate else ())
    with jax.set_mesh(mesh):
        compiled = jitted.lower(*arguments).compile()
    return _one_at_a_time(compiled) if _steps_must_not_overlap() else compiled


def _steps_must_not_overlap() -> bool:
    """Whether each step must finish before the next starts: on several CPU devices of a process, XLA:CPU
    starves itself when consecutive steps overlap. Each device's launch of step k+1 holds one of the client's
    few threads while it waits for step k's results, and step k's remaining devices, which must join its
    all-reduce, find no thread to run on (seen on 2 cores as 'Expected 4 threads to join the rendezvous, but
    only 3 of them arrived', then SIGABRT; between processes, gloo hangs the same way)."""
    return jax.default_backend() == "cpu" and jax.local_device_count() > 1


def _one_at_a_time(step):
    """`step`, returning only once its results are computed."""
    return lambda *args: jax.block_until_ready(step(*args))


class Layout:
    """How the runs that one loop trains together are held and stepped: one run (`OneRun`), or several whose
    states are stacked along a leading axis (`cnn_jax.training.vectorized.StackedRuns`)."""

    def initial_state(self, model, configs: Sequence[Config], image_shape, total_steps: int):
        """The runs' initial state (on the host's default device)."""
        raise NotImplementedError

    def compile(self, state, dataset: data.Dataset, configs: Sequence[Config], mesh: Mesh) -> tuple[Callable, Callable]:
        """(train_fn(state, batch) -> (state, metrics), eval_fn(state, batch) -> sums), compiled for `mesh`."""
        raise NotImplementedError

    def batch(self, run_batches: list[dict]) -> dict:
        """One step's batch from each run's own batch (the same order for the same seed as a run alone)."""
        raise NotImplementedError

    def batch_spec(self) -> PartitionSpec:
        """How a training batch is split over the mesh."""
        raise NotImplementedError

    def run_state(self, state, k: int) -> TrainState:
        """Run k's TrainState."""
        raise NotImplementedError

    def join(self, states: list[TrainState]):
        """The state holding `states`, one per run (the inverse of `run_state`)."""
        raise NotImplementedError

    def run_metrics(self, metrics: dict, k: int) -> dict:
        """Run k's values of a step's host metrics."""
        raise NotImplementedError


class OneRun(Layout):
    """A single run: one TrainState, stepped by `train_step`."""

    def initial_state(self, model, configs, image_shape, total_steps):
        (config,) = configs
        return create_train_state(model, config, image_shape, total_steps)

    def compile(self, state, dataset, configs, mesh):
        (config,) = configs
        loss = losses.lookup(config.loss, config.label_smoothing)
        split = NamedSharding(mesh, PartitionSpec("data"))
        train_batch = abstract_batch(dataset, (config.batch_size,), False, split)
        eval_batch = abstract_batch(dataset, (config.eval_batch_size,), True, split)
        train_fn = compile_step(functools.partial(train_step, augment=config.augment, loss=loss), mesh, state,
                                train_batch, donate=True)
        return train_fn, compile_step(functools.partial(eval_step, loss=loss), mesh, state, eval_batch)

    def batch(self, run_batches):
        (batch,) = run_batches
        return batch

    def batch_spec(self):
        return PartitionSpec("data")

    def run_state(self, state, k):
        return state

    def join(self, states):
        (state,) = states
        return state

    def run_metrics(self, metrics, k):
        return metrics


def prepare_workdir(workdir: str, config: Config, allow_config_change: bool) -> bool:
    """Checks `workdir` and records `config` in it; True if it holds an unfinished run of this config to resume.

    Raises UserError if it cannot be written, holds a finished run, or holds a
    run of another config (unless `allow_config_change`).
    """
    if os.path.exists(os.path.join(workdir, "results.json")):
        raise UserError(f"`workdir`={workdir} holds a finished run (results.json); choose a new `workdir`")
    path = os.path.join(workdir, CONFIG_FILE)
    resume = os.path.exists(path)
    if resume:
        with open(path) as f:
            before = json.load(f)
        defaults = Config().to_dict()  # What a field a run recorded before it existed meant.
        changed = [f"{name}: {before.get(name, defaults[name])!r} there, {value!r} here"
                   for name, value in config.to_dict().items() if before.get(name, defaults[name]) != value]
        if changed and not allow_config_change:
            raise UserError(f"`workdir`={workdir} holds a run with another config ({'; '.join(changed)}); resume it "
                            "with its settings, choose a new `workdir`, or pass `allow_config_change`")
    elif any(os.path.exists(os.path.join(workdir, name)) for name in ("metrics.jsonl", checkpoint.CHECKPOINT_DIR)):
        raise UserError(f"`workdir`={workdir} holds a run without {CONFIG_FILE}; choose a new `workdir`")
    try:
        os.makedirs(workdir, exist_ok=True)
        if jax.process_index() == 0:
            write_json_atomically(path, config.to_dict())
    except OSError as e:
        raise UserError(f"`workdir`={workdir} is not writable ({e.strerror}); choose another `workdir`") from None
    return resume


def _stop_agreed(stop_requested: Callable[[], bool] | None, step: int, checkpoint_every: int) -> bool:
    """Whether to stop after `step`: at once in a single process; with several, at checkpoint steps, if any
    process was asked to (all of them must take part in the checkpoint)."""
    if stop_requested is None:
        return False
    if jax.process_count() == 1:
        return stop_requested()
    if not checkpoint_every or step % checkpoint_every:
        return False
    return bool(multihost_utils.process_allgather(np.array(stop_requested())).any())


def _new_progress() -> dict:
    """A run's progress, saved with each checkpoint: the step, the sums of the steps since the last evaluation
    ('steps_in_epoch': with `eval_every`, an evaluation period's) and the training seconds."""
    return {"step": 0, "loss_sum": 0.0, "accuracy_sum": 0.0, "steps_in_epoch": 0, "train_seconds": 0.0}


def _fold_in_metrics(layout: Layout, progresses: list[dict], pending: list, managers: list) -> None:
    """Adds the pending steps' metrics to each run's epoch sums (in step order, float64), emptying `pending`.

    Raises TrainingDiverged naming the first run and step with a non-finite loss.
    """
    first = progresses[0]["step"] - len(pending) + 1
    for offset, step_metrics in enumerate(_fetch(pending)):
        for k, progress in enumerate(progresses):
            metrics = layout.run_metrics(step_metrics, k)
            if not np.isfinite(metrics["loss"]):
                good = managers[k].latest_step()
                kept = (f"the last good checkpoint (step {good}) is kept" if good is not None
                        else "no checkpoint was written")
                run = f" in {managers[k].directory}" if len(progresses) > 1 else ""
                raise TrainingDiverged(f"training diverged{run}: the loss is {float(metrics['loss'])} at step "
                                       f"{first + offset}; {kept}; lower `learning_rate`")
            progress["loss_sum"] += float(metrics["loss"])
            progress["accuracy_sum"] += float(metrics["accuracy"])
            progress["steps_in_epoch"] += 1
    pending.clear()


def plan(config: Config, workdir: str | None = None) -> tuple[Any, data.Dataset, int, int]:
    """(model, dataset, steps per epoch, total steps) of a validated `config`; UserError if it cannot run.

    Texts are encoded with the vocabulary saved in `workdir` if it holds one
    (a run resuming, or read back by `trained.load`), else with one built from
    their training split (`cnn_jax.data.text`).
    """
    config.validate()
    if config.model:
        models.lookup(config.model)  # A name that is not a model fails before any data is read.
    vocabulary_file = os.path.join(workdir, text.VOCABULARY_FILE) if workdir else None
    vocabulary = text.read_vocabulary(vocabulary_file) if vocabulary_file and os.path.exists(vocabulary_file) else None
    settings = text.TextSettings(config.text_column, config.label_column, config.vocab_size, config.min_count,
                                 config.max_length)
    dataset = data.load_dataset(config.dataset, config.data_dir, config.test_fraction, config.train_split,
                                config.eval_split, settings, vocabulary).at_shape(config.image_hw, config.channels)
    config = with_model(config, dataset)
    if config.classes:
        dataset = dataset.with_classes(dataset.class_indices(config.classes.split(",")))
    if config.train_examples_per_class:
        dataset = dataset.balanced(config.train_examples_per_class, config.seed)
    dataset = dataset.truncated(config.max_train_examples, config.max_test_examples)
    steps_per_epoch = len(dataset.train_labels) // config.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"`batch_size`={config.batch_size} exceeds the {len(dataset.train_labels)} training examples; lower it"
        )
    if len(dataset.test_labels) == 0:
        raise UserError(f"dataset '{config.dataset}' has no test examples to evaluate on")
    dataset.image_shape  # Raises for images of several sizes without `image_size`.
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    return _model(dataset, config), dataset, steps_per_epoch, total_steps


def with_model(config: Config, dataset: data.Dataset) -> Config:
    """`config`, naming the model it trains: its own, or the default for what `dataset` holds
    (`models.DEFAULT_MODELS`: convnet for images, convnet1d for signals, textcnn for texts)."""
    return config if config.model else dataclasses.replace(config, model=models.DEFAULT_MODELS[dataset.kind])


_FOR_KINDS = {data.IMAGES: "any zoo model but convnet1d and textcnn, or a spec",
              data.SIGNALS: "convnet1d, or a spec ending in :1d (c64k5-max-c64k5-max:1d)",
              data.TOKENS: "textcnn, or a spec starting with an embedding (emb128-c100k3-global_max)"}


def _model(dataset: data.Dataset, config: Config):
    """`config.model` for `dataset` (its classes, and its vocabulary's size for texts), with its auxiliary
    classifiers if `config.aux_classifiers`; UserError if the model does not take what `dataset` holds."""
    model = models.lookup(config.model)(num_classes=dataset.num_classes)
    takes = models.inputs_of(model)
    if takes != dataset.kind:
        raise UserError(f"model '{config.model}' takes {takes}, but {config.dataset} holds {dataset.kind}; use "
                        f"{_FOR_KINDS[dataset.kind]}")
    if dataset.kind == data.TOKENS:
        model = model.clone(vocab_size=len(dataset.vocabulary))
    if not config.aux_classifiers:
        return model
    try:
        return model.clone(aux_logits=True)
    except TypeError:
        raise UserError(f"`aux_classifiers`: model '{config.model}' has no auxiliary classifiers (googlenet and "
                        "inception_v3 have)") from None


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


def results_record(config: Config, dataset: data.Dataset, params: int, trainable: int, record: dict, seconds: dict,
                   devices: list[str], compiled_kernels: bool, started: dict | None = None) -> dict:
    """results.json: the last evaluation, `seconds` (train, compile, wall), what ran where and, for a run that
    started from another's weights, where they came from (`started`, `transfer.start`'s record)."""
    return {
        "model": config.model,
        "dataset": config.dataset,
        "data_source": dataset.source,
        "classes": list(dataset.class_names),
        "train_examples": len(dataset.train_labels),
        "image_shape": list(dataset.image_shape),
        "skipped_files": len(dataset.skipped),
        "seed": config.seed,
        "params": params,
        "trainable_params": trainable,
        "init_from": started,
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
        "compiled_kernels": compiled_kernels,
        "jax_version": jax.__version__,
        "config": config.to_dict(),
    }


def train_and_evaluate(config: Config, workdir: str, checkpoint_every: int = 0, allow_config_change: bool = False,
                       stop_requested: Callable[[], bool] | None = None, log_images: bool = False) -> dict:
    """Trains `config.model` on `config.dataset`, evaluating on the whole test split after every epoch (or every
    `config.eval_every` steps).

    Writes to `workdir`: config.json, metrics.jsonl (one line per evaluation),
    timing.jsonl, TensorBoard events, orbax checkpoints (every
    `checkpoint_every` steps, at every evaluation and at the end; the last
    few kept) and results.json. Called again with the same `workdir` and
    config, it resumes from the newest checkpoint: the same data order and
    random numbers, so the run ends exactly as an uninterrupted one. When
    `stop_requested()` turns true (the entry points tie it to SIGTERM), it
    saves a checkpoint after the current step and raises `Preempted`. With
    `log_images`, each evaluation also logs the first layer's filters and the
    first test image's activation maps to TensorBoard
    (`cnn_jax.analysis.inspect.snapshot`). Returns the contents of results.json. Bad input raises UserError before
    anything is written.
    """
    return run([config], [workdir], OneRun(), checkpoint_every, allow_config_change, stop_requested, log_images)[0]


def _snapshot(model, state: TrainState, dataset: data.Dataset) -> dict:
    """The first layer's filters and the first test image's activation maps, as images by tag for TensorBoard."""
    from cnn_jax.analysis.inspect import snapshot  # Only for runs that log images.

    variables = _fetch({"params": state.params, "batch_stats": state.batch_stats})
    return snapshot.snapshot(model, variables, pipeline.test_images(dataset, [0])[0])


def _restore(layout: Layout, managers: list, state) -> tuple[Any, list[dict]] | None:
    """(state, each run's progress) from the newest step every run has a checkpoint of; None if none has one.

    Raises UserError when the runs hold checkpoints of different steps only (they do not belong together).
    """
    steps = [set(manager.all_steps()) for manager in managers]
    if not any(steps):
        return None
    common = set.intersection(*steps)
    if not common:
        raise UserError(f"the runs in {', '.join(str(m.directory) for m in managers)} have no checkpoint of the same "
                        "step to resume together from; resume them one by one")
    found = [checkpoint.latest(manager, layout.run_state(state, k), max(common)) for k, manager in enumerate(managers)]
    return layout.join([state for state, _ in found]), [progress for _, progress in found]


def _training_batches(dataset: data.Dataset, config: Config, step: int, steps_per_epoch: int, total_steps: int):
    """Run `config`'s training batches of steps [step, total_steps): a pure function of the seed and the step
    (`data.pipeline`), so a resumed run reads what an uninterrupted one would."""
    crop = config.augment != "none" and config.image_hw is not None
    return pipeline.training_batches(dataset, config.seed, config.batch_size, steps_per_epoch, crop, step, total_steps,
                                     _process_part())


def run(configs: Sequence[Config], workdirs: Sequence[str], layout: Layout, checkpoint_every: int = 0,
        allow_config_change: bool = False, stop_requested: Callable[[], bool] | None = None,
        log_images: bool = False) -> list[dict]:
    """Trains the runs `configs` together, each into its workdir, as `layout` holds them; returns each results.json.

    The configs must share every shape (one model, dataset and batch size);
    `train_and_evaluate` is this loop for one run. Time is shared: each run's
    train, compile and wall seconds are the group's divided by the number of runs.
    """
    wall_start = time.perf_counter()
    if checkpoint_every < 0:
        raise UserError(f"`checkpoint_every` must be >= 0 (0: at evaluations only), got {checkpoint_every}")
    for config in configs:
        config.validate()
    config = configs[0]
    grouped = len(configs) > 1
    if grouped and config.init_from:
        raise UserError("runs that start from `init_from` train one at a time, not vectorised together")
    model, dataset, steps_per_epoch, total_steps = plan(config, workdirs[0])
    configs = [with_model(run_config, dataset) for run_config in configs]
    config = configs[0]
    period = config.eval_every or steps_per_epoch  # Steps between evaluations.
    mesh = data_mesh(("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size))
    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, layout.batch_spec())
    # Built before anything is written: a layer that cannot work on its input, or weights to start from that do
    # not fit, raise UserError here. A run resuming has its weights in its own checkpoint.
    state = layout.initial_state(model, configs, dataset.image_shape, total_steps)
    started = None
    if config.init_from and checkpoint.newest_step(workdirs[0]) is None:
        state, started = transfer.start(state, model, dataset.image_shape, config)
    state = jax.device_put(state, replicated)
    resumes = [prepare_workdir(workdir, run_config, allow_config_change)
               for run_config, workdir in zip(configs, workdirs, strict=True)]
    if dataset.vocabulary and jax.process_index() == 0:
        for workdir in workdirs:  # Before the first checkpoint, so a run that has one has its vocabulary too.
            path = os.path.join(workdir, text.VOCABULARY_FILE)
            if not os.path.exists(path):
                text.write_vocabulary(path, dataset.vocabulary)
    lead = jax.process_index() == 0  # Only the first process writes metrics, results and logs.
    progresses = [{**_new_progress(), "init_from": started} for _ in configs]
    managers = [checkpoint.manager(workdir) for workdir in workdirs]
    found = _restore(layout, managers, state) if any(resumes) else None
    if found:
        state, progresses = found
        state = jax.device_put(state, replicated)
    step = progresses[0]["step"]
    schedules = [learning_rate_schedule(run_config, total_steps) for run_config in configs]
    params = layout.run_state(state, 0).params
    num_params = arithmetic.count_params(params)
    num_frozen = arithmetic.count_params(transfer.split(params, state.frozen)[1])
    with jax.set_mesh(mesh):
        compiled_kernels = dispatch.compiled_kernels()
    slow = dispatch.bfloat16_fast_path_missing() if config.dtype == "bfloat16" else ""
    if lead:
        for workdir in workdirs if found else []:
            truncate_metrics(workdir, step)  # Lines written after that checkpoint are written again.
        runs = f"{len(configs)} runs vectorised | " if grouped else ""
        where = f"workdirs {', '.join(workdirs)}" if grouped else f"workdir {workdirs[0]}"
        print(
            f"{config.model}: {num_params:,} parameters | {config.dataset} from {dataset.source}: "
            f"{len(dataset.train_labels):,} train / {len(dataset.test_labels):,} test"
            + (f" ({len(dataset.skipped):,} file(s) that do not decode skipped: {', '.join(dataset.skipped[:3])}"
               f"{', ...' if len(dataset.skipped) > 3 else ''})" if dataset.skipped else "")
            + (f" at {'×'.join(map(str, dataset.image_shape))}" if dataset.input_shape else "")
            + f" | {runs}"
            f"{total_steps:,} steps of {config.batch_size} on {mesh.size} {jax.devices()[0].platform} device(s) "
            f"in {jax.process_count()} process(es)"
            + (f" | computing in {config.dtype}" if config.dtype != "float32" else "")
            + (f" through XLA's operations, slower than float32 here: {slow}" if slow else "")
            + f" | {where}"
            + (f" | resuming at step {step:,}" if found else "")
            + (f" | weights from {started['checkpoint']} (step {started['step']:,}); new: "
               f"{', '.join(started['fresh']) or 'none'} ({started['new_layers']})" if started else "")
            + (f" | frozen: {num_frozen:,} parameters ({config.freeze})" if num_frozen else ""),
            flush=True,
        )

    compile_start = time.perf_counter()
    train_fn, eval_fn = layout.compile(state, dataset, configs, mesh)
    compile_seconds = time.perf_counter() - compile_start

    writers = [MetricWriter(workdir) for workdir in workdirs] if lead else []
    records = [{} for _ in configs]
    bar = tqdm(total=total_steps, initial=step, unit="step", disable=None if lead else True, dynamic_ncols=True,
               file=sys.stderr)
    pending = []
    batches = zip(*(_training_batches(dataset, run_config, step, steps_per_epoch, total_steps)
                    for run_config in configs))

    def evaluation_due() -> bool:  # After a step that ends a period or the run.
        return bool(progresses[0]["steps_in_epoch"] + len(pending)) and (step % period == 0 or step == total_steps)

    # (Also entered when killed after a period's last step, before its evaluation: it evaluates at once.)
    while step < total_steps or progresses[0]["steps_in_epoch"]:
        period_start, period_steps = time.perf_counter(), 0
        while not evaluation_due():
            state, metrics = train_fn(state, _global_batch(layout.batch(list(next(batches))), split))
            pending.append(metrics)
            step, period_steps = step + 1, period_steps + 1
            for progress in progresses:
                progress["step"] = step
            bar.update()
            stopping = _stop_agreed(stop_requested, step, checkpoint_every)
            if (checkpoint_every and step % checkpoint_every == 0) or stopping:
                _fold_in_metrics(layout, progresses, pending, managers)
                for k, manager in enumerate(managers):
                    checkpoint.save(manager, layout.run_state(state, k), progresses[k])
            if stopping:
                bar.close()
                raise Preempted(step, workdirs)
        _fold_in_metrics(layout, progresses, pending, managers)  # Waits for the last step.
        period_seconds = time.perf_counter() - period_start
        tests = evaluate(eval_fn, state, pipeline.evaluation_batches(dataset, config.eval_batch_size, _process_part()),
                         NamedSharding(mesh, PartitionSpec("data")))
        for k, (progress, test) in enumerate(zip(progresses, tests, strict=True)):
            progress["train_seconds"] += period_seconds / len(configs)
            count = progress["steps_in_epoch"]
            train = {"loss": progress["loss_sum"] / count, "accuracy": progress["accuracy_sum"] / count}
            records[k] = epoch_record(step, steps_per_epoch, train, test, float(schedules[k](step)))
            if lead:
                speed = period_steps * config.batch_size / period_seconds  # Each run's share of the group's speed.
                writers[k].write(records[k], timing={"examples_per_second": speed,
                                                     "train_seconds": progress["train_seconds"]})
                if log_images:
                    writers[k].write_images(step, _snapshot(model, layout.run_state(state, k), dataset))
                tqdm.write(
                    (f"{workdirs[k]}: " if grouped else "")
                    + f"epoch {records[k]['epoch']:g}: train loss {records[k]['train_loss']:.4f} "
                    f"acc {records[k]['train_accuracy']:.4f} | test loss {test['loss']:.4f} "
                    f"acc {test['accuracy']:.4f} | {speed:,.0f} examples/s",
                    file=sys.stdout,
                )
            progress.update(loss_sum=0.0, accuracy_sum=0.0, steps_in_epoch=0, last_record=records[k])
            checkpoint.save(managers[k], layout.run_state(state, k), progress)
    bar.close()
    for manager in managers:
        manager.close()
    for writer in writers:
        writer.close()

    results = []
    devices = [str(d) for d in mesh.devices.flat]
    compile_share, wall_share = compile_seconds / len(configs), (time.perf_counter() - wall_start) / len(configs)
    for run_config, workdir, progress in zip(configs, workdirs, progresses, strict=True):
        seconds = {"train": progress["train_seconds"], "compile": compile_share, "wall": wall_share}
        result = results_record(run_config, dataset, num_params, num_params - num_frozen, progress["last_record"],
                                seconds, devices, compiled_kernels, progress.get("init_from"))
        if grouped:
            result["vectorized_runs"] = len(configs)
        if lead:
            write_json_atomically(os.path.join(workdir, "results.json"), result)
        results.append(result)
    return results
