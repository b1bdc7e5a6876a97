"""Non-linearities by name: the seeds' ReLU, sigmoid, tanh and |tanh|, and the ones used today.

Each is an elementwise function of an array. `lookup(name)` is what configs,
text specs and the command line use.
"""

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.errors import UserError


def abs_tanh(x: jnp.ndarray) -> jnp.ndarray:
    """|tanh(x)|: the rectified tanh of Jarrett et al. 2009, named in the seed documents."""
    return jnp.abs(jnp.tanh(x))


ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "abs_tanh": abs_tanh,
    "leaky_relu": nn.leaky_relu,  # Slope 0.01 for x < 0.
    "elu": nn.elu,  # alpha = 1.
    "gelu": nn.gelu,  # The tanh approximation (Flax's default, as in BERT and GPT-2).
    "silu": nn.silu,  # x·sigmoid(x), also called swish.
}


def lookup(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """The activation registered as `name`."""
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation '{name}': choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def name_of(activation: Callable[[jnp.ndarray], jnp.ndarray]) -> str | None:
    """The name `activation` is registered under ("relu" for `nn.relu`, which is `jax.nn.relu`), or None."""
    return next((name for name, function in ACTIVATIONS.items() if function is activation), None)
