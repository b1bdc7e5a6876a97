"""What every model family shares: the registry's entry, and the input size below which ImageNet models adapt.

Each family's module defines `MODELS: dict[str, Entry]`; `cnn_jax.models`
gathers them by name.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn

SMALL_INPUT = 64
"""Images below this height or width (MNIST, CIFAR) are small: the ImageNet models adapt to them (see each model)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """A named model: how to build it, and what it teaches (one line, for the README's zoo table)."""

    build: Callable[..., nn.Module]  # Called with num_classes=N.
    lesson: str
