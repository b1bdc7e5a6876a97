"""Loss layers: one loss per example, from logits `[batch, k]` and labels.

Labels are class indices `[batch]` (integers) or targets `[batch, k]`: a
distribution for softmax cross-entropy, independent 0/1 labels for sigmoid
cross-entropy, real values for the L2 loss. Class indices become one-hot
targets where a loss needs targets, so every loss trains on a classification
dataset too. The training loop averages the per-example losses over the batch.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from cnn_jax.errors import UserError

Loss = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def _targets(labels: jnp.ndarray, k: int) -> jnp.ndarray:
    """`[b, k]` float targets: one-hot for class indices, the labels themselves otherwise."""
    if labels.ndim == 1:
        return jax.nn.one_hot(labels, k)
    return labels.astype(jnp.float32)


def softmax_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, label_smoothing: float = 0.0) -> jnp.ndarray:
    """−Σ_k t_k log softmax(logits)_k per example: one class out of k.

    With `label_smoothing` ε the targets become (1 − ε)·t + ε/k.
    """
    if labels.ndim == 1 and not label_smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = _targets(labels, logits.shape[-1])
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(targets, label_smoothing))


def sigmoid_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Σ_k of the binary cross-entropy of sigmoid(logits_k) with t_k per example: k independent yes/no labels."""
    return optax.sigmoid_binary_cross_entropy(logits, _targets(labels, logits.shape[-1])).sum(axis=-1)


def l2(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """½·‖logits − t‖² per example: the Euclidean loss for real-valued targets (Caffe's EuclideanLoss)."""
    return 0.5 * jnp.sum(jnp.square(logits - _targets(labels, logits.shape[-1])), axis=-1)


LOSSES: dict[str, Loss] = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "sigmoid_cross_entropy": sigmoid_cross_entropy,
    "l2": l2,
}


def lookup(name: str, label_smoothing: float = 0.0) -> Loss:
    """The loss registered as `name`, as a function of (logits, labels); smoothing is softmax's only."""
    if name not in LOSSES:
        raise UserError(f"unknown loss '{name}': choose one of {', '.join(LOSSES)}")
    if label_smoothing and name != "softmax_cross_entropy":
        raise UserError(f"label smoothing applies to softmax_cross_entropy only, not '{name}'; leave `label_smoothing` at 0")
    if label_smoothing:
        return functools.partial(softmax_cross_entropy, label_smoothing=label_smoothing)
    return LOSSES[name]
