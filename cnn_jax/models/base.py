"""What every model family shares: the registry's entry, what a model takes, and the input size below which ImageNet
models adapt.

Each family's module defines `MODELS: dict[str, Entry]`; `cnn_jax.models`
gathers them by name.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.data.dataset import IMAGES, SIGNALS, TOKENS
from cnn_jax.errors import UserError

SMALL_INPUT = 64
"""Images below this height or width (MNIST, CIFAR) are small: the ImageNet models adapt to them (see each model)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """A named model: how to build it, and what it teaches (one line, for the README's zoo table)."""

    build: Callable[..., nn.Module]  # Called with num_classes=N.
    lesson: str


INPUT_SHAPES = {IMAGES: "[batch, height, width, channels] images", SIGNALS: "[batch, length, channels] signals",
                TOKENS: "[batch, length] token ids"}


def inputs_of(model: nn.Module) -> str:
    """What `model` takes: IMAGES, SIGNALS or TOKENS (`cnn_jax.data.dataset`). A model that takes anything but
    images says so in an `inputs` attribute (a field or a property); every other model takes images."""
    return getattr(model, "inputs", IMAGES)


def input_spec(model: nn.Module, shape: tuple[int, ...]) -> jax.ShapeDtypeStruct:
    """One example of what `model` takes, of `shape` (h, w, c; length, channels; or length), as a shape and dtype:
    float32 images or signals, int32 token ids."""
    return jax.ShapeDtypeStruct((1, *shape), jnp.int32 if inputs_of(model) == TOKENS else jnp.float32)


def check_input(name: str, inputs: str, x: jnp.ndarray) -> None:
    """UserError unless `x` has the rank of `inputs` (images 4, signals 3, token ids 2), naming model `name`."""
    expected = {IMAGES: 4, SIGNALS: 3, TOKENS: 2}[inputs]
    if x.ndim != expected:
        raise UserError(f"{name} takes {INPUT_SHAPES[inputs]}, not an input of shape {list(x.shape)}")
