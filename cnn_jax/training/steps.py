"""One training or evaluation step: the TrainState and the pure functions that advance or measure it.

`train_step` and `eval_step` are pure functions of (state, batch): jitting them
over a device mesh with sharded batches and replicated state needs no change to
their bodies, because every reduction (loss, gradients, BatchNorm statistics)
is written over the whole batch.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from cnn_jax import data, models
from cnn_jax.layers import losses
from cnn_jax.models import precision
from cnn_jax.training import transfer
from cnn_jax.training.config import Config

AUX_WEIGHT = 0.3  # Each auxiliary classifier's loss in the training loss (GoogLeNet's, InceptionV3's; torchvision's).


class TrainState(train_state.TrainState):
    """Parameters, optimizer state and step, plus BatchNorm's running statistics, the run's base key, the
    paths of the parameters that do not train (`cnn_jax.training.transfer`), the max-norm constraint
    (`constrained`): the classifier's path and the norm, or None, and the dtype the model computes in
    (`cnn_jax.models.precision`; the parameters are float32 whatever it is).

    Randomness at step t uses `fold_in(rng, t)`, so it depends on nothing but the seed and the step.
    """

    batch_stats: Any
    rng: jax.Array
    frozen: frozenset[str] = struct.field(pytree_node=False, default=frozenset())
    max_norm: tuple[str, float] | None = struct.field(pytree_node=False, default=None)
    dtype: str = struct.field(pytree_node=False, default="float32")


def learning_rate_schedule(config: Config, total_steps: int) -> optax.Schedule:
    """Adam's learning rate at each step: `config.learning_rate`, constant or cosine-decayed to 0."""
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, decay_steps=max(total_steps, 1))
    return optax.constant_schedule(config.learning_rate)


def initial_state(model, config: Config, image_shape: tuple[int, ...], total_steps: int, seed) -> TrainState:
    """`model` initialised from `seed` (an int, or traced under `jax.vmap`) for inputs of `image_shape` (H, W, C;
    or a sequence's shape),
    with Adam on a `total_steps` schedule for the parameters `config.freeze` leaves trainable."""
    init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
    example = models.input_spec(model, image_shape)
    variables = model.init(init_key, jnp.zeros(example.shape, example.dtype), train=False)
    frozen = transfer.frozen_paths(model, config.freeze, image_shape, variables)
    max_norm = (transfer.classifier(model, image_shape, variables), config.max_norm) if config.max_norm else None
    # Adam on all parameters as one flat vector: the same arithmetic in a few fused loops instead of a few per
    # parameter array, which XLA's CPU runtime launches one by one.
    adam = optax.flatten(optax.adam(learning_rate_schedule(config, total_steps)))
    return TrainState.create(
        rng=rng,
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=transfer.partitioned(adam, variables["params"], frozen),
        frozen=frozen,
        max_norm=max_norm,
        dtype=config.dtype,
    )


def create_train_state(model, config: Config, image_shape: tuple[int, int, int], total_steps: int = 1) -> TrainState:
    """`initial_state` from `config.seed`, built by one compiled program."""
    create = functools.partial(initial_state, model, config, image_shape, total_steps, config.seed)
    # One program, run once: unoptimised, it compiles in a fraction of the time (0.25 s vs 1.2 s for the seed
    # network; its dozen small operations run one by one would each be compiled too).
    return jax.jit(create).lower().compile({"xla_backend_optimization_level": 0})()


def train_step(state: TrainState, batch: dict, augment: str = "none",
               loss: losses.Loss = losses.softmax_cross_entropy) -> tuple[TrainState, dict]:
    """One optimizer step on `batch` ({'image': uint8 [b, h, w, c], 'label': int [b]}).

    `augment` is "none" or "flip" (random left-right mirroring of images); `loss` gives
    per-example losses (`cnn_jax.layers.losses`). Layers with randomness (dropout,
    stochastic pooling) draw from the "dropout" stream. A model's auxiliary
    classifiers (logits it sows in the `aux_logits` collection while
    training) add their mean losses, each `AUX_WEIGHT` times, to the loss
    that is differentiated. Returns the new state and the batch's mean 'loss'
    (the main classifier's, as evaluation's) and 'accuracy' (before the
    update).
    """
    grads, batch_stats, metrics = gradients(state, batch, augment, loss)
    return constrained(state.apply_gradients(grads=grads, batch_stats=batch_stats)), metrics


def constrained(state: TrainState) -> TrainState:
    """`state` after Kim (2014)'s max-norm constraint, if it has one (`TrainState.max_norm`): each class's weight
    vector in the classifier (a column of its kernel) rescaled to an L2 norm of at most s; shorter ones are kept."""
    if state.max_norm is None:
        return state
    path, limit = state.max_norm
    params = transfer.flat(state.params)
    kernel = params[f"{path}/kernel"]
    norms = jnp.sqrt(jnp.sum(kernel**2, axis=tuple(range(kernel.ndim - 1)), keepdims=True))
    params[f"{path}/kernel"] = kernel * jnp.minimum(1.0, limit / jnp.maximum(norms, 1e-12))
    return state.replace(params=transfer.unflat(params))


def gradients(state: TrainState, batch: dict, augment: str, loss: losses.Loss) -> tuple[Any, Any, dict]:
    """`train_step`'s gradients of the mean loss, new BatchNorm statistics and metrics, before the update.

    Only the trainable parameters are differentiated (the frozen ones' gradients are zeros), and the modules
    whose parameters are all frozen run in inference mode (`cnn_jax.training.transfer`).
    """
    step_key = jax.random.fold_in(state.rng, state.step)
    images = data.normalize(batch["image"])
    if augment == "flip" and images.ndim == 4:  # Images are mirrored; signals and texts never.
        images = data.random_flip(images, step_key)
    trainable, frozen = transfer.split(state.params, state.frozen)
    inference = transfer.inference_modules(list(transfer.flat(state.params)), state.frozen)

    def loss_fn(trainable):
        with transfer.inference_mode(inference):
            logits, updates = precision.apply(
                state.apply_fn,
                {"params": transfer.join(trainable, frozen), "batch_stats": state.batch_stats},
                images,
                state.dtype,
                train=True,
                mutable=["batch_stats", "aux_logits"],
                rngs={"dropout": jax.random.fold_in(step_key, 1)},
            )
        main = loss(logits, batch["label"]).mean()
        aux = sum(loss(aux_logits, batch["label"]).mean()
                  for aux_logits in jax.tree.leaves(updates.get("aux_logits", {})))
        return main + AUX_WEIGHT * aux, (main, logits, updates)

    (_, (mean_loss, logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    grads = transfer.join(grads, jax.tree.map(jnp.zeros_like, frozen))
    return grads, updates.get("batch_stats", {}), {"loss": mean_loss, "accuracy": accuracy}


def eval_step(state: TrainState, batch: dict, loss: losses.Loss = losses.softmax_cross_entropy) -> dict:
    """Sums of loss and correct predictions over the examples of `batch` whose 'mask' is 1.

    Returns {'loss': sum, 'correct': count, 'count': count}, so batches of any
    padding add up to exact totals.
    """
    logits = precision.apply(state.apply_fn, {"params": state.params, "batch_stats": state.batch_stats},
                             data.normalize(batch["image"]), state.dtype, train=False)
    mask = batch["mask"]
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"loss": jnp.sum(loss(logits, batch["label"]) * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}
